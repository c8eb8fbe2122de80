"""The generation scheduler: runs on the model's worker thread and interleaves all active sequences.

Each `step()` does one unit of work, taking the units in turn: a prompt chunk (prefill) of one sequence, one
new token of a sequence that decodes alone, or — when the runner supports it (genai layout) — one batched run
that gives every decoding sequence its next token. Several requests all progress, a long prompt does not freeze
the others' streams, and concurrent decodes share one pass over the weights. Requests beyond
`max_concurrent_sequences` wait in arrival order. Each request streams its events through the channel its
caller created.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from engine.channel import Channel
from engine.errors import EngineError, InferenceError, ModelBusyError
from engine.generation.constraint import OutputShaping
from engine.generation.detokenize import OutputStream, TextPiece
from engine.generation.events import Finished, GenerationEvent, GenerationParams, TextDelta, ToolCallDelta
from engine.generation.prompt import PromptBuilder
from engine.generation.runners import DecoderRunner, KvCache
from engine.generation.sampling import Sampler, SamplingParams
from engine.metrics import GenerationMetrics
from engine.native import allocate_lock, monotonic
from engine.settings.profile import GenerationSettings
from engine.text.messages import ChatMessage, ToolSpec

log = logging.getLogger(__name__)

# Prompt tokens per forward pass: other sequences decode between the chunks (a 128-token chunk of Qwen2.5-0.5B
# takes ~0.4 s on 2 cores), and a graph without the last-position edit (last_logits.py) materialises chunk × vocab
# floats (78 MB for Qwen's 151,936-token vocabulary). Larger chunks measured no faster (1.75 s for 531 tokens at
# 128, 256 or 512).
PREFILL_CHUNK = 128
# KV buffers (genai layout) are allocated in multiples of this many positions.
CAPACITY_STEP = 256
# Requests waiting for a free sequence slot, per slot: beyond that a new request is refused as busy at once
# instead of queueing behind work that would outlast the daemon's patience.
WAITING_PER_SLOT = 8
# The daemon stops waiting for a request after 600 s: a request still queued by then is failed, not started.
MAX_QUEUE_WAIT_S = 600.0


@dataclass(eq=False)
class GenerationRequest:
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec]
    params: GenerationParams
    channel: Channel[GenerationEvent]
    submitted: float
    settings: GenerationSettings  # the call's own limits (max_generation_seconds, prompt_overflow)
    cancelled: bool = False

    def cancel(self) -> None:
        """The caller stopped reading: the worker drops the sequence at its next step."""
        self.cancelled = True


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    prompt: list[int]
    cache: KvCache
    sampler: Sampler
    output: OutputStream
    started: float
    deadline: float | None
    prefilled: int = 0
    generated: int = 0
    last_token: int = -1
    first_token_at: float | None = None
    tool_calls: int = 0
    output_ids: list[int] = field(default_factory=list)


class GenerationScheduler:
    def __init__(
        self,
        name: str,
        runner: DecoderRunner,
        prompts: PromptBuilder,
        tokenizer: Tokenizer,
        eos_ids: frozenset[int],
        settings: GenerationSettings,
        wake: object,
        default_sampling: SamplingParams | None = None,
        activity: Callable[[bool], None] | None = None,
        shaping: OutputShaping | None = None,
    ) -> None:
        self.name = name
        self.runner = runner
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.settings = settings
        self.default_sampling = default_sampling or SamplingParams()
        self.context = prompts.context
        self._wake = wake
        # Told True when a request arrives and False when nothing is queued or active (placement follows it).
        self._activity = activity or (lambda busy: None)
        self._lock = allocate_lock()
        self.metrics = GenerationMetrics()
        self._inbox: collections.deque[GenerationRequest] = collections.deque()
        self._closed: BaseException | None = None  # set once by close(): later submissions fail with it
        self._active: list[_Sequence] = []
        self._turn = 0
        self._request_count = 0
        self.batched_steps = 0  # decode runs that advanced several sequences at once
        # Structured output, tool-call arguments and thinking (engine/generation/constraint.py).
        self.shaping = shaping or OutputShaping(tokenizer, runner.layout.vocab_size, eos_ids)

    # caller side (any thread or greenlet)
    def submit(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: GenerationParams,
        channel: Channel[GenerationEvent],
        settings: GenerationSettings | None = None,
    ) -> GenerationRequest:
        """Queue a request; `settings`: the caller's per-call limits (default: the model's)."""
        request = GenerationRequest(
            list(messages), list(tools), params, channel, monotonic(), settings or self.settings
        )
        with self._lock:
            if self._closed is not None:
                raise self._closed
            waiting_limit = WAITING_PER_SLOT * self.settings.max_concurrent_sequences
            if len(self._inbox) >= waiting_limit:
                self.metrics.rejected += 1
                raise ModelBusyError(
                    f"model {self.name} is busy: {len(self._inbox)} requests are waiting for one of its "
                    f"{self.settings.max_concurrent_sequences} sequences (max_concurrent_sequences); retry later"
                )
            self._inbox.append(request)
            self._activity(True)
        self._wake()  # type: ignore[operator]
        return request

    @property
    def active_sequences(self) -> int:
        return len(self._active)

    @property
    def waiting_requests(self) -> int:
        """Requests queued for a free sequence slot."""
        return len(self._inbox)

    # worker side
    def step(self) -> float | None:
        self._admit()
        for sequence in [s for s in self._active if s.request.cancelled]:
            self._remove(sequence)
        if not self._active:
            with self._lock:
                if not self._inbox:
                    self._activity(False)
            return None
        # Units of work taken in turn: each prefilling (or unbatchable) sequence alone, and one batched decode
        # step for every sequence that can share a run.
        batch = [s for s in self._active if s.prefilled >= len(s.prompt) and self.runner.batchable(s.cache)]
        units: list[_Sequence | list[_Sequence]] = [s for s in self._active if s not in batch]
        if len(batch) > 1:
            units.append(batch)
        else:
            units.extend(batch)
        unit = units[self._turn % len(units)]
        self._turn += 1
        members = unit if isinstance(unit, list) else [unit]
        try:
            if isinstance(unit, list):
                logits = self.runner.decode_batch([s.cache for s in unit], [s.last_token for s in unit])
                self.batched_steps += 1
                for sequence, row in zip(unit, logits):
                    self._consume(sequence, row)
            else:
                self._advance(unit)
        except Exception as error:  # ORT failure: only the sequences of this run fail
            log.exception("generation step failed on %s", self.name)
            for sequence in members:
                if sequence in self._active:
                    self._remove(sequence)
                    sequence.request.channel.close(
                        InferenceError(f"generation failed: {type(error).__name__}: {error}")
                    )
        return 0.0

    def snapshot(self) -> dict[str, object]:
        """Statistics of the finished requests (safe from any thread)."""
        with self._lock:
            return self.metrics.snapshot()

    def close(self, error: BaseException) -> None:
        with self._lock:
            self._closed = error
            waiting = list(self._inbox)
            self._inbox.clear()
        for request in waiting:
            request.channel.close(error)
        for sequence in list(self._active):
            self._remove(sequence)
            sequence.request.channel.close(error)

    def _queue_deadline(self, request: GenerationRequest) -> float:
        """When a waiting request is given up: its generation deadline (counted from submission), and at the
        latest when the daemon stops waiting."""
        seconds = request.settings.max_generation_seconds
        return request.submitted + (min(seconds, MAX_QUEUE_WAIT_S) if seconds > 0 else MAX_QUEUE_WAIT_S)

    def _expire_waiting(self, now: float) -> None:
        with self._lock:
            expired = [r for r in self._inbox if r.cancelled or now >= self._queue_deadline(r)]
            for request in expired:
                self._inbox.remove(request)
        for request in expired:
            if not request.cancelled:
                request.channel.close(
                    ModelBusyError(
                        f"model {self.name} is busy: the request waited {now - request.submitted:.0f}s for a free "
                        "sequence and was given up (max_generation_seconds counts from submission); retry later"
                    )
                )

    def _admit(self) -> None:
        """Start waiting requests while slots are free (one past its deadline ends at once with `length`); give up
        those still waiting for a slot past their deadline."""
        self._start_waiting()
        if self._inbox:
            self._expire_waiting(monotonic())

    def _start_waiting(self) -> None:
        while self._inbox and len(self._active) < self.settings.max_concurrent_sequences:
            with self._lock:
                request = self._inbox.popleft()
            if request.cancelled:
                continue
            try:
                self._active.append(self._start(request))
            except EngineError as error:
                request.channel.close(error)
            except Exception as error:
                log.exception("could not start a generation on %s", self.name)
                request.channel.close(InferenceError(f"generation could not start: {type(error).__name__}"))

    def _start(self, request: GenerationRequest) -> _Sequence:
        params = request.params
        options = self.shaping.template_options(params.enable_thinking)
        messages = self.shaping.instructed(request.messages, params.output_format, self.context)
        prompt = self.prompts.build(messages, request.tools, request.settings.prompt_overflow, options)
        sampling = params.sampling or self.default_sampling.with_overrides(dict(params.overrides))
        limit = self.context if params.max_tokens is None else min(self.context, len(prompt) + params.max_tokens)
        capacity = min(self.context, -(-limit // CAPACITY_STEP) * CAPACITY_STEP)
        self._request_count += 1
        now = monotonic()
        seconds = request.settings.max_generation_seconds
        tools = [(tool.name, tool.parameters) for tool in request.tools]
        constraint, opening = self.shaping.for_request(
            params.output_format, tools, prompt, limit - len(prompt), params.thinking_budget
        )
        sampler = Sampler(sampling, prompt, self.runner.layout.vocab_size, constraint)
        if opening:  # the prompt opened a <think> block: the stream shows the tag the model will not write
            request.channel.put(TextDelta(opening))
        output = OutputStream(
            self.tokenizer, params.stop, [tool.name for tool in request.tools], f"call_{self._request_count}"
        )
        return _Sequence(
            request=request,
            prompt=prompt,
            cache=self.runner.new_cache(capacity),  # last: nothing after it may fail and leak the KV slot
            sampler=sampler,
            output=output,
            started=now,
            # Counted from submission: time spent waiting for a slot is time the caller already waited.
            deadline=request.submitted + seconds if seconds > 0 else None,
        )

    def _advance(self, sequence: _Sequence) -> None:
        if sequence.prefilled < len(sequence.prompt):
            chunk = sequence.prompt[sequence.prefilled : sequence.prefilled + PREFILL_CHUNK]
            logits = self.runner.forward(sequence.cache, chunk)
            sequence.prefilled += len(chunk)
            if sequence.prefilled < len(sequence.prompt):
                if self._past_deadline(sequence, monotonic()):
                    self._finish(sequence, "length")
                return
        else:
            logits = self.runner.forward(sequence.cache, [sequence.last_token])
        self._consume(sequence, logits)

    def _consume(self, sequence: _Sequence, logits: np.ndarray) -> None:
        """Sample the next token from `logits`, stream it and decide whether the sequence is done."""
        token = sequence.sampler.choose(logits)
        now = monotonic()
        if sequence.first_token_at is None:
            sequence.first_token_at = now
        sequence.generated += 1
        sequence.last_token = token
        sequence.output_ids.append(token)
        if token in self.eos_ids:
            self._finish(sequence, "stop")
            return
        self._deliver(sequence, sequence.output.push(token))
        if sequence.output.stopped:
            self._finish(sequence, "stop")
        elif self._out_of_room(sequence) or self._past_deadline(sequence, now):
            self._finish(sequence, "length")

    def _past_deadline(self, sequence: _Sequence, now: float) -> bool:
        if sequence.deadline is None or now < sequence.deadline:
            return False
        log.warning(
            "generation on %s ended after %.1fs by max_generation_seconds (%d of %d prompt tokens read, %d generated)",
            self.name,
            now - sequence.started,
            sequence.prefilled,
            len(sequence.prompt),
            sequence.generated,
        )
        return True

    def _out_of_room(self, sequence: _Sequence) -> bool:
        """max_tokens reached, or the context window has no room to feed the new token back."""
        max_tokens = sequence.request.params.max_tokens
        if max_tokens is not None and sequence.generated >= max_tokens:
            return True
        return len(sequence.prompt) + sequence.generated >= self.context

    def _deliver(self, sequence: _Sequence, pieces: list) -> None:
        channel = sequence.request.channel
        for piece in pieces:
            if isinstance(piece, TextPiece):
                if piece.text:
                    channel.put(TextDelta(piece.text))
            else:
                sequence.tool_calls += 1
                channel.put(ToolCallDelta(piece.call))

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        self._deliver(sequence, sequence.output.finish())
        if reason == "stop" and sequence.tool_calls:
            reason = "tool_calls"
        now = monotonic()
        first = sequence.first_token_at or now
        decode_seconds = now - first
        rate = (sequence.generated - 1) / decode_seconds if sequence.generated > 1 and decode_seconds > 0 else 0.0
        self._remove(sequence)
        ttft = first - sequence.request.submitted
        with self._lock:
            self.metrics.record(ttft, rate, len(sequence.prompt), sequence.generated, reason)
        channel = sequence.request.channel
        channel.put(
            Finished(
                finish_reason=reason,
                prompt_tokens=len(sequence.prompt),
                completion_tokens=sequence.generated,
                time_to_first_token=first - sequence.request.submitted,
                decode_tokens_per_second=rate,
                total_seconds=now - sequence.request.submitted,
                output_ids=tuple(sequence.output_ids),
            )
        )
        channel.close()

    def _remove(self, sequence: _Sequence) -> None:
        if sequence in self._active:
            self._active.remove(sequence)
        self.runner.release(sequence.cache)  # free the KV memory (or pool slot) now, not when the request dies
        sequence.cache = KvCache(0)
