"""The engine's entry points: what adapters, tests, benchmarks and the CLI call."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.batching import BULK, INTERACTIVE, MicroBatcher
from engine.errors import BadRequestError
from engine.metrics import format_snapshot
from engine.native import allocate_lock
from engine.profile import RuntimeProfile
from engine.registry import Builder, LoadedModel, ModelInfo, ModelRegistry

log = logging.getLogger(__name__)

# Dify's stdout line limit is 5 MiB and an embedding costs about 20 bytes per float in JSON: keep one
# response near 2 MiB whatever the dimension.
RESPONSE_BUDGET_BYTES = 2 * 1024 * 1024
MAX_CHUNKS_CAP = 64


@dataclass(frozen=True)
class EmbeddingOutcome:
    vectors: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class RerankHit:
    index: int
    text: str
    score: float


def max_chunks_for(dimension: int) -> int:
    return max(1, min(MAX_CHUNKS_CAP, RESPONSE_BUDGET_BYTES // (20 * max(1, dimension))))


def _default_builders() -> dict[str, Builder]:
    from engine.encoders.loader import build_encoder

    builders: dict[str, Builder] = {"text-embedding": build_encoder, "rerank": build_encoder}
    try:
        from engine.generation.loader import build_generator
    except ImportError:
        pass
    else:
        builders["llm"] = build_generator
    return builders


class Engine:
    def __init__(self, registry: ModelRegistry | None = None) -> None:
        self.registry = registry or ModelRegistry(_default_builders())

    def model(self, profile: RuntimeProfile) -> LoadedModel:
        if profile.model_type not in self.registry.builders:
            raise BadRequestError(f"model type {profile.model_type} is not supported by this engine build")
        return self.registry.get(profile)

    def acquire(self, profile: RuntimeProfile) -> LoadedModel:
        """The loaded model with this call counted, so it is not unloaded mid-call; release with `model.end()`."""
        if profile.model_type not in self.registry.builders:
            raise BadRequestError(f"model type {profile.model_type} is not supported by this engine build")
        return self.registry.acquire(profile)

    def load(self, profile: RuntimeProfile) -> ModelInfo:
        """Load (or find) the model and return what was loaded; used by credential validation."""
        return self.model(profile).info

    def embed(self, profile: RuntimeProfile, texts: Sequence[str], input_type: str = "document") -> EmbeddingOutcome:
        if input_type not in ("document", "query"):
            raise BadRequestError(f"input_type {input_type!r} is not valid; allowed: document, query")
        model = self.acquire(profile)
        batcher: MicroBatcher = model.scheduler
        try:
            outcome = batcher.submit(list(texts), input_type, INTERACTIVE if input_type == "query" else BULK).result()
        finally:
            model.end()
        return EmbeddingOutcome([vector.tolist() for vector in outcome.results], outcome.tokens)

    def rerank(
        self,
        profile: RuntimeProfile,
        query: str,
        docs: Sequence[str],
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RerankHit]:
        """Scores sorted best first. top_n <= 0 or None: all; score_threshold None: none (Dify sends 0 for
        'unset' on the wire, and 0 as a threshold keeps everything a probability can score anyway)."""
        model = self.acquire(profile)
        batcher: MicroBatcher = model.scheduler
        try:
            outcome = batcher.submit([(query, doc) for doc in docs], "pair", INTERACTIVE).result()
        finally:
            model.end()
        hits = [RerankHit(i, doc, float(score)) for i, (doc, score) in enumerate(zip(docs, outcome.results))]
        hits.sort(key=lambda hit: (-hit.score, hit.index))
        if score_threshold:
            hits = [hit for hit in hits if hit.score >= score_threshold]
        if top_n is not None and top_n > 0:
            hits = hits[:top_n]
        return hits

    def count_tokens(self, profile: RuntimeProfile, texts: Sequence[str]) -> list[int]:
        """Tokens per text with the model's own tokenizer, before truncation to the context."""
        model = self.model(profile)
        counter = model.scheduler.task.counter
        return model.worker.call(lambda: [len(e.ids) for e in counter.encode_batch(list(texts))]).result()

    def stats(self) -> dict[str, dict[str, object]]:
        snapshots: dict[str, dict[str, object]] = {}
        for model in self.registry.loaded():
            snapshot = getattr(model.scheduler, "snapshot", None)
            if snapshot is not None:
                snapshots[model.info.name] = snapshot()
        return snapshots

    def log_stats(self) -> None:
        for name, snapshot in self.stats().items():
            log.info(format_snapshot(name, snapshot))

    def close(self) -> None:
        self.registry.close()


_default_engine: Engine | None = None
_default_lock = allocate_lock()


def default_engine() -> Engine:
    """The process-wide engine (created on first use, never at import: the daemon wants a heartbeat first)."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = Engine()
        return _default_engine


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb) / denominator if denominator and not math.isnan(denominator) else 0.0
