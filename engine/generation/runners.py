"""Decoder runners: one forward pass of a sequence (prompt chunk or one new token) with its KV cache.

Both layouts are fed with plain ONNX Runtime through IOBinding, and the cache never makes a numpy round trip:
- Optimum / transformers.js merged decoder: `present.*` come back as ORT values that are bound as the next
  step's `past_key_values.*` (the graph concatenates; the first step has a zero-length past).
- onnxruntime-genai builder graph (GroupQueryAttention): each sequence owns buffers preallocated to its
  capacity, bound as both `past_key_values.*` and `present.*`; GQA writes the new positions in place
  (past_present_share_buffer) and reads the valid length from the attention mask.
Only the last position's logits are returned.
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


def _last_logits(value: ort.OrtValue) -> np.ndarray:
    logits = value.numpy()
    return logits.reshape(-1, logits.shape[-1])[-1].astype(np.float32, copy=False)


class OptimumRunner:
    name = "optimum"

    def __init__(self, session: ort.InferenceSession, layout: KvLayout) -> None:
        self.session = session
        self.layout = layout
        inputs = {arg.name for arg in session.get_inputs()}
        self.has_position_ids = "position_ids" in inputs
        self.has_mask = "attention_mask" in inputs
        self.has_cache_branch = "use_cache_branch" in inputs  # older decoder_model_merged.onnx
        known = {"input_ids", "attention_mask", "position_ids", "use_cache_branch"}
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

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        total = cache.length + len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        if self.has_mask:
            binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None, :])
        if self.has_cache_branch:
            binding.bind_cpu_input("use_cache_branch", np.array([cache.length > 0]))
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
        cache.length = total
        return _last_logits(outputs[0])

    def release(self, cache: KvCache) -> None:
        cache.values = []

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
        known = {"input_ids", "attention_mask", "position_ids"}
        known.update(name for pair in layout.past_names for name in pair)
        unknown = sorted(inputs - known)
        if unknown:
            raise ModelLoadError(
                "model_path", f"the genai graph needs inputs this runner does not feed: {', '.join(unknown)}"
            )
        self.has_position_ids = "position_ids" in inputs
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

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        total = cache.length + len(ids)
        if total > cache.capacity:
            raise ValueError(f"KV buffer of {cache.capacity} positions cannot hold {total}")
        binding = cache.binding
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None, :])
        binding.bind_output("logits", "cpu")  # its shape changes between prefill and decode
        self.session.run_with_iobinding(binding)
        cache.length = total
        return _last_logits(binding.get_outputs()[0])

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
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        for cache in caches:
            cache.length += 1
        return logits[[cache.slot for cache in caches], -1, :].astype(np.float32, copy=False)
