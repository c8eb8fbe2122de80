"""Decoder runners: one forward pass of a sequence (prompt chunk or one new token) with its KV cache.

Both layouts are fed with plain ONNX Runtime through IOBinding, and the cache never makes a numpy round trip:
- Optimum / transformers.js merged decoder: `present.*` come back as ORT values that are bound as the next
  step's `past_key_values.*` (the graph concatenates; the first step has a zero-length past).
- onnxruntime-genai builder graph (GroupQueryAttention): each sequence owns buffers preallocated to its
  capacity, bound as both `past_key_values.*` and `present.*`; GQA writes the new positions in place
  (past_present_share_buffer) and reads the valid length from the attention mask.
Only the last position's logits are returned, except by `score`, which returns every position of the run (a
speculative draft's verification). A cache's positions can be copied out (`export_prefix`) and into a new cache
(`import_prefix`): the prefix cache's reuse of a shared conversation start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from engine.errors import ModelLoadError
from engine.generation.kv_layout import KvLayout
from engine.generation.kv_pool import SlotPool
from engine.generation.last_logits import LOGITS_COUNT, takes_logits_count

# Exported KV positions of one cache: [layers, 2 (key, value), kv_heads, positions, head_dim].
KvBlock = np.ndarray


@dataclass(eq=False)
class KvCache:
    """One sequence's cache: `length` positions filled, values per layer (key, value)."""

    capacity: int
    length: int = 0
    values: list[tuple[Any, Any]] = field(default_factory=list)  # ORT values
    buffers: list[np.ndarray] = field(default_factory=list)  # numpy memory behind preallocated ORT values
    binding: Any = None  # genai: an IOBinding with the KV buffers bound once, reused by every step
    slot: int | None = None  # genai: the row of the shared slot pool this sequence owns (batched decode)


