"""Per-model runtime profile: Dify's string form values parsed once, through the settings table, into
immutable, validated settings.

A profile is hashable and keys the model registry: changing any setting loads a new instance instead of
mutating a running one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import SettingError
from engine.hf_source import HubSource, parse_hub_path
from engine.paths import resolve_model_dir
from engine.settings.table import BY_NAME, MODEL_TYPES


@dataclass(frozen=True)
class SessionSettings:
    intra_op_threads: int | None  # None: as many as the cores placement gives the model
    inter_op_threads: int
    execution_mode: str  # sequential | parallel
    graph_optimization_level: str  # disabled | basic | extended | all
    spin_wait: str  # auto | on | off


@dataclass(frozen=True)
class PlacementSettings:
    mode: str  # auto | none | cores
    cores: tuple[int, ...] = ()


@dataclass(frozen=True)
class QuantizationSettings:
    method: str  # none | int8 | int4
    block_size: int = 32
    accuracy_level: int = 4


@dataclass(frozen=True)
class EmbeddingSettings:
    pooling: str  # auto | mean | cls | last
    normalize: bool
    query_prefix: str
    document_prefix: str
    cache_mb: int = 64  # embedding cache of the loaded instance, in MB (0: off)


@dataclass(frozen=True)
class RerankSettings:
    score_mode: str  # probability | logit
    instruction: str = ""  # LLM-style rerankers' <Instruct> line ("": the model card's default)


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int
    max_batch_tokens: int
    batch_window_ms: float
    queue_limit: int  # 0: unlimited


@dataclass(frozen=True)
class GenerationSettings:
    mode: str = "chat"  # chat: render the chat template; completion: plain text for base models
    max_generation_seconds: float = 300.0  # 0: unlimited; the daemon cannot cancel, so bound runaway generations
    prompt_overflow: str = "error"  # error | truncate_oldest (drop the oldest turns until the prompt fits)
    max_concurrent_sequences: int = 4  # sequences decoding at once; later requests wait in the queue
    prefix_cache_mb: int = 512  # KV of finished sequences kept for requests that start alike; 0: off
    speculative_decoding: bool = True  # prompt-lookup drafts verified in one run (greedy output unchanged)


@dataclass(frozen=True)
class RuntimeProfile:
    model_type: str
    model_dir: Path
    model_file: str
    quantization: QuantizationSettings
    session: SessionSettings
    placement: PlacementSettings
    blas_threads: int
    context_size: int | None  # None: from the model's config
    idle_unload_seconds: float  # 0: never unload
    batching: BatchingSettings | None  # embedding and rerank
    embedding: EmbeddingSettings | None = None
    rerank: RerankSettings | None = None
    generation: GenerationSettings | None = None
    hub: HubSource | None = None  # an hf:REPO_ID model path: engine/hub.py downloads it on first load


def parse_core_list(field_name: str, text: str) -> tuple[int, ...]:
    """'0-3,8' → (0, 1, 2, 3, 8); the same syntax as Linux cpulist files and taskset -c."""
    allowed = "auto, none, or core ids and ranges such as 0-3,8"
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise SettingError(field_name, text, allowed)
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise SettingError(field_name, text, allowed) from None
        if low < 0 or high < low or high >= 4096:
            raise SettingError(field_name, text, allowed)
        cores.update(range(low, high + 1))
    return tuple(sorted(cores))


def instance_settings(profile: RuntimeProfile) -> RuntimeProfile:
    """The profile with every per-call setting (scope `call` in the settings table) at its default: what a
    loaded instance is keyed on, so that a change of queueing, batching, prefixes, normalization, score mode,
    idle time or generation limits reuses the loaded model instead of loading another copy.
    tests/engine/test_profile.py checks this against the table's scopes."""
    return replace(
        profile,
        idle_unload_seconds=0.0,
        batching=None,
        embedding=replace(profile.embedding, normalize=True, query_prefix="", document_prefix="", cache_mb=0)
        if profile.embedding
        else None,
        rerank=RerankSettings("probability", "") if profile.rerank else None,
        generation=replace(
            profile.generation, max_generation_seconds=0.0, prompt_overflow="error", speculative_decoding=True
        )
        if profile.generation
        else None,
    )


