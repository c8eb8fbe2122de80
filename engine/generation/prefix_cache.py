"""The prefix (KV) cache of one loaded decoder: the KV of finished sequences, kept for requests that start alike.

Dify resends the system prompt, the context and the whole history on every chat turn, and an agent resends its
tool instructions on every step. A new sequence copies the KV of the longest token prefix it shares with a kept
entry (or with a running sequence: the scheduler asks both) and prefills only the rest.

Entries are copies (KvBlock arrays), never views of a running sequence's buffers: a reader copies out of an
entry and no sequence writes into one, so a shared prefix cannot be overwritten while another sequence reads it.
The store is bounded by a byte budget and evicts the least recently used entry first; an entry that is a
prefix of a newer one is dropped (the newer one covers it). Owned by the model's worker thread (the scheduler);
`snapshot` is read under the scheduler's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.generation.runners import KvBlock

# Shorter matches are not worth a lookup's copy (the chat template's first tokens are the same for everyone).
MIN_REUSE_TOKENS = 16


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two int64 token arrays."""
    size = min(a.shape[0], b.shape[0])
    if size == 0:
        return 0
    differs = np.flatnonzero(a[:size] != b[:size])
    return int(differs[0]) if differs.shape[0] else size


@dataclass(eq=False)
class PrefixEntry:
    tokens: np.ndarray  # int64: the token ids whose KV `block` holds, in order
    block: KvBlock
    last_used: int


@dataclass
class PrefixCacheStats:
    lookups: int = 0  # sequences started while the cache was on
    hits: int = 0  # of those, sequences that reused a prefix
    prompt_tokens: int = 0  # prompt tokens of the sequences looked up
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to the cache
    evictions: int = 0

    def as_dict(self, entries: int, used_bytes: int, budget_bytes: int) -> dict[str, object]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "hit_rate": self.hits / self.lookups if self.lookups else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "reused_fraction": self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            "evictions": self.evictions,
            "entries": entries,
            "bytes": used_bytes,
            "budget_bytes": budget_bytes,
        }


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.stats = PrefixCacheStats()
        self._entries: list[PrefixEntry] = []
        self._clock = 0
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def longest(self, prompt: np.ndarray) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with `prompt`, and that length (0 when none)."""
        best: PrefixEntry | None = None
        best_length = 0
        for entry in self._entries:
            length = common_prefix(entry.tokens, prompt)
            if length > best_length:
                best, best_length = entry, length
        return best, best_length

    def touch(self, entry: PrefixEntry) -> None:
        self._clock += 1
        entry.last_used = self._clock

    def record(self, prompt_tokens: int, reused: int) -> None:
        self.stats.lookups += 1
        self.stats.prompt_tokens += prompt_tokens
        if reused:
            self.stats.hits += 1
            self.stats.reused_tokens += reused

    def credit(self, reused: int, first: bool) -> None:
        """A sequence copied `reused` more prompt tokens from a running one after its lookup (`first`: its first
        reuse, so it now counts as a hit)."""
        self.stats.reused_tokens += reused
        self.stats.hits += int(first)

    def wants(self, tokens: np.ndarray) -> bool:
        """Would an entry of these tokens be kept (long enough, fits the budget, not covered by an entry)?"""
        if not self.enabled or tokens.shape[0] < MIN_REUSE_TOKENS:
            return False
        return not any(common_prefix(entry.tokens, tokens) == tokens.shape[0] for entry in self._entries)

    def insert(self, tokens: np.ndarray, block: KvBlock) -> None:
        """Keep `block` (the KV of `tokens`), dropping entries it covers, then the least recently used ones
        until the store fits its budget."""
        if block.nbytes > self.budget_bytes or not self.wants(tokens):
            return
        covered = [e for e in self._entries if common_prefix(e.tokens, tokens) == e.tokens.shape[0]]
        for entry in covered:
            self._drop(entry)
        self._clock += 1
        self._entries.append(PrefixEntry(tokens, block, self._clock))
        self._bytes += block.nbytes
        while self._bytes > self.budget_bytes:
            oldest = min(self._entries, key=lambda e: e.last_used)
            self._drop(oldest)
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def snapshot(self) -> dict[str, object]:
        return self.stats.as_dict(len(self._entries), self._bytes, self.budget_bytes)

    def _drop(self, entry: PrefixEntry) -> None:
        self._entries.remove(entry)
        self._bytes -= entry.block.nbytes
