"""Build a chat/completion model on its worker thread: tokenizer, template, session, runner and scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.encoders.loader import session_for
from engine.errors import ModelLoadError, SettingError
from engine.generation.kv_layout import KvLayout, read_kv_layout
from engine.generation.last_logits import LOGITS, last_position_graph
from engine.generation.prompt import PromptBuilder
from engine.generation.runners import DecoderRunner, GenaiRunner, OptimumRunner
from engine.generation.sampling import SamplingParams, defaults_from_generation_config
from engine.generation.scheduler import GenerationScheduler
from engine.generation.settings import GenerationSettings
from engine.model_files import ModelFiles
from engine.placement import Placement
from engine.profile import RuntimeProfile
from engine.registry import ModelInfo
from engine.text.chat_template import ChatTemplate
from engine.text.tokenizer import load_tokenizer, read_optional_json

# Context when neither the profile nor the model's config gives one.
DEFAULT_CONTEXT = 2048
# Positions per slot of the genai layout's shared KV pool (batched decode). Longer sequences (prompt + max_tokens)
# get buffers of their own and decode alone. Qwen2.5-0.5B: 24.6 KB per position, 50 MB per slot.
BATCH_SLOT_CAPACITY = 2048


@dataclass(frozen=True)
class ModelTraits:
    """What the adapter's schema needs, read from the model's files alone (no session)."""

    context_size: int
    defaults: SamplingParams
    default_max_tokens: int | None
    has_template: bool
    accepts_tools: bool
    mode: str


def _ints(value: object) -> set[int]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}
    return set()


def eos_token_ids(directory: Path, tokenizer_eos: int | None) -> frozenset[int]:
    """generation_config.json's eos ids (what transformers' generate stops on), else config.json's, else the
    tokenizer's eos token."""
    for name in ("generation_config.json", "config.json"):
        ids = _ints(read_optional_json(directory / name).get("eos_token_id"))
        if ids:
            return frozenset(ids)
    return frozenset({tokenizer_eos} if tokenizer_eos is not None else ())


def model_limit(directory: Path) -> int | None:
    config = read_optional_json(directory / "config.json")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    genai = read_optional_json(directory / "genai_config.json").get("model", {})
    value = genai.get("context_length") if isinstance(genai, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def resolve_context(profile: RuntimeProfile, directory: Path) -> int:
    limit = model_limit(directory)
    if profile.context_size is None:
        return limit or DEFAULT_CONTEXT
    if limit is not None and profile.context_size > limit:
        raise SettingError("context_size", str(profile.context_size), f"auto or 2 to {limit} (the model's maximum)")
    if profile.context_size < 2:
        raise SettingError("context_size", str(profile.context_size), "auto or at least 2")
    return profile.context_size


def generation_settings(profile: RuntimeProfile) -> GenerationSettings:
    return profile.generation if isinstance(profile.generation, GenerationSettings) else GenerationSettings()


def read_traits(profile: RuntimeProfile) -> ModelTraits:
    directory = profile.model_dir
    settings = generation_settings(profile)
    template = ChatTemplate.load(directory)
    generation_config = read_optional_json(directory / "generation_config.json")
    max_new = generation_config.get("max_new_tokens")
    return ModelTraits(
        context_size=resolve_context(profile, directory),
        defaults=defaults_from_generation_config(generation_config),
        default_max_tokens=max_new if isinstance(max_new, int) and max_new > 0 else None,
        has_template=template is not None,
        accepts_tools=settings.mode == "chat" and template is not None and template.accepts_tools,
        mode=settings.mode,
    )


def _runner(
    session: object, layout: KvLayout, files: ModelFiles, settings: GenerationSettings, context: int
) -> DecoderRunner:
    if files.layout == "genai":
        slots = settings.max_concurrent_sequences
        return GenaiRunner(session, layout, slots, min(context, BATCH_SLOT_CAPACITY))  # type: ignore[arg-type]
    return OptimumRunner(session, layout)  # type: ignore[arg-type]


def _last_position_only(session: object) -> bool:
    shape = next((o.shape for o in session.get_outputs() if o.name == LOGITS), [])  # type: ignore[attr-defined]
    return len(shape) == 3 and shape[1] == 1


def build_generator(
    profile: RuntimeProfile, files: ModelFiles, placement: Placement, wake: Callable[[], None]
) -> tuple[GenerationScheduler, ModelInfo]:
    directory = profile.model_dir
    settings = generation_settings(profile)
    tokenizer = load_tokenizer(directory)
    template = ChatTemplate.load(directory)
    if settings.mode == "chat" and template is None:
        raise ModelLoadError(
            "mode",
            f"{directory.name} has no chat template (tokenizer_config.json or chat_template.jinja); "
            "set mode to completion for a base model",
        )
    context = resolve_context(profile, directory)
    session, loaded_path = session_for(profile, files, placement, last_position_graph)
    layout = read_kv_layout(session, directory, files.layout)
    runner = _runner(session, layout, files, settings, context)
    eos_text = dict(template.special_tokens).get("eos_token") if template else None
    eos_ids = eos_token_ids(directory, tokenizer.token_to_id(eos_text) if eos_text else None)
    if not eos_ids:
        raise ModelLoadError(
            "model_path", "no end-of-sequence token id in generation_config.json, config.json or tokenizer_config.json"
        )
    # A real forward pass now, so credential validation proves the graph runs with this cache layout.
    probe = runner.new_cache(8)
    runner.forward(probe, tokenizer.encode("Hello", add_special_tokens=False).ids[:4] or [0])
    runner.release(probe)
    prompts = PromptBuilder(tokenizer, template, settings.mode, context, settings.prompt_overflow)
    name = f"{directory.name}[llm]"
    defaults = defaults_from_generation_config(read_optional_json(directory / "generation_config.json"))
    scheduler = GenerationScheduler(name, runner, prompts, tokenizer, eos_ids, settings, wake, defaults)
    details = {
        "layers": layout.layers,
        "kv_heads": layout.kv_heads,
        "head_dim": layout.head_dim,
        "vocab_size": layout.vocab_size,
        "eos_token_ids": sorted(eos_ids),
        "logits": "last position" if _last_position_only(session) else "every position",
        "mode": settings.mode,
        "tools": template is not None and template.accepts_tools,
    }
    info = ModelInfo.for_load(name, profile, files, loaded_path, placement, context, details)
    return scheduler, info