class _Form:
    """Dify's credential values (strings, or None / '' when left empty) read through the settings table."""

    def __init__(self, values: Mapping[str, object], model_type: str) -> None:
        self._values = values
        self._model_type = model_type

    def __getitem__(self, name: str):  # type: ignore[no-untyped-def]
        setting = BY_NAME[name]
        assert setting.applies_to(self._model_type), f"{name} is not a setting of {self._model_type} models"
        return setting.parse(self._values.get(name))


def _placement(value: str | None) -> PlacementSettings:
    if value is None or value.lower() == "auto":
        return PlacementSettings("auto")
    if value.lower() == "none":
        return PlacementSettings("none")
    return PlacementSettings("cores", parse_core_list("cpu_affinity", value))


def parse_profile(
    values: Mapping[str, object], model_type: str, roots: tuple[Path, ...] | None = None
) -> RuntimeProfile:
    """Parse and validate Dify credential values into a RuntimeProfile (raises SettingError)."""
    if model_type not in MODEL_TYPES:
        raise SettingError("model_type", model_type, ", ".join(MODEL_TYPES))
    form = _Form(values, model_type)
    session = SessionSettings(
        intra_op_threads=form["intra_op_threads"],
        inter_op_threads=form["inter_op_threads"],
        execution_mode=form["execution_mode"],
        graph_optimization_level=form["graph_optimization_level"],
        spin_wait=form["spin_wait"],
    )
    placement = _placement(form["cpu_affinity"])
    threads = session.intra_op_threads
    if placement.mode == "cores" and threads is not None and threads > len(placement.cores):
        raise SettingError(
            "intra_op_threads", str(threads), f"at most the {len(placement.cores)} core(s) listed in cpu_affinity"
        )
    quantization = QuantizationSettings(
        method=form["quantization"],
        block_size=form["quant_block_size"],
        accuracy_level=int(form["quant_accuracy_level"]),
    )
    embedding = rerank = generation = batching = None
    if model_type == "text-embedding":
        embedding = EmbeddingSettings(
            pooling=form["pooling"],
            normalize=form["normalize"],
            query_prefix=form["query_prefix"],
            document_prefix=form["document_prefix"],
            cache_mb=form["embedding_cache_mb"],
        )
    elif model_type == "rerank":
        rerank = RerankSettings(score_mode=form["score_mode"], instruction=form["rerank_instruction"].strip())
    else:
        generation = GenerationSettings(
            mode=form["mode"],
            max_generation_seconds=form["max_generation_seconds"],
            prompt_overflow=form["prompt_overflow"],
            max_concurrent_sequences=form["max_concurrent_sequences"],
            prefix_cache_mb=form["prefix_cache_mb"],
            speculative_decoding=form["speculative_decoding"] == "on",
        )
    if model_type != "llm":
        batching = BatchingSettings(
            max_batch_size=form["max_batch_size"],
            max_batch_tokens=form["max_batch_tokens"],
            batch_window_ms=form["batch_window_ms"],
            queue_limit=form["queue_limit"],
        )
    hub = parse_hub_path(form["model_path"], roots)  # None unless hf:REPO_ID (admin opt-in)
    return RuntimeProfile(
        model_type=model_type,
        model_dir=hub[1] if hub else resolve_model_dir(form["model_path"], roots),
        model_file=form["model_file"].strip() or "auto",
        quantization=quantization,
        session=session,
        placement=placement,
        blas_threads=form["blas_threads"],
        context_size=form["context_size"],
        idle_unload_seconds=60.0 * form["idle_unload_minutes"],
        batching=batching,
        embedding=embedding,
        rerank=rerank,
        generation=generation,
        hub=hub[0] if hub else None,
    )
