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


@dataclass(eq=False)
class KvCache:
    """One sequence's cache: `length` positions filled, values per layer (key, value)."""

    capacity: int
    length: int = 0
    values: list[tuple[Any, Any]] = field(default_factory=list)  # ORT values
    buffers: list[np.ndarray] = field(default_factory=list)  # numpy memory behind preallocated ORT values


class DecoderRunner(Protocol):
    layout: KvLayout
    name: str

    def new_cache(self, capacity: int) -> KvCache: ...

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        """Run `ids` after the cached positions; returns the last position's logits (float32, [vocab])."""


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
        self._empty_buffer = empty

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


class GenaiRunner:
    name = "genai"

    def __init__(self, session: ort.InferenceSession, layout: KvLayout) -> None:
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

    def new_cache(self, capacity: int) -> KvCache:
        layout = self.layout
        cache = KvCache(capacity)
        shape = (1, layout.kv_heads, capacity, layout.head_dim)
        for _ in range(layout.layers):
            key, value = np.zeros(shape, dtype=layout.dtype), np.zeros(shape, dtype=layout.dtype)
            cache.buffers += [key, value]
            cache.values.append((ort.OrtValue.ortvalue_from_numpy(key), ort.OrtValue.ortvalue_from_numpy(value)))
        return cache

    def forward(self, cache: KvCache, ids: Sequence[int]) -> np.ndarray:
        total = cache.length + len(ids)
        if total > cache.capacity:
            raise ValueError(f"KV buffer of {cache.capacity} positions cannot hold {total}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(cache.length, total, dtype=np.int64)[None, :])
        binding.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        for (past_k, past_v), (present_k, present_v), (key, value) in zip(
            self.layout.past_names, self.layout.present_names, cache.values
        ):
            # The same buffer as input and output: GroupQueryAttention appends in place.
            binding.bind_ortvalue_input(past_k, key)
            binding.bind_ortvalue_input(past_v, value)
            binding.bind_ortvalue_output(present_k, key)
            binding.bind_ortvalue_output(present_v, value)
        self.session.run_with_iobinding(binding)
        cache.length = total
        return _last_logits(binding.get_outputs()[0])
