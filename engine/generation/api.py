"""Generation entry points for adapters, tests and benchmarks.

Callers may be gevent greenlets: they never block on a real lock. The stream comes through a Channel created
here, in the caller's context; token counting runs on the model's worker via `worker.call`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

from engine.api import Engine
from engine.channel import Channel
from engine.errors import BadRequestError
from engine.generation.events import GenerationEvent, GenerationParams
from engine.generation.loader import ModelTraits, read_traits
from engine.generation.messages import ChatMessage, ToolSpec
from engine.generation.scheduler import GenerationRequest, GenerationScheduler
from engine.profile import RuntimeProfile
from engine.registry import LoadedModel


def _scheduler(engine: Engine, profile: RuntimeProfile):  # type: ignore[no-untyped-def]
    if profile.model_type != "llm":
        raise BadRequestError(f"model type {profile.model_type} cannot generate text")
    model = engine.model(profile)
    if not isinstance(model.scheduler, GenerationScheduler):
        raise BadRequestError(f"{model.info.name} is not a text-generation model")
    return model, model.scheduler


def generate(
    engine: Engine,
    profile: RuntimeProfile,
    messages: Sequence[ChatMessage],
    params: GenerationParams,
    tools: Sequence[ToolSpec] = (),
    stop: Sequence[str] = (),
) -> Iterator[GenerationEvent]:
    """Submit a generation (loading the model if needed) and return its stream: TextDelta / ToolCallDelta
    events and, last, one Finished event. Problems found before the first step (a bad parameter, an unknown
    model) raise here; the prompt's own problems (too long, image content) raise from the iteration. Stopping
    the iteration early (closing the iterator) cancels the sequence on the worker."""
    model, scheduler = _scheduler(engine, profile)
    if stop:
        params = replace(params, stop=tuple(params.stop) + tuple(stop))
    if params.max_tokens is not None and params.max_tokens < 1:
        raise BadRequestError(f"max_tokens {params.max_tokens} is not valid; allowed: 1 or more")
    if params.sampling is not None:
        params.sampling.validate()
    channel: Channel[GenerationEvent] = Channel()
    model.begin()
    request = scheduler.submit(messages, tools, params, channel)
    return _stream(channel, request, model)


def _stream(
    channel: Channel[GenerationEvent], request: GenerationRequest, model: LoadedModel
) -> Iterator[GenerationEvent]:
    try:
        yield from channel
    finally:
        request.cancel()
        model.end()


def count_prompt_tokens(
    engine: Engine, profile: RuntimeProfile, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
) -> int:
    """Prompt tokens with the model's own template and tokenizer, tools included (no context check)."""
    model, scheduler = _scheduler(engine, profile)
    prompts = scheduler.prompts
    return model.worker.call(lambda: len(prompts.encode(messages, tools))).result()


def model_traits(profile: RuntimeProfile) -> ModelTraits:
    """Context size, parameter defaults and tool support from the model's files, without loading it."""
    return read_traits(profile)
