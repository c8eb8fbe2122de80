"""The table of runtime settings: every field of Dify's "add model" form, declared once.

Each entry says how the value is read (kind, default, options or range), which model types use it, and whether
changing it needs a new loaded instance of the model (`INSTANCE`: the session, its threads or its weights change)
or could apply to each call (`CALL`: queueing, batching and per-request policy). The parser
(`engine.settings.profile`) reads values through this table, and a test compares it with the form in
`provider/onnx_local.yaml` (names, defaults, options, show_on), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SettingError

MODEL_TYPES = ("text-embedding", "rerank", "llm")
ENCODER_TYPES = ("text-embedding", "rerank")
INSTANCE, CALL = "instance", "call"
MAX_THREADS = 256

# Kinds: how the text a user typed becomes a value.
TEXT, CHOICE, BOOLEAN, INTEGER, NUMBER, CORES = "text", "choice", "boolean", "integer", "number", "cores"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    default: str | None  # as the form shows it; None: required, no default
    scope: str = INSTANCE
    model_types: tuple[str, ...] = MODEL_TYPES
    options: tuple[str, ...] = ()  # CHOICE / BOOLEAN values, in the form's order
    low: float | None = None  # INTEGER / NUMBER range (inclusive)
    high: float | None = None
    auto: bool = False  # INTEGER: "auto" is allowed and reads as None
    power_of_two: bool = False
    show_on: tuple[tuple[str, str], ...] = ()  # form conditions besides the model type (variable, value)

    def applies_to(self, model_type: str) -> bool:
        return model_type in self.model_types

    def parse(self, raw: object) -> object:
        """The typed value of `raw` (a form value: a string, or None / '' when left empty); SettingError names
        the field, the value and what is allowed."""
        text = _stripped(raw)
        if self.kind == TEXT:  # kept as typed (a prefix's trailing space matters); empty takes the default
            return str(raw) if text is not None else (self.default or "")
        if self.kind == CORES:
            return text
        if text is None:
            text = self.default
        if text is None:
            return None
        if self.kind == CHOICE:
            if text.lower() not in self.options:
                raise SettingError(self.name, text, ", ".join(self.options))
            return text.lower()
        if self.kind == BOOLEAN:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise SettingError(self.name, text, "true or false")
        return self._number(text)

    def _number(self, text: str) -> int | float | None:
        assert self.low is not None and self.high is not None
        if self.kind == INTEGER:
            allowed = f"{'auto or ' if self.auto else ''}a whole number from {self.low:g} to {self.high:g}"
            if self.power_of_two:
                allowed = f"a power of two from {self.low:g} to {self.high:g}"
            if self.auto and text.lower() == "auto":
                return None
            try:
                number: int | float = int(text)
            except ValueError:
                raise SettingError(self.name, text, allowed) from None
            if self.power_of_two and int(number) & (int(number) - 1):
                raise SettingError(self.name, text, allowed)
        else:
            allowed = f"a number from {self.low:g} to {self.high:g}"
            try:
                number = float(text)
            except ValueError:
                raise SettingError(self.name, text, allowed) from None
        if not self.low <= number <= self.high:
            raise SettingError(self.name, text, allowed)
        return number


def _stripped(raw: object) -> str | None:
    if raw is None:
        return None
    text = str(raw).strip()
    return text or None


def _int(name: str, default: str, low: int, high: int, **extra: object) -> Setting:
    return Setting(name, INTEGER, default, low=low, high=high, **extra)  # type: ignore[arg-type]


SETTINGS: tuple[Setting, ...] = (
    # model files
    Setting("model_path", TEXT, None),
    Setting("model_file", TEXT, "auto"),
    Setting("quantization", CHOICE, "none", options=("none", "int8", "int4")),
    _int("quant_block_size", "32", 16, 256, power_of_two=True, show_on=(("quantization", "int4"),)),
    Setting(
        "quant_accuracy_level", CHOICE, "4", options=("0", "1", "2", "3", "4"), show_on=(("quantization", "int4"),)
    ),
    # ONNX Runtime session and placement
    _int("intra_op_threads", "auto", 1, MAX_THREADS, auto=True),
    _int("inter_op_threads", "1", 1, MAX_THREADS),
    Setting("execution_mode", CHOICE, "sequential", options=("sequential", "parallel")),
    Setting("graph_optimization_level", CHOICE, "all", options=("disabled", "basic", "extended", "all")),
    Setting("spin_wait", CHOICE, "auto", options=("auto", "on", "off")),
    Setting("cpu_affinity", CORES, "auto"),
    _int("blas_threads", "1", 1, MAX_THREADS),
    _int("context_size", "auto", 1, 1 << 20, auto=True),
    Setting("idle_unload_minutes", NUMBER, "30", scope=CALL, low=0.0, high=7 * 24 * 60.0),
    # text embedding
    Setting("pooling", CHOICE, "auto", model_types=("text-embedding",), options=("auto", "mean", "cls", "last")),
    Setting("normalize", BOOLEAN, "true", scope=CALL, model_types=("text-embedding",), options=("true", "false")),
    Setting("query_prefix", TEXT, "", scope=CALL, model_types=("text-embedding",)),
    Setting("document_prefix", TEXT, "", scope=CALL, model_types=("text-embedding",)),
    # ~40,000 MiniLM vectors (384 floats) with their texts; 0 turns the cache off
    _int("embedding_cache_mb", "64", 0, 4096, scope=CALL, model_types=("text-embedding",)),
    # rerank
    Setting("score_mode", CHOICE, "probability", scope=CALL, model_types=("rerank",), options=("probability", "logit")),
    # LLM-style rerankers (Qwen3-Reranker): the task line of the prompt; empty = the model card's default
    Setting("rerank_instruction", TEXT, "", scope=CALL, model_types=("rerank",)),
    # batching (embedding and rerank). Defaults measured with `make bench-embed` on a 2-core machine (README):
    # small, length-homogeneous batches beat large ones on CPU.
    _int("max_batch_size", "16", 1, 1024, scope=CALL, model_types=ENCODER_TYPES),
    _int("max_batch_tokens", "8192", 1, 1 << 22, scope=CALL, model_types=ENCODER_TYPES),
    Setting("batch_window_ms", NUMBER, "2", scope=CALL, model_types=ENCODER_TYPES, low=0.0, high=1000.0),
    _int("queue_limit", "4096", 0, 1 << 22, scope=CALL, model_types=ENCODER_TYPES),
    # chat / completion models
    Setting("mode", CHOICE, "chat", model_types=("llm",), options=("chat", "completion")),
    Setting("max_generation_seconds", NUMBER, "300", scope=CALL, model_types=("llm",), low=0.0, high=86400.0),
    Setting("prompt_overflow", CHOICE, "error", scope=CALL, model_types=("llm",), options=("error", "truncate_oldest")),
    _int("max_concurrent_sequences", "4", 1, 64, model_types=("llm",)),
    # ~13 conversations of 1,600 tokens for Qwen2.5-0.5B (24.6 KB of KV per token); 0 turns the cache off
    _int("prefix_cache_mb", "512", 0, 1 << 16, model_types=("llm",)),
    Setting("speculative_decoding", CHOICE, "on", scope=CALL, model_types=("llm",), options=("on", "off")),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
