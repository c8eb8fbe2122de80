"""Per-model runtime profile: Dify's string form values parsed once into immutable, validated settings.

A profile is hashable and keys the model registry: changing any setting loads a new instance instead of
mutating a running one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import SettingError
from engine.paths import resolve_model_dir

MODEL_TYPES = ("text-embedding", "rerank", "llm")
MAX_THREADS = 256


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
    cache_dir: str = ""  # "": ONNX_LOCAL_CACHE_DIR or the default cache root


@dataclass(frozen=True)
class EmbeddingSettings:
    pooling: str  # auto | mean | cls | last
    normalize: bool
    query_prefix: str
    document_prefix: str


@dataclass(frozen=True)
class RerankSettings:
    score_mode: str  # probability | logit


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int
    max_batch_tokens: int
    batch_window_ms: float
    queue_limit: int  # 0: unlimited


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
    batching: BatchingSettings
    embedding: EmbeddingSettings | None = None
    rerank: RerankSettings | None = None
    generation: Any = None  # engine.generation.settings.GenerationSettings for LLMs


class FormValues:
    """Typed access to Dify's credential values, which arrive as strings (or None / '' when left empty)."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values

    def raw(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def text(self, name: str, default: str = "") -> str:
        value = self._values.get(name)
        return default if value is None else str(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered not in options:
            raise SettingError(name, value, ", ".join(options))
        return lowered

    def integer(self, name: str, default: int | None, low: int, high: int, auto: bool = False) -> int | None:
        value = self.raw(name)
        if value is None:
            return default
        allowed = f"{'auto or ' if auto else ''}a whole number from {low} to {high}"
        if auto and value.lower() == "auto":
            return None
        try:
            number = int(value)
        except ValueError:
            raise SettingError(name, value, allowed) from None
        if not low <= number <= high:
            raise SettingError(name, value, allowed)
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        allowed = f"a number from {low:g} to {high:g}"
        try:
            number = float(value)
        except ValueError:
            raise SettingError(name, value, allowed) from None
        if not low <= number <= high:
            raise SettingError(name, value, allowed)
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise SettingError(name, value, "true or false")


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


def _placement(form: FormValues) -> PlacementSettings:
    value = form.raw("cpu_affinity")
    if value is None or value.lower() == "auto":
        return PlacementSettings("auto")
    if value.lower() == "none":
        return PlacementSettings("none")
    return PlacementSettings("cores", parse_core_list("cpu_affinity", value))


def _session(form: FormValues) -> SessionSettings:
    return SessionSettings(
        intra_op_threads=form.integer("intra_op_threads", None, 1, MAX_THREADS, auto=True),
        inter_op_threads=form.integer("inter_op_threads", 1, 1, MAX_THREADS) or 1,
        execution_mode=form.choice("execution_mode", ("sequential", "parallel"), "sequential"),
        graph_optimization_level=form.choice(
            "graph_optimization_level", ("disabled", "basic", "extended", "all"), "all"
        ),
        spin_wait=form.choice("spin_wait", ("auto", "on", "off"), "auto"),
    )


def _batching(form: FormValues, model_type: str) -> BatchingSettings:
    # Defaults measured with `make bench-embed` on a 2-core machine (README): small, length-homogeneous
    # batches beat large ones on CPU.
    return BatchingSettings(
        max_batch_size=form.integer("max_batch_size", 16, 1, 1024) or 16,
        max_batch_tokens=form.integer("max_batch_tokens", 8192, 1, 1 << 22) or 8192,
        batch_window_ms=form.number("batch_window_ms", 2.0, 0.0, 1000.0),
        queue_limit=form.integer("queue_limit", 4096, 0, 1 << 22) or 0,
    )


def _generation_parser() -> Callable[[FormValues], Any] | None:
    try:
        from engine.generation.settings import parse_generation_settings
    except ImportError:  # the generation package is optional for encoders
        return None
    return parse_generation_settings


def parse_profile(
    values: Mapping[str, object], model_type: str, roots: tuple[Path, ...] | None = None
) -> RuntimeProfile:
    """Parse and validate Dify credential values into a RuntimeProfile (raises SettingError)."""
    if model_type not in MODEL_TYPES:
        raise SettingError("model_type", model_type, ", ".join(MODEL_TYPES))
    form = FormValues(values)
    session = _session(form)
    placement = _placement(form)
    threads = session.intra_op_threads
    if placement.mode == "cores" and threads is not None and threads > len(placement.cores):
        raise SettingError(
            "intra_op_threads",
            str(session.intra_op_threads),
            f"at most the {len(placement.cores)} core(s) listed in cpu_affinity",
        )
    quant_method = form.choice("quantization", ("none", "int8", "int4"), "none")
    quantization = QuantizationSettings(
        method=quant_method,
        block_size=form.integer("quant_block_size", 32, 16, 256) or 32,
        accuracy_level=form.integer("quant_accuracy_level", 4, 0, 4) or 0,
        cache_dir=form.text("quant_cache_dir").strip(),
    )
    if quantization.block_size & (quantization.block_size - 1):
        raise SettingError("quant_block_size", str(quantization.block_size), "a power of two from 16 to 256")
    embedding = rerank = generation = None
    if model_type == "text-embedding":
        embedding = EmbeddingSettings(
            pooling=form.choice("pooling", ("auto", "mean", "cls", "last"), "auto"),
            normalize=form.boolean("normalize", True),
            query_prefix=form.text("query_prefix"),
            document_prefix=form.text("document_prefix"),
        )
    elif model_type == "rerank":
        rerank = RerankSettings(score_mode=form.choice("score_mode", ("probability", "logit"), "probability"))
    else:
        parser = _generation_parser()
        generation = parser(form) if parser is not None else None
    return RuntimeProfile(
        model_type=model_type,
        model_dir=resolve_model_dir(form.text("model_path"), roots),
        model_file=(form.raw("model_file") or "auto"),
        quantization=quantization,
        session=session,
        placement=placement,
        blas_threads=form.integer("blas_threads", 1, 1, MAX_THREADS) or 1,
        context_size=form.integer("context_size", None, 1, 1 << 20, auto=True),
        idle_unload_seconds=60.0 * form.number("idle_unload_minutes", 30.0, 0.0, 7 * 24 * 60.0),
        batching=_batching(form, model_type),
        embedding=embedding,
        rerank=rerank,
        generation=generation,
    )


def cpu_count() -> int:
    return os.cpu_count() or 1
