"""Build a chat/completion model on its worker thread: tokenizer, template, session, runner and scheduler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import BadRequestError, ModelLoadError
from engine.generation.attention_rewrite import AttentionRewrite
from engine.generation.constraint import OutputShaping
from engine.generation.kv_layout import KvLayout, read_kv_layout
from engine.generation.last_logits import last_position_graph, takes_logits_count
from engine.generation.prompt import PromptBuilder
from engine.generation.reasoning import template_has_switch, template_thinks
from engine.generation.runners import DecoderRunner, GenaiRunner, OptimumRunner
from engine.generation.sampling import SamplingParams, defaults_from_generation_config
from engine.generation.scheduler import GenerationScheduler
from engine.model_config import read_optional_json, resolve_context_size
from engine.model_files import ModelFiles
from engine.model_info import ModelInfo
from engine.placement import Placement, activity_of
from engine.session_builder import session_for
from engine.settings.profile import GenerationSettings, RuntimeProfile
from engine.text.chat_template import ChatTemplate
from engine.text.tokenizer import load_tokenizer

# Positions per slot of the genai layout's shared KV pool (batched decode). Longer sequences (prompt + max_tokens)
# get buffers of their own and decode alone. Qwen2.5-0.5B: 24.6 KB per position, 50 MB per slot.
BATCH_SLOT_CAPACITY = 2048


@dataclass(frozen=True)
class ModelTraits:
    """What the adapter's schema needs, read from the model's files alone (no session)."""

    context_size: int
    defaults: SamplingParams
    default_max_tokens: int | None
    accepts_tools: bool
    mode: str
    thinks: bool = False  # the chat template writes <think> blocks (a reasoning model)
    thinking_switch: bool = False  # … and reads enable_thinking (a per-request switch)


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


def _settings(profile: RuntimeProfile) -> GenerationSettings:
    if profile.generation is None:
        raise BadRequestError(f"model type {profile.model_type} cannot generate text")
    return profile.generation


def read_traits(profile: RuntimeProfile) -> ModelTraits:
    directory = profile.model_dir
    settings = _settings(profile)
    template = ChatTemplate.load(directory)
    generation_config = read_optional_json(directory / "generation_config.json")
    max_new = generation_config.get("max_new_tokens")
    return ModelTraits(
        context_size=resolve_context_size(profile.context_size, directory, profile.model_type),
        defaults=defaults_from_generation_config(generation_config),
        default_max_tokens=max_new if isinstance(max_new, int) and max_new > 0 else None,
        accepts_tools=settings.mode == "chat" and template is not None and template.accepts_tools,
        mode=settings.mode,
        **_reasoning_traits(template if settings.mode == "chat" else None),
    )


def _reasoning_traits(template: ChatTemplate | None) -> dict[str, bool]:
    source = "" if template is None else template.source + (template.tool_source or "")
    return {"thinks": template_thinks(source), "thinking_switch": template_has_switch(source)}


def _runner(
    session: object, layout: KvLayout, graph_layout: str, settings: GenerationSettings, context: int
) -> DecoderRunner:
    if graph_layout == "genai":
        slots = settings.max_concurrent_sequences
        return GenaiRunner(session, layout, slots, min(context, BATCH_SLOT_CAPACITY))  # type: ignore[arg-type]
    return OptimumRunner(session, layout)  # type: ignore[arg-type]


def build_generator(
    profile: RuntimeProfile,
    files: ModelFiles,
    placement: Placement,
    wake: Callable[[], None],
    name: str | None = None,
) -> tuple[GenerationScheduler, ModelInfo]:
    directory = profile.model_dir
    settings = _settings(profile)
    tokenizer = load_tokenizer(directory)
    template = ChatTemplate.load(directory)
    if settings.mode == "chat" and template is None:
        raise ModelLoadError(
            "mode",
            f"{directory.name} has no chat template (tokenizer_config.json or chat_template.jinja); "
            "set mode to completion for a base model",
        )
    context = resolve_context_size(profile.context_size, directory, profile.model_type)
    # An Optimum decoder whose attention is rewritten onto GroupQueryAttention runs as the genai layout does.
    rewrite = AttentionRewrite(read_optional_json(directory / "config.json")) if files.layout == "optimum" else None
    session, loaded_path = session_for(profile, files, placement, rewrite or last_position_graph)
    graph_layout = "genai" if rewrite is not None and rewrite.applied else files.layout
    layout = read_kv_layout(session, directory, files.layout)
    runner = _runner(session, layout, graph_layout, settings, context)
    eos_text = dict(template.special_tokens).get("eos_token") if template else None
    eos_ids = eos_token_ids(directory, tokenizer.token_to_id(eos_text) if eos_text else None)
    if not eos_ids:
        raise ModelLoadError(
            "model_path", "no end-of-sequence token id in generation_config.json, config.json or tokenizer_config.json"
        )
    # A real forward pass now, so credential validation proves the graph runs with this cache layout.
    probe = runner.new_cache(8)
    runner.forward(probe, tokenizer.encode_batch(["Hello"], add_special_tokens=False)[0].ids[:4] or [0])
    runner.release(probe)
    prompts = PromptBuilder(tokenizer, template, settings.mode, context, settings.prompt_overflow)
    name = name or f"{directory.name}[llm]"
    defaults = defaults_from_generation_config(read_optional_json(directory / "generation_config.json"))
    shaping = OutputShaping(
        tokenizer, layout.vocab_size, eos_ids, **_reasoning_traits(template if settings.mode == "chat" else None)
    )
    scheduler = GenerationScheduler(
        name, runner, prompts, tokenizer, eos_ids, settings, wake, defaults, activity_of(placement), shaping
    )
    details = {
        "layers": layout.layers,
        "kv_heads": layout.kv_heads,
        "head_dim": layout.head_dim,
        "vocab_size": layout.vocab_size,
        "eos_token_ids": sorted(eos_ids),
        "logits": "last position" if takes_logits_count(session) else "every position",
        "kv_cache": rewrite.describe() if rewrite is not None else "KV cache in place (GroupQueryAttention)",
        "mode": settings.mode,
        "tools": template is not None and template.accepts_tools,
    }
    info = ModelInfo.for_load(name, profile, files, loaded_path, placement, context, details)
    return scheduler, info
