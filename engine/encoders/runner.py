"""Run an encoder graph (BERT-style inputs) on a padded batch of token sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from engine.errors import ModelLoadError

# ONNX Runtime's CPU arena keeps the high-water mark of every run: one batch of long texts (attention memory grows
# with batch × length²) would hold hundreds of MB for good (all-MiniLM-L6-v2, 64 × 256 tokens: 600 MB). Runs at
# least this large (batch × longest², in tokens²; the default max_batch_tokens of 8,192 keeps batches at or below
# 8,192 × 512 = 4 M) give their arena memory back when they end. Shrinking ordinary batches too cost 9 % of
# MiniLM's indexing throughput (re-faulting the pages every batch), so they keep the arena warm.
SHRINK_AREA = 1 << 24
SHRINK_OPTIONS = ort.RunOptions()
SHRINK_OPTIONS.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


@dataclass(frozen=True)
class Tokens:
    """One tokenized input: ids and segment ids (token_type_ids), already truncated to the context."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


class EncoderRunner:
    """Feeds input_ids / attention_mask / token_type_ids (as the graph asks) and returns its main output."""

    def __init__(self, session: ort.InferenceSession, pad_id: int, output_names: Sequence[str]) -> None:
        self.session = session
        self.pad_id = pad_id
        inputs = {i.name: i for i in session.get_inputs()}
        if "input_ids" not in inputs:
            names = ", ".join(sorted(inputs))
            raise ModelLoadError(
                "model_path", f"the ONNX graph has no input_ids input (inputs: {names}); not an encoder"
            )
        self.needs_mask = "attention_mask" in inputs
        self.needs_type_ids = "token_type_ids" in inputs
        unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ModelLoadError(
                "model_path",
                f"the ONNX graph needs inputs this encoder runner does not feed: {', '.join(sorted(unknown))}",
            )
        available = [o.name for o in session.get_outputs()]
        self.output_name = next((name for name in output_names if name in available), available[0])
        self.output_rank = len(next(o for o in session.get_outputs() if o.name == self.output_name).shape)

    def run(self, batch: Sequence[Tokens]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (output, attention_mask); the batch is right-padded to its longest sequence."""
        longest = max(len(tokens) for tokens in batch)
        ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        type_ids = np.zeros((len(batch), longest), dtype=np.int64)
        for row, tokens in enumerate(batch):
            length = len(tokens)
            ids[row, :length] = tokens.ids
            mask[row, :length] = 1
            type_ids[row, :length] = tokens.type_ids
        feeds = {"input_ids": ids}
        if self.needs_mask:
            feeds["attention_mask"] = mask
        if self.needs_type_ids:
            feeds["token_type_ids"] = type_ids
        run_options = SHRINK_OPTIONS if len(batch) * longest * longest >= SHRINK_AREA else None
        (output,) = self.session.run([self.output_name], feeds, run_options)
        return output, mask
