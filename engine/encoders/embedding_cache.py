"""Recent embedding vectors of one embedding model, so that repeated texts skip the queue.

Dify re-embeds identical texts all the time (re-indexing unchanged documents, repeated queries). Each embedding
model keeps an LRU of the pooled vectors (before the call's normalization) keyed by (input type, the text with
its prefix); truncation to the context is the same for every call of one loaded instance, so the key decides
the vector. The cache is bounded in bytes (`embedding_cache_mb`, 0 turns it off); its statistics count hits,
misses and the tokens hits saved.
"""

from __future__ import annotations

import collections
import sys

import numpy as np

from engine.native import allocate_lock

# Bookkeeping per entry besides the key's characters and the vector's bytes (tuple, OrderedDict node, array).
ENTRY_OVERHEAD_BYTES = 200

CacheKey = tuple[str, str]


class EmbeddingCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._lock = allocate_lock()
        self._entries: collections.OrderedDict[CacheKey, tuple[np.ndarray, int]] = collections.OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.saved_tokens = 0

    def resize(self, budget_bytes: int) -> None:
        """The latest call's budget (a per-call setting): shrinking evicts the oldest entries now."""
        with self._lock:
            self.budget_bytes = budget_bytes
            self._evict()

    def get(self, key: CacheKey) -> tuple[np.ndarray, int] | None:
        """(pooled vector, tokens) and counts a hit, or None and counts a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            self.saved_tokens += found[1]
            return found

    def put(self, key: CacheKey, vector: np.ndarray, tokens: int) -> None:
        size = self._size(key, vector)
        with self._lock:
            if size > self.budget_bytes or key in self._entries:
                return
            self._entries[key] = (vector, tokens)
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes and self._entries:
            key, (vector, _) = self._entries.popitem(last=False)
            self._bytes -= self._size(key, vector)

    @staticmethod
    def _size(key: CacheKey, vector: np.ndarray) -> int:
        return sys.getsizeof(key[1]) + vector.nbytes + ENTRY_OVERHEAD_BYTES

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "budget_bytes": self.budget_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "saved_tokens": self.saved_tokens,
            }
