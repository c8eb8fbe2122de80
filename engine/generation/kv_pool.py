"""Shared KV slots for batched decoding of the onnxruntime-genai (GroupQueryAttention) graph.

Every layer's key and value live in one buffer [slots, kv_heads, capacity, head_dim]; a sequence owns one slot
(a row). Its prefill runs on the row alone; the decode step of all sequences runs once over rows 0..n-1 (a
contiguous view, no copy), each row with its own attention-mask length: GroupQueryAttention reads a row's
length from the mask and writes its new position in place. Rows of sequences that are still prefilling, and
free rows, ride along with a dummy token whose cache write lands on a position that is written again before it
is ever read. np.zeros memory is committed by the OS only where GQA writes, so an idle slot costs address
space, not RAM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from engine.generation.kv_layout import KvLayout


class SlotPool:
    def __init__(self, session: ort.InferenceSession, layout: KvLayout, slots: int, capacity: int) -> None:
        self.session = session
        self.layout = layout
        self.slots = slots
        self.capacity = capacity
        shape = (slots, layout.kv_heads, capacity, layout.head_dim)
        self.buffers = [
            (np.zeros(shape, dtype=layout.dtype), np.zeros(shape, dtype=layout.dtype)) for _ in range(layout.layers)
        ]
        self._free = list(range(slots))
        self._row_bindings: dict[int, Any] = {}  # slot → IOBinding over that row (prefill, single decode)
        self._prefix_bindings: dict[int, Any] = {}  # n → IOBinding over rows 0..n-1 (batched decode)

    def acquire(self) -> int | None:
        if not self._free:
            return None
        self._free.sort()
        return self._free.pop(0)  # the lowest free row keeps batches short

    def release(self, slot: int) -> None:
        if slot not in self._free:
            self._free.append(slot)

    def row_binding(self, slot: int) -> Any:
        binding = self._row_bindings.get(slot)
        if binding is None:
            binding = self._bind(slot, slot + 1)
            self._row_bindings[slot] = binding
        return binding

    def prefix_binding(self, rows: int) -> Any:
        binding = self._prefix_bindings.get(rows)
        if binding is None:
            binding = self._bind(0, rows)
            self._prefix_bindings[rows] = binding
        return binding

    def _bind(self, start: int, stop: int) -> Any:
        binding = self.session.io_binding()
        binding.bind_output("logits", "cpu")  # first, so it stays the first output
        for (past_k, past_v), (present_k, present_v), (key, value) in zip(
            self.layout.past_names, self.layout.present_names, self.buffers
        ):
            key_view = ort.OrtValue.ortvalue_from_numpy(key[start:stop])  # rows are contiguous: no copy
            value_view = ort.OrtValue.ortvalue_from_numpy(value[start:stop])
            binding.bind_ortvalue_input(past_k, key_view)
            binding.bind_ortvalue_input(past_v, value_view)
            binding.bind_ortvalue_output(present_k, key_view)
            binding.bind_ortvalue_output(present_v, value_view)
        return binding
