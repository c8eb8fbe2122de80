"""Sentence embeddings: pooling and normalization over an encoder's token states."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engine.encoders.runner import EncoderRunner, Tokens
from engine.model_config import read_optional_json
from engine.paths import confined, metadata_path
from engine.settings.profile import EmbeddingSettings
from engine.text.tokenizer import MAX_CHARS_PER_TOKEN


def pooling_from_sentence_transformers(directory: Path) -> str | None:
    """The pooling a sentence-transformers model was trained with, from modules.json → Pooling config."""
    pooling_dir = directory / "1_Pooling"
    modules_path = confined(directory / "modules.json", directory)
    if modules_path.is_file():
        try:
            modules = json.loads(modules_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            modules = []
        for module in modules if isinstance(modules, list) else []:
            if not isinstance(module, dict) or not str(module.get("type", "")).endswith("Pooling"):
                continue
            if isinstance(path := module.get("path"), str) and path:  # "" or garbage: the default folder
                pooling_dir = metadata_path(directory, path, "modules.json", "Pooling path")
    config = read_optional_json(pooling_dir / "config.json", directory) if pooling_dir.is_dir() else {}
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_lasttoken", "last"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_tokens", "mean"),
    ):
        if config.get(key):
            return mode
    return None


def resolve_pooling(settings: EmbeddingSettings, directory: Path) -> str:
    if settings.pooling != "auto":
        return settings.pooling
    return pooling_from_sentence_transformers(directory) or "mean"


def pool(states: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """[batch, seq, dim] token states → [batch, dim] sentence vectors, ignoring padding."""
    if mode == "cls":
        return states[:, 0, :]
    if mode == "last":
        last = mask.sum(axis=1) - 1
        return states[np.arange(states.shape[0]), last, :]
    weights = mask[:, :, None].astype(states.dtype)
    if mode == "max":
        masked = np.where(weights > 0, states, -np.inf)
        return masked.max(axis=1)
    return (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbeddingTask:
    """Tokenizes texts (with the query/document prefix) and turns batches into sentence vectors."""

    def __init__(
        self, runner: EncoderRunner, tokenizer: Tokenizer, context_size: int, settings: EmbeddingSettings, pooling: str
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.context_size = context_size
        self.settings = settings
        self.pooling = pooling
        # Counting (get_num_tokens) reports untruncated lengths; a separate copy keeps the shared tokenizer's
        # settings fixed, since both lanes tokenize with it concurrently.
        self.counter = Tokenizer.from_str(tokenizer.to_str())
        self.counter.no_truncation()
        self.tokenizer.enable_truncation(max_length=self.context_size)

    def tokenize(self, texts: Sequence[str], input_type: str, options: EmbeddingSettings | None = None) -> list[Tokens]:
        """`options`: the call's prefixes and normalization (per call: they need no other loaded instance)."""
        settings = options or self.settings
        prefix = settings.query_prefix if input_type == "query" else settings.document_prefix
        cut = self.context_size * MAX_CHARS_PER_TOKEN
        encodings = self.tokenizer.encode_batch([prefix + text[:cut] for text in texts])
        return [Tokens(tuple(e.ids), tuple(e.type_ids)) for e in encodings]

    def cache_key(self, text: str, input_type: str, options: EmbeddingSettings | None = None) -> tuple[str, str]:
        settings = options or self.settings
        prefix = settings.query_prefix if input_type == "query" else settings.document_prefix
        return (input_type, prefix + text)

    def run(self, batch: Sequence[Tokens]) -> list[np.ndarray]:
        """Pooled sentence vectors, one per input (not normalized: that is the call's choice, in `finish`)."""
        output, mask = self.runner.run(batch)
        vectors = output if self.runner.output_rank == 2 else pool(output, mask, self.pooling)
        return list(vectors.astype(np.float32, copy=False))

    def finish(self, vectors: list[np.ndarray], options: EmbeddingSettings | None = None) -> list[np.ndarray]:
        if not (options or self.settings).normalize or not vectors:
            return vectors
        return list(l2_normalize(np.stack(vectors)))
