"""The engine's one door: what adapters, tests, benchmarks and a command line call.

Callers may be gevent greenlets: nothing here blocks on a real lock while a model computes. Every call, whatever
its kind, holds the model in use through `ModelRegistry.use` for as long as it runs (a generation: until its
stream ends), so idle unload never stops a model under a call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Concatenate, ParamSpec, TypeVar

from engine.channel import Channel, close_open_channels
from engine.encoders.batching import BULK, INTERACTIVE, MicroBatcher
from engine.encoders.loader import build_encoder
from engine.errors import BadRequestError, EngineClosedError, RateLimitedError, SettingError
from engine.generation.events import GenerationEvent, GenerationParams
from engine.generation.loader import ModelTraits, build_generator, read_traits
from engine.generation.scheduler import GenerationRequest, GenerationScheduler
from engine.metrics import RequestCounts, format_snapshot
from engine.model_config import read_optional_json, resolve_context_size
from engine.model_info import ModelInfo
from engine.native import allocate_lock
from engine.rate_limit import RateLimiter
from engine.registry import Builder, ModelRegistry
from engine.settings.profile import RuntimeProfile
from engine.text.messages import ChatMessage, ToolSpec
from engine.worker import Scheduler

log = logging.getLogger(__name__)

# Dify's stdout line limit is 5 MiB and an embedding costs about 20 bytes per float in JSON: keep one
# response near 2 MiB whatever the dimension (max_chunks, what Dify sends per call), and refuse a call whose
# response could not cross the daemon's line limit at all.
RESPONSE_BUDGET_BYTES = 2 * 1024 * 1024
RESPONSE_LIMIT_BYTES = 4 * 1024 * 1024
JSON_BYTES_PER_FLOAT = 20
JSON_BYTES_PER_RERANK_HIT = 64  # index, score and the JSON around a document's text
MAX_CHUNKS_CAP = 64
# Embedding dimension assumed for max_chunks when config.json does not give hidden_size.
FALLBACK_DIMENSION = 1024

BUILDERS: dict[str, Builder] = {"text-embedding": build_encoder, "rerank": build_encoder, "llm": build_generator}


@dataclass(frozen=True)
class EmbeddingOutcome:
    vectors: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class RerankHit:
    index: int
    text: str
    score: float


@dataclass(frozen=True)
class EncoderTraits:
    """What an embedding or rerank model's schema needs, from its files alone (no session)."""

    context_size: int
    max_chunks: int | None  # embedding models: texts per call that keep a response within the budget


