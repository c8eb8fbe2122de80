"""The generation scheduler: runs on the model's worker thread and interleaves all active sequences.

Each `step()` does one unit of work, taking the units in turn: a prompt chunk (prefill) of one sequence, one
new token of a sequence that decodes alone (or several: a speculative draft verified in one run, speculative.py),
or — when the runner supports it (genai layout) — one batched run that gives every decoding sequence its next
token. Several requests all progress, a long prompt does not freeze the others' streams, and concurrent decodes
share one pass over the weights. A new sequence first copies the KV of the longest prefix it shares with a kept
or running sequence (prefix_cache.py) and prefills only the rest. Requests beyond `max_concurrent_sequences`
wait in arrival order. Each request streams its events through the channel its caller created.
"""

from __future__ import annotations

import collections
import functools
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
from engine.generation.prefix_cache import MIN_REUSE_TOKENS, PrefixCache, common_prefix
from engine.generation.prompt import PromptBuilder
from engine.generation.runners import DecoderRunner, KvCache
from engine.generation.sampling import Sampler, SamplingParams
from engine.generation.speculative import NgramDrafter, accept
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
# While other sequences decode, decode steps and prompt chunks alternate and a chunk is cut to take about this
# many of their decode steps' time: a streaming answer's token gap stays under (1 + this) steps while another
# prompt is read, instead of a whole 128-token chunk (~35 single-sequence steps on 2 cores). A run costs a fixed
# part (reading the weights, about one single-sequence step) plus a part per token (Qwen2.5-0.5B int4, 2 cores:
# ~19 ms + ~6 ms per token), so the cut solves fixed + n x per-token <= this x step.
PREFILL_GAP_STEPS = 1.7
MIN_PREFILL_CHUNK = 4
# Chunks at least this long measure the per-token part.
TIMED_CHUNK = 8
# Weight of the newest run in the running estimates of a decode step's time and a prompt token's cost.
TIMING_WEIGHT = 0.3
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
    drafter: NgramDrafter | None = None  # speculative decoding, when on for this sequence
    reused: int = 0  # prompt tokens whose KV was copied instead of computed
    plain_next: bool = False  # the next token is decoded by a plain run (a verification stopped at a near-tie)

    @property
    def prefilling(self) -> bool:
        return self.prefilled < len(self.prompt)

    @functools.cached_property
    def prompt_ids(self) -> np.ndarray:
        return np.asarray(self.prompt, dtype=np.int64)

    def cached_tokens(self) -> np.ndarray:
        """The token ids whose KV the cache holds: the prompt, then each output token once it was fed back."""
        if self.cache.length <= len(self.prompt):
            return self.prompt_ids[: self.cache.length]
        return np.asarray((self.prompt + self.output_ids)[: self.cache.length], dtype=np.int64)


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
        self.prefix_cache = PrefixCache(settings.prefix_cache_mb << 20)
        self._decode_step_s = 0.0  # running estimates (worker thread): a decode unit's time,
        self._run_fixed_s = 0.0  # a one-token run of one sequence (the fixed part of any run),
        self._prefill_token_s = 0.0  # and the time each more token of a prompt chunk adds
        self._last_was_prefill = False
        self.speculation = {"runs": 0, "proposed": 0, "accepted": 0}  # verification runs and their drafts
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
        # step for every sequence that can share a run. A prefilling sequence whose prompt start another one is
        # computing now waits for it and copies it instead.
        unit = self._next_unit()
        members = unit if isinstance(unit, list) else [unit]
        started = monotonic()
        try:
            if isinstance(unit, list):
                logits = self.runner.decode_batch([s.cache for s in unit], [s.last_token for s in unit])
                self.batched_steps += 1
                self._decode_step_s = _blend(self._decode_step_s, monotonic() - started)
                for sequence, row in zip(unit, logits):
                    self._consume(sequence, row)
            else:
                self._advance(unit, started)
        except Exception as error:  # ORT failure: only the sequences of this run fail
            log.exception("generation step failed on %s", self.name)
            for sequence in members:
                if sequence in self._active:
                    self._remove(sequence)
                    sequence.request.channel.close(
                        InferenceError(f"generation failed: {type(error).__name__}: {error}")
                    )
        return 0.0

    def _next_unit(self) -> _Sequence | list[_Sequence]:
        """The work of this step. Decoding units (one batched run for every sequence that can share it, each other
        decoding sequence alone) and prompt chunks alternate while both exist, each kind taken in turn; a
        prefilling sequence that follows another (`_followers`) waits."""
        followers = self._followers()
        batch = [s for s in self._active if not s.prefilling and self.runner.batchable(s.cache)]
        decoding: list[_Sequence | list[_Sequence]] = [s for s in self._active if not s.prefilling and s not in batch]
        if len(batch) > 1:
            decoding.append(batch)
        else:
            decoding.extend(batch)
        prefilling = [s for s in self._active if s.prefilling and s not in followers]
        self._turn += 1
        self._last_was_prefill = bool(prefilling) and (not decoding or not self._last_was_prefill)
        if self._last_was_prefill:
            return prefilling[self._turn % len(prefilling)]
        return decoding[self._turn % len(decoding)]

    def _chunk_size(self) -> int:
        """Prompt tokens of the next chunk: PREFILL_CHUNK, or while others decode, what fits their gap budget."""
        if not any(not s.prefilling for s in self._active) or not self._prefill_token_s:
            return PREFILL_CHUNK
        budget = (PREFILL_GAP_STEPS * self._decode_step_s - self._run_fixed_s) / self._prefill_token_s
        return max(MIN_PREFILL_CHUNK, min(PREFILL_CHUNK, int(budget)))

    def snapshot(self) -> dict[str, object]:
        """Statistics of the finished requests (safe from any thread)."""
        with self._lock:
            snapshot = self.metrics.snapshot()
            snapshot["prefix_cache"] = self.prefix_cache.snapshot()
            snapshot["speculative"] = dict(self.speculation)
            return snapshot

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
        with self._lock:
            self.prefix_cache.clear()

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
        # Starting a request renders its template and tokenizes its prompt on this thread (a few ms each): while
        # answers stream, one start per step, so a burst of arrivals does not stall their tokens.
        starts = 1 if any(not s.prefilling for s in self._active) else self.settings.max_concurrent_sequences
        while self._inbox and len(self._active) < self.settings.max_concurrent_sequences and starts > 0:
            with self._lock:
                request = self._inbox.popleft()
            if request.cancelled:
                continue
            starts -= 1
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
        speculate = request.settings.speculative_decoding and self.runner.can_rewind and not sampler.constrained
        sequence = _Sequence(
            request=request,
            prompt=prompt,
            cache=self.runner.new_cache(capacity),  # last: nothing after it may fail and leak the KV slot
            sampler=sampler,
            output=output,
            started=now,
            # Counted from submission: time spent waiting for a slot is time the caller already waited.
            deadline=request.submitted + seconds if seconds > 0 else None,
            drafter=NgramDrafter() if speculate else None,
        )
        try:
            self._reuse_prefix(sequence)
        except Exception:
            self.runner.release(sequence.cache)
            raise
        return sequence

    def _reuse_prefix(self, sequence: _Sequence) -> None:
        """Copy the KV of the longest prefix the prompt shares with a kept entry or a running sequence; at least
        the prompt's last token is left to prefill (its logits choose the first new token)."""
        if not self.prefix_cache.enabled:
            return
        entry, length = self.prefix_cache.longest(sequence.prompt_ids[:-1])
        length = min(length, sequence.cache.capacity)
        if entry is not None and length >= MIN_REUSE_TOKENS:
            self.runner.import_prefix(sequence.cache, entry.block, length)
            sequence.prefilled = sequence.reused = length
            with self._lock:
                self.prefix_cache.touch(entry)
        self._catch_up(sequence)
        with self._lock:
            self.prefix_cache.record(len(sequence.prompt), sequence.reused)

    def _catch_up(self, sequence: _Sequence) -> int:
        """Copy from a running sequence the KV of prompt positions it has computed and this one has not; returns
        how many positions were copied."""
        prompt = sequence.prompt_ids[:-1]
        source, length = None, sequence.prefilled
        for other in self._active:
            if other is not sequence:
                shared = min(common_prefix(other.cached_tokens(), prompt), sequence.cache.capacity)
                if shared > length:
                    source, length = other, shared
        if source is None or length - sequence.prefilled < MIN_REUSE_TOKENS:
            return 0
        self.runner.import_prefix(sequence.cache, self.runner.export_prefix(source.cache, length), length)
        gained = length - sequence.prefilled
        sequence.prefilled = length
        sequence.reused += gained
        return gained

    def _followers(self) -> set[_Sequence]:
        """Prefilling sequences that wait this step: another prefilling sequence, ahead of them (more prefilled,
        or as much and admitted earlier), is computing the prompt start they share. Each first copies what the
        sequences ahead have computed already."""
        if not self.prefix_cache.enabled:
            return set()
        prefilling = [s for s in self._active if s.prefilling]
        if len(prefilling) < 2:
            return set()
        followers: set[_Sequence] = set()
        for index, sequence in enumerate(prefilling):
            gained = self._catch_up(sequence)
            if gained:  # admitted earlier: its lookup was recorded already
                with self._lock:
                    self.prefix_cache.credit(gained, first=sequence.reused == gained)
            prompt = sequence.prompt_ids[:-1]
            for rank, leader in enumerate(prefilling):
                ahead = leader.prefilled > sequence.prefilled or (
                    leader.prefilled == sequence.prefilled and rank < index
                )
                if leader is sequence or not ahead or leader in followers:
                    continue
                shared = common_prefix(leader.prompt_ids, prompt)
                if shared - sequence.prefilled >= MIN_REUSE_TOKENS:
                    followers.add(sequence)
                    break
        return followers

    def _keep_prefix(self, sequence: _Sequence) -> None:
        """Keep a finished sequence's KV for later requests that start with the same tokens."""
        tokens = sequence.cached_tokens()
        if not self.prefix_cache.wants(tokens):
            return
        try:
            block = self.runner.export_prefix(sequence.cache, tokens.shape[0])
        except Exception:  # a cache that cannot be kept must not fail the request that just finished
            log.exception("could not keep the prefix of a sequence on %s", self.name)
            return
        with self._lock:
            self.prefix_cache.insert(tokens, block)

    def _advance(self, sequence: _Sequence, started: float) -> None:
        if sequence.prefilled < len(sequence.prompt):
            chunk = sequence.prompt[sequence.prefilled : sequence.prefilled + self._chunk_size()]
            logits = self.runner.forward(sequence.cache, chunk)
            if len(chunk) >= TIMED_CHUNK:
                added = max(0.0, monotonic() - started - self._run_fixed_s) / (len(chunk) - 1)
                self._prefill_token_s = _blend(self._prefill_token_s, added)
            sequence.prefilled += len(chunk)
            if sequence.prefilled < len(sequence.prompt):
                if self._past_deadline(sequence, monotonic()):
                    self._finish(sequence, "length")
                return
        elif self._speculate(sequence):
            return
        else:
            logits = self.runner.forward(sequence.cache, [sequence.last_token])
            elapsed = monotonic() - started
            self._decode_step_s = _blend(self._decode_step_s, elapsed)
            self._run_fixed_s = _blend(self._run_fixed_s, elapsed)
        self._consume(sequence, logits)

    def _speculate(self, sequence: _Sequence) -> bool:
        """One decode step with drafts from the sequence's own history, verified in one run; False when there is
        no draft to check (the caller then decodes one token)."""
        if sequence.drafter is None or sequence.plain_next or not sequence.drafter.drafting():
            sequence.plain_next = False
            return False
        cache = sequence.cache
        # Room: the drafts plus the token chosen after them must fit max_tokens, the context and the buffer.
        room = self.context - len(sequence.prompt) - sequence.generated
        max_tokens = sequence.request.params.max_tokens
        if max_tokens is not None:
            room = min(room, max_tokens - sequence.generated)
        room = min(room, cache.capacity - cache.length) - 1
        history = np.asarray(sequence.prompt + sequence.output_ids, dtype=np.int64)
        drafts = sequence.drafter.propose(history, room)
        if not drafts:
            return False
        start = cache.length
        logits = self.runner.score(cache, [sequence.last_token, *drafts])
        tokens = accept(sequence.sampler, logits, drafts)
        accepted = sum(1 for token, draft in zip(tokens, drafts) if token == draft)
        self.runner.rewind(cache, start + len(tokens))  # the KV of the tokens fed before each emitted one
        sequence.drafter.update(len(drafts), accepted)
        if accepted == len(tokens) <= len(drafts):
            # Stopped at a near-tie: the last emitted token (or the last token itself) is fed by a plain run.
            sequence.plain_next = True
        self.speculation["runs"] += 1
        self.speculation["proposed"] += len(drafts)
        self.speculation["accepted"] += accepted
        for token in tokens:
            if not self._take(sequence, token):
                break
        return True

    def _consume(self, sequence: _Sequence, logits: np.ndarray) -> None:
        """Sample the next token from `logits`, stream it and decide whether the sequence is done."""
        self._take(sequence, sequence.sampler.choose(logits))

    def _take(self, sequence: _Sequence, token: int) -> bool:
        """Stream the chosen `token` and decide whether the sequence is done; True while it goes on."""
        now = monotonic()
        if sequence.first_token_at is None:
            sequence.first_token_at = now
        sequence.generated += 1
        sequence.last_token = token
        sequence.output_ids.append(token)
        if token in self.eos_ids:
            self._finish(sequence, "stop")
            return False
        self._deliver(sequence, sequence.output.push(token))
        if sequence.output.stopped:
            self._finish(sequence, "stop")
        elif self._out_of_room(sequence) or self._past_deadline(sequence, now):
            self._finish(sequence, "length")
        else:
            return True
        return False

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
        self._keep_prefix(sequence)
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


def _blend(estimate: float, sample: float) -> float:
    """A running estimate moved towards the newest sample (the first sample is taken as it is)."""
    return sample if not estimate else estimate + TIMING_WEIGHT * (sample - estimate)