class DecoderRunner(Protocol):
    layout: KvLayout
    name: str

    def new_cache(self, capacity: int) -> KvCache: ...

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        """Run `ids` after the cached positions; returns the last position's logits (float32, [vocab])."""

    def release(self, cache: KvCache) -> None:
        """The sequence is done with its cache."""

    def batchable(self, cache: KvCache) -> bool:
        """True when this cache can join `decode_batch`."""

    def decode_batch(self, caches: Sequence[KvCache], tokens: Sequence[int]) -> np.ndarray:
        """One new token for each cache in one run; returns [len(caches), vocab] logits."""

    def score(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        """Run `ids` after the cached positions; returns the logits of every one of them ([len(ids), vocab])."""

    can_rewind: bool

    def rewind(self, cache: KvCache, length: int) -> None:
        """Forget the positions from `length` on (rejected draft tokens); only when `can_rewind`."""

    def export_prefix(self, cache: KvCache, length: int) -> KvBlock:
        """A copy of the first `length` cached positions."""

    def import_prefix(self, cache: KvCache, block: KvBlock, length: int) -> None:
        """Fill an empty cache with the first `length` positions of `block`."""


def _last_logits(value: ort.OrtValue, count: int = 1) -> np.ndarray:
    logits = value.numpy()
    rows = logits.reshape(-1, logits.shape[-1])
    return (rows[-1] if count == 1 else rows[-count:]).astype(np.float32, copy=False)


def _new_block(layout: KvLayout, length: int) -> KvBlock:
    return np.empty((layout.layers, 2, layout.kv_heads, length, layout.head_dim), dtype=layout.dtype)


class OptimumRunner:
    name = "optimum"

    def __init__(self, session: ort.InferenceSession, layout: KvLayout) -> None:
        self.session = session
        self.layout = layout
        inputs = {arg.name for arg in session.get_inputs()}
        self.has_position_ids = "position_ids" in inputs
        self.has_mask = "attention_mask" in inputs
        self.has_cache_branch = "use_cache_branch" in inputs  # older decoder_model_merged.onnx
        self.has_logits_count = takes_logits_count(session)
        known = {"input_ids", "attention_mask", "position_ids", "use_cache_branch", LOGITS_COUNT}
        known.update(name for pair in layout.past_names for name in pair)
        unknown = sorted(inputs - known)
        if unknown:
            raise ModelLoadError(
                "model_path", f"the decoder graph needs inputs this runner does not feed: {', '.join(unknown)}"
            )
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self._empty = ort.OrtValue.ortvalue_from_numpy(empty)
        self._empty_buffer = empty  # the OrtValue wraps this memory without copying it: keep it alive

    def new_cache(self, capacity: int) -> KvCache:
        return KvCache(capacity, 0, [(self._empty, self._empty)] * self.layout.layers)

    # Rewinding would copy every layer's cache (the graph's present tensors are exactly as long as the sequence).
    can_rewind = False

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        return self._run(cache, ids, 1)

    def score(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        return self._run(cache, ids, len(ids))

    def rewind(self, cache: KvCache, length: int) -> None:
        raise NotImplementedError("the Optimum layout cannot drop cached positions in place")

    def export_prefix(self, cache: KvCache, length: int) -> KvBlock:
        block = _new_block(self.layout, length)
        for layer, (key, value) in enumerate(cache.values):
            block[layer, 0] = key.numpy()[0, :, :length]
            block[layer, 1] = value.numpy()[0, :, :length]
        return block

    def import_prefix(self, cache: KvCache, block: KvBlock, length: int) -> None:
        arrays = [np.ascontiguousarray(block[layer, :, None, :, :length]) for layer in range(self.layout.layers)]
        cache.buffers = arrays  # the OrtValues wrap this memory without copying it
        cache.values = [
            (ort.OrtValue.ortvalue_from_numpy(pair[0]), ort.OrtValue.ortvalue_from_numpy(pair[1])) for pair in arrays
        ]
        cache.length = length

    def _run(self, cache: KvCache, ids: Sequence[int], logits_count: int) -> np.ndarray:
        total = cache.length + len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        if self.has_mask:
            binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None, :])
        if self.has_cache_branch:
            binding.bind_cpu_input("use_cache_branch", np.array([cache.length > 0]))
        if self.has_logits_count:
            binding.bind_cpu_input(LOGITS_COUNT, np.array([logits_count], dtype=np.int64))
        for (key_name, value_name), (key, value) in zip(self.layout.past_names, cache.values):
            binding.bind_ortvalue_input(key_name, key)
            binding.bind_ortvalue_input(value_name, value)
        binding.bind_output("logits", "cpu")
        for key_name, value_name in self.layout.present_names:
            binding.bind_output(key_name, "cpu")
            binding.bind_output(value_name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        cache.values = [(outputs[1 + 2 * i], outputs[2 + 2 * i]) for i in range(self.layout.layers)]
        cache.buffers = []
        cache.length = total
        return _last_logits(outputs[0], logits_count)

    def release(self, cache: KvCache) -> None:
        cache.values, cache.buffers = [], []

    def batchable(self, cache: KvCache) -> bool:
        return False  # each sequence's past has its own length; batching would need padded copies every step

    def decode_batch(self, caches: Sequence[KvCache], tokens: Sequence[int]) -> np.ndarray:
        raise NotImplementedError("the Optimum layout decodes one sequence per run")


class GenaiRunner:
    name = "genai"

    def __init__(self, session: ort.InferenceSession, layout: KvLayout, slots: int = 1, slot_capacity: int = 0) -> None:
        self.session = session
        self.layout = layout
        inputs = {arg.name for arg in session.get_inputs()}
        known = {"input_ids", "attention_mask", "position_ids", LOGITS_COUNT}
        known.update(name for pair in layout.past_names for name in pair)
        unknown = sorted(inputs - known)
        if unknown:
            raise ModelLoadError(
                "model_path", f"the genai graph needs inputs this runner does not feed: {', '.join(unknown)}"
            )
        self.has_position_ids = "position_ids" in inputs
        self.has_logits_count = takes_logits_count(session)
        # Batched decode needs at least two slots; the pool is allocated on first use.
        self._slots = slots if slots > 1 and slot_capacity > 0 else 0
        self._slot_capacity = slot_capacity
        self._pool: SlotPool | None = None
        self._owners: dict[int, KvCache] = {}  # slot → the cache using it

    def new_cache(self, capacity: int) -> KvCache:
        """A slot of the shared pool when the sequence fits one (batched decode), else buffers of its own."""
        capacity = max(capacity, self.layout.min_cache_positions)  # a sliding window's minimum
        if self._slots and capacity <= self._slot_capacity:
            if self._pool is None:
                self._pool = SlotPool(self.session, self.layout, self._slots, self._slot_capacity)
            slot = self._pool.acquire()
            if slot is not None:
                cache = KvCache(self._slot_capacity, binding=self._pool.row_binding(slot), slot=slot)
                self._owners[slot] = cache
                return cache
        return self._own_cache(capacity)

    def _own_cache(self, capacity: int) -> KvCache:
        layout = self.layout
        cache = KvCache(capacity)
        shape = (1, layout.kv_heads, capacity, layout.head_dim)
        for _ in range(layout.layers):
            key, value = np.zeros(shape, dtype=layout.dtype), np.zeros(shape, dtype=layout.dtype)
            cache.buffers += [key, value]
            cache.values.append((ort.OrtValue.ortvalue_from_numpy(key), ort.OrtValue.ortvalue_from_numpy(value)))
        # The buffers never move, so they are bound once (2 × layers bindings saved on every step). logits is
        # bound first so it stays the first output.
        binding = self.session.io_binding()
        binding.bind_output("logits", "cpu")
        for (past_k, past_v), (present_k, present_v), (key, value) in zip(
            layout.past_names, layout.present_names, cache.values
        ):
            # The same buffer as input and output: GroupQueryAttention appends in place.
            binding.bind_ortvalue_input(past_k, key)
            binding.bind_ortvalue_input(past_v, value)
            binding.bind_ortvalue_output(present_k, key)
            binding.bind_ortvalue_output(present_v, value)
        cache.binding = binding
        return cache

    def release(self, cache: KvCache) -> None:
        if cache.slot is not None and self._pool is not None:
            self._pool.release(cache.slot)
            self._owners.pop(cache.slot, None)
            cache.slot = None
        cache.binding = None
        cache.values, cache.buffers = [], []

    def batchable(self, cache: KvCache) -> bool:
        return cache.slot is not None

    # GroupQueryAttention reads each row's valid length from the mask: positions past it are never read.
    can_rewind = True

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        return self._run(cache, ids, 1)

    def score(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        return self._run(cache, ids, len(ids))

    def rewind(self, cache: KvCache, length: int) -> None:
        cache.length = min(cache.length, length)

    def _views(self, cache: KvCache) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each layer's (key, value) memory of this cache, [kv_heads, capacity, head_dim] (views, no copy)."""
        if cache.slot is not None:
            assert self._pool is not None
            return [(key[cache.slot], value[cache.slot]) for key, value in self._pool.buffers]
        return [(cache.buffers[2 * i][0], cache.buffers[2 * i + 1][0]) for i in range(self.layout.layers)]

    def export_prefix(self, cache: KvCache, length: int) -> KvBlock:
        block = _new_block(self.layout, length)
        for layer, (key, value) in enumerate(self._views(cache)):
            block[layer, 0] = key[:, :length]
            block[layer, 1] = value[:, :length]
        return block

    def import_prefix(self, cache: KvCache, block: KvBlock, length: int) -> None:
        if length > cache.capacity:
            raise ValueError(f"KV buffer of {cache.capacity} positions cannot hold {length}")
        for layer, (key, value) in enumerate(self._views(cache)):
            key[:, :length] = block[layer, 0, :, :length]
            value[:, :length] = block[layer, 1, :, :length]
        cache.length = length

    def _run(self, cache: KvCache, ids: Sequence[int], logits_count: int) -> np.ndarray:
        total = cache.length + len(ids)
        if total > cache.capacity:
            raise ValueError(f"KV buffer of {cache.capacity} positions cannot hold {total}")
        binding = cache.binding
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None, :])
        if self.has_logits_count:
            binding.bind_cpu_input(LOGITS_COUNT, np.array([logits_count], dtype=np.int64))
        binding.bind_output("logits", "cpu")  # its shape changes between prefill and decode
        self.session.run_with_iobinding(binding)
        cache.length = total
        return _last_logits(binding.get_outputs()[0], logits_count)

    def decode_batch(self, caches: Sequence[KvCache], tokens: Sequence[int]) -> np.ndarray:
        assert self._pool is not None
        rows = max(cache.slot for cache in caches if cache.slot is not None) + 1
        ids = np.zeros((rows, 1), dtype=np.int64)
        lengths = np.ones(rows, dtype=np.int64)  # a free row: a dummy token at its position 0
        for slot, owner in self._owners.items():
            if slot < rows:
                # A row not decoding now (still prefilling) gets a dummy at its next position, which its next
                # chunk overwrites before anything reads it.
                lengths[slot] = min(owner.length + 1, owner.capacity)
        for cache, token in zip(caches, tokens):
            if cache.length + 1 > cache.capacity:
                raise ValueError(f"KV slot of {cache.capacity} positions is full")
            ids[cache.slot, 0] = token
        mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(np.int64)
        binding = self._pool.prefix_binding(rows)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", (lengths - 1)[:, None])
        if self.has_logits_count:
            binding.bind_cpu_input(LOGITS_COUNT, np.array([1], dtype=np.int64))
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        for cache in caches:
            cache.length += 1
        return logits[[cache.slot for cache in caches], -1, :].astype(np.float32, copy=False)