def max_chunks_for(dimension: int) -> int:
    return max(1, min(MAX_CHUNKS_CAP, RESPONSE_BUDGET_BYTES // (20 * max(1, dimension))))


def request_model_name(profile: RuntimeProfile) -> str:
    """The name requests are counted under: the registry's name of the profile's (first) loaded instance."""
    return f"{profile.model_dir.name}[{profile.model_type}]"


P = ParamSpec("P")
R = TypeVar("R")


def _counted(
    method: Callable[Concatenate[Engine, RuntimeProfile, P], R],
) -> Callable[Concatenate[Engine, RuntimeProfile, P], R]:
    """Count a call in `Engine.requests` under its profile's model, and its error if it raises one."""

    @functools.wraps(method)
    def counted(self: Engine, profile: RuntimeProfile, /, *args: P.args, **kwargs: P.kwargs) -> R:
        name = request_model_name(profile)
        self.requests.request(name, profile.model_type)
        try:
            return method(self, profile, *args, **kwargs)
        except Exception as error:
            self.requests.error(name, profile.model_type, error)
            raise

    return counted


class Engine:
    def __init__(self, registry: ModelRegistry | None = None, rate_limiter: RateLimiter | None = None) -> None:
        self.registry = registry or ModelRegistry(BUILDERS)
        self.rate_limiter = rate_limiter  # None: no per-user limit
        self.requests = RequestCounts()  # embed, rerank and generate calls and their errors, per model

    def admit(self, user: str | None) -> None:
        """Count one request of `user` against the per-user rate limit (RateLimitedError when over it)."""
        if self.rate_limiter is not None:
            try:
                self.rate_limiter.admit(user)
            except RateLimitedError:
                self.requests.count_rate_limited()
                raise

    # ---- every model type
    def model_info(self, profile: RuntimeProfile) -> ModelInfo:
        """Load (or find) the model and describe what was loaded; credential validation calls this."""
        with self.registry.use(profile, Scheduler) as model:  # type: ignore[type-abstract]
            return model.info

    def traits(self, profile: RuntimeProfile) -> EncoderTraits | ModelTraits:
        """What the model's schema needs (context size, parameter defaults, tool support, …), read from its
        files without loading it."""
        if profile.model_type == "llm":
            return read_traits(profile)
        directory = profile.model_dir
        try:
            context = resolve_context_size(profile.context_size, directory, profile.model_type)
        except SettingError:  # an invalid explicit size is reported by validation; describe the model as trained
            context = resolve_context_size(None, directory, profile.model_type)
        max_chunks = None
        if profile.model_type == "text-embedding":
            hidden = read_optional_json(directory / "config.json").get("hidden_size")
            max_chunks = max_chunks_for(hidden if isinstance(hidden, int) else FALLBACK_DIMENSION)
        return EncoderTraits(context, max_chunks)

    def stats(self) -> dict[str, dict[str, object]]:
        """Per loaded model: its scheduler's figures, its placement now (cores, threads, spinning), its queue now
        and what was loaded."""
        placement = self.registry.allocator.governor.snapshot()["models"]
        stats = {}
        for model in self.registry.loaded():
            snapshot = model.scheduler.snapshot()
            lease = placement.get(model.info.name, {})  # type: ignore[union-attr]
            snapshot["placement"] = {
                "cores": lease.get("cores", list(model.placement.cores or [])),
                "threads": model.placement.threads,
                "spin": model.info.details.get("spin", False),
                "adaptive": model.placement.adaptive,
                "busy": lease.get("busy", False),
            }
            snapshot["queue"] = _queue_now(model.scheduler, model.active_calls)
            snapshot["model"] = {
                "type": model.info.model_type,
                "file": model.info.onnx_file,
                "layout": model.info.layout,
                "size_bytes": model.info.size_bytes,
                "load_seconds": model.info.load_seconds,
                "rss_delta_mb": model.info.details.get("rss_delta_mb", 0.0),
            }
            stats[model.info.name] = snapshot
        return stats

    def placement(self) -> dict[str, object]:
        """The governor's view: every placed model's cores now, and the recent re-placements with their reasons."""
        return self.registry.allocator.governor.snapshot()

    def log_stats(self) -> None:
        for name, snapshot in self.stats().items():
            log.info(format_snapshot(name, snapshot))

    def close(self) -> None:
        self.registry.close()

    def shutdown(self, wait_seconds: float) -> None:
        """The process is ending: every model fails what it holds with a clear error, waiting at most
        `wait_seconds` for runs in progress."""
        close_open_channels(EngineClosedError("the plugin is shutting down; retry the call"))
        self.registry.close(wait_seconds, "was stopped: the plugin is shutting down")

    # ---- embedding and rerank
    @_counted
    def embed(self, profile: RuntimeProfile, texts: Sequence[str], input_type: str = "document") -> EmbeddingOutcome:
        if input_type not in ("document", "query"):
            raise BadRequestError(f"input_type {input_type!r} is not valid; allowed: document, query")
        with self.registry.use(profile, MicroBatcher) as model:
            dimension = int(model.info.details.get("dimension", 0))
            most = RESPONSE_LIMIT_BYTES // (JSON_BYTES_PER_FLOAT * max(1, dimension))
            if len(texts) > most:
                raise BadRequestError(
                    f"this call has {len(texts)} texts; {most} vectors of {dimension} dimensions is the most one "
                    f"response can carry ({RESPONSE_LIMIT_BYTES // 2**20} MiB): split the call"
                )
            priority = INTERACTIVE if input_type == "query" else BULK
            outcome = model.scheduler.submit(
                list(texts), input_type, priority, profile.embedding, profile.batching
            ).result()
        return EmbeddingOutcome([vector.tolist() for vector in outcome.results], outcome.tokens)

    @_counted
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
        size = sum(len(doc.encode("utf-8", "replace")) + JSON_BYTES_PER_RERANK_HIT for doc in docs)
        if size > RESPONSE_LIMIT_BYTES:
            raise BadRequestError(
                f"this call's {len(docs)} documents make a response of about {size // 2**20} MiB, over the "
                f"{RESPONSE_LIMIT_BYTES // 2**20} MiB one response can carry: split the call or send shorter texts"
            )
        with self.registry.use(profile, MicroBatcher) as model:
            pairs = [(query, doc) for doc in docs]
            outcome = model.scheduler.submit(pairs, "pair", INTERACTIVE, profile.rerank, profile.batching).result()
        hits = [RerankHit(i, doc, float(score)) for i, (doc, score) in enumerate(zip(docs, outcome.results))]
        hits.sort(key=lambda hit: (-hit.score, hit.index))
        if score_threshold:
            hits = [hit for hit in hits if hit.score >= score_threshold]
        if top_n is not None and top_n > 0:
            hits = hits[:top_n]
        return hits

    def count_tokens(self, profile: RuntimeProfile, texts: Sequence[str]) -> list[int]:
        """Tokens per text with the model's own tokenizer, before truncation to the context."""
        with self.registry.use(profile, MicroBatcher) as model:
            counter = model.scheduler.task.counter
            return model.worker.call(lambda: [len(e.ids) for e in counter.encode_batch(list(texts))]).result()

    # ---- chat and completion
    @_counted
    def generate(
        self,
        profile: RuntimeProfile,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec] = (),
        stop: Sequence[str] = (),
    ) -> Iterator[GenerationEvent]:
        """Submit a generation (loading the model if needed) and return its stream: TextDelta / ToolCallDelta
        events and, last, one Finished event. Problems found before the first step (a bad parameter, an
        unknown model) raise here; the prompt's own problems (too long, image content) raise from the
        iteration. Closing the iterator early cancels the sequence on the worker."""
        if profile.generation is None:
            raise BadRequestError(f"model type {profile.model_type} cannot generate text")
        if stop:
            params = replace(params, stop=tuple(params.stop) + tuple(stop))
        if params.max_tokens is not None and params.max_tokens < 1:
            raise BadRequestError(f"max_tokens {params.max_tokens} is not valid; allowed: 1 or more")
        if params.sampling is not None:
            params.sampling.validate()
        in_use = ExitStack()
        model = in_use.enter_context(self.registry.use(profile, GenerationScheduler))
        channel: Channel[GenerationEvent] = Channel()
        try:
            request = model.scheduler.submit(messages, tools, params, channel, profile.generation)
        except BaseException:
            in_use.close()
            raise
        name = request_model_name(profile)
        return _stream(channel, request, in_use, lambda error: self.requests.error(name, profile.model_type, error))

    def count_prompt_tokens(
        self, profile: RuntimeProfile, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> int:
        """Prompt tokens with the model's own template and tokenizer, tools included (no context check)."""
        if profile.generation is None:
            raise BadRequestError(f"model type {profile.model_type} cannot generate text")
        with self.registry.use(profile, GenerationScheduler) as model:
            prompts = model.scheduler.prompts
            return model.worker.call(lambda: len(prompts.encode(messages, tools))).result()


def _stream(
    channel: Channel[GenerationEvent],
    request: GenerationRequest,
    in_use: ExitStack,
    on_error: Callable[[Exception], None],
) -> Iterator[GenerationEvent]:
    with in_use:  # the model stays counted in use until the stream ends or is closed
        try:
            yield from channel
        except Exception as error:  # the prompt's own problems, a failed step, an unload: counted, then raised
            on_error(error)
            raise
        finally:
            request.cancel()


def _queue_now(scheduler: Scheduler, active_calls: int) -> dict[str, int]:
    """What waits on a model now: calls in progress, and queued inputs (encoders) or waiting and active
    sequences (generation)."""
    queue = {"active_calls": active_calls}
    if isinstance(scheduler, MicroBatcher):
        queue["queued_inputs"] = scheduler.queued_inputs
    elif isinstance(scheduler, GenerationScheduler):
        queue["waiting_requests"] = scheduler.waiting_requests
        queue["active_sequences"] = scheduler.active_sequences
    return queue


_default_engine: Engine | None = None
_default_lock = allocate_lock()


def existing_engine() -> Engine | None:
    """The process-wide engine if it was created (shutdown must not create one)."""
    return _default_engine


def default_engine() -> Engine:
    """The process-wide engine (created on first use, never at import: the daemon wants a heartbeat first)."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = Engine(rate_limiter=RateLimiter.from_environment())
        return _default_engine
