"""Encoder micro-batcher: the scheduler of an embedding or rerank model.

Calls from any number of callers enter the model's queue. Two lanes serve it, both pinned to the model's cores
and running the same ONNX Runtime session (concurrent runs are safe):
- the bulk lane (the model's worker) serves document embeddings: it waits at most a short window for a batch
  to fill, interleaves the texts of different calls so one huge call cannot starve the others, and forms
  batches of similar length within a size and padded-token budget;
- the interactive lane (its own thread, at a higher OS priority where allowed) serves query embeddings and
  rerank calls at once, so they never wait behind a long bulk batch.
Each call's results come back in its own order.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.channel import Completion
from engine.encoders.embedding_cache import CacheKey, EmbeddingCache
from engine.encoders.runner import Tokens
from engine.errors import BadRequestError, EngineError, InferenceError, ModelBusyError
from engine.metrics import ModelMetrics, format_snapshot
from engine.native import NativeEvent, allocate_lock, monotonic, native_thread_id, start_thread
from engine.settings.profile import BatchingSettings

log = logging.getLogger(__name__)

INTERACTIVE, BULK = 0, 1
STATS_LOG_INTERVAL_S = 60.0
# A batch costs about this many tokens' worth of fixed work (session run, Python, small GEMMs): the batch
# chosen maximizes real tokens / (padded tokens + this), so long texts go in tight batches and short ones in
# full batches. Measured choice: 1.04–1.09× padding on mixed document chunks, against 1.3–1.4× for
# "the largest batch that fits" (bench/embed.py on all-MiniLM-L6-v2).
BATCH_OVERHEAD_TOKENS = 32
# Niceness of the interactive lane (lower = more CPU when it competes with the bulk lane on the same cores).
# Needs CAP_SYS_NICE; without it the lane still runs concurrently, at normal priority.
INTERACTIVE_NICE = -10


class EncoderTask(Protocol):
    def tokenize(self, inputs: Sequence[Any], input_type: str, options: Any = None) -> list[Tokens]: ...

    def cache_key(self, text: Any, input_type: str, options: Any = None) -> CacheKey | None:
        """What decides an input's raw result (None: not cacheable)."""

    def run(self, batch: Sequence[Tokens]) -> list[Any]:
        """One raw result per input (a batch may mix calls)."""

    def finish(self, results: list[Any], options: Any = None) -> list[Any]:
        """A call's raw results, in its order, turned into what it asked for (its per-call options)."""


@dataclass(frozen=True)
class CallOutcome:
    results: list[Any]  # one per input, in the caller's order
    tokens: int  # tokens actually processed (after truncation)


@dataclass(eq=False)
class _Call:
    inputs: Sequence[Any]  # the inputs to compute (cache misses), in the call's order
    input_type: str
    priority: int
    completion: Completion[CallOutcome]
    submitted: float
    options: Any = None  # the call's own settings (prefixes, normalization, score mode)
    results: list[Any] = field(default_factory=list)  # every input's raw result; cache hits filled at submit
    positions: list[int] = field(default_factory=list)  # where each of `inputs` goes in `results`
    cache_keys: dict[int, CacheKey] = field(default_factory=dict)  # position → key, for results to remember
    pending: collections.deque[_Item] = field(default_factory=collections.deque)
    remaining: int = 0
    tokens: int = 0
    tokenized: bool = False
    failed: bool = False


@dataclass(eq=False)
class _Item:
    call: _Call
    index: int
    tokens: Tokens


def select_batch(lengths: Sequence[int], anchor: int, max_size: int, budget: int) -> tuple[int, int]:
    """In length-sorted `lengths`, the window [start, end) that contains `anchor` (the turn that must be
    served now), has at most `max_size` items and `budget` padded tokens, and computes the most real tokens
    per padded token plus per-batch overhead."""
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    best, best_window = -1.0, (anchor, anchor + 1)
    for size in range(1, min(max_size, len(lengths)) + 1):
        for start in range(max(0, anchor - size + 1), min(anchor, len(lengths) - size) + 1):
            padded = size * lengths[start + size - 1]
            if size > 1 and padded > budget:
                continue
            score = (prefix[start + size] - prefix[start]) / (padded + BATCH_OVERHEAD_TOKENS)
            if score >= best:  # ties go to the larger batch (sizes grow)
                best, best_window = score, (start, start + size)
    return best_window


class _Lane:
    """The queue of one priority class: calls waiting to be tokenized, then their items waiting for a batch."""

    def __init__(self) -> None:
        self.inbox: collections.deque[_Call] = collections.deque()
        self.calls: collections.deque[_Call] = collections.deque()


class MicroBatcher:
    def __init__(
        self,
        name: str,
        task: EncoderTask,
        settings: BatchingSettings,
        wake: Callable[[], None],
        activity: Callable[[bool], None] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.name = name
        self.cache = cache  # embedding models: recent vectors, looked up before a call queues
        self.task = task
        self.settings = settings
        self.metrics = ModelMetrics()
        self._wake_bulk = wake  # wakes the model's worker thread, which calls step()
        self._interactive_wake = NativeEvent()
        self._lock = allocate_lock()
        self._lanes = (_Lane(), _Lane())  # indexed by INTERACTIVE, BULK
        self._queued_inputs = 0  # accepted inputs not yet in a batch (the queue_limit counts these)
        self._running = 0  # batches being computed (both lanes)
        # Told True when work arrives and False when none is queued or running, under the lock so reports keep
        # their order (the placement governor gives busy models cores of their own).
        self._activity = activity or (lambda busy: None)
        self._closed: BaseException | None = None
        self._interactive_started = False
        self._last_stats_log = monotonic()
        self._batches_since_log = 0

    def start_interactive_lane(self, prepare_thread: Callable[[], None]) -> None:
        """Start the interactive lane's thread; `prepare_thread` pins it to the model's cores."""
        self._interactive_started = True
        start_thread(lambda: self._interactive_loop(prepare_thread))

    # caller side: any thread or greenlet
    def submit(
        self,
        inputs: Sequence[Any],
        input_type: str,
        priority: int,
        options: Any = None,
        batching: BatchingSettings | None = None,
    ) -> Completion[CallOutcome]:
        """Queue a call. `options` are the call's own result settings; `batching` the caller's batching and
        queue settings, which the model then uses (they need no other loaded instance)."""
        if batching is not None:
            self.settings = batching  # one reference swap: the lanes read it whole
        cache_mb = getattr(options, "cache_mb", None)
        if self.cache is not None and cache_mb is not None and cache_mb << 20 != self.cache.budget_bytes:
            self.cache.resize(cache_mb << 20)
        completion: Completion[CallOutcome] = Completion()
        limit = self.settings.queue_limit
        if limit and len(inputs) > limit:  # a call this size is refused whatever the cache or the queue holds
            raise BadRequestError(
                f"this call has {len(inputs)} inputs but model {self.name} queues at most {limit} (queue_limit); "
                "split the call or raise queue_limit"
            )
        call = self._new_call(inputs, input_type, priority, completion, options)
        if not call.inputs:  # empty, or every input found in the cache: no queue at all
            completion.set_result(CallOutcome(self.task.finish(call.results, options), call.tokens))
            return completion
        inputs = call.inputs
        if priority == INTERACTIVE and not self._interactive_started:
            priority = BULK  # no interactive lane (e.g. driven step by step): the worker serves everything
        with self._lock:
            if self._closed is not None:
                raise self._closed
            queued = self._queued_inputs
            if limit and queued > 0 and queued + len(inputs) > limit:
                self.metrics.rejected += 1
                raise ModelBusyError(
                    f"model {self.name} is busy: {queued} inputs are queued and this call adds {len(inputs)}, "
                    f"over its queue_limit of {limit}; retry later or raise queue_limit"
                )
            self._queued_inputs += len(inputs)
            self._activity(True)
            call.priority = priority
            self._lanes[priority].inbox.append(call)
        if priority == INTERACTIVE:
            self._interactive_wake.set()
        else:
            self._wake_bulk()
        return completion

    def _new_call(
        self, inputs: Sequence[Any], input_type: str, priority: int, completion: Completion[CallOutcome], options: Any
    ) -> _Call:
        """The call with its cache hits filled in; `inputs` keeps only what must be computed."""
        call = _Call([], input_type, priority, completion, monotonic(), options, [None] * len(inputs))
        cache = self.cache if self.cache is not None and self.cache.budget_bytes > 0 else None
        for position, text in enumerate(inputs):
            key = self.task.cache_key(text, input_type, options) if cache is not None else None
            found = cache.get(key) if cache is not None and key is not None else None
            if found is not None:
                call.results[position] = found[0]
                call.tokens += found[1]
                continue
            call.inputs.append(text)
            call.positions.append(position)
            if key is not None:
                call.cache_keys[position] = key
        return call

    @property
    def queued_inputs(self) -> int:
        return self._queued_inputs

    def snapshot(self) -> dict[str, object]:
        """Statistics of both lanes and of the embedding cache (safe from any thread)."""
        with self._lock:
            snapshot = self.metrics.snapshot()
        if self.cache is not None:
            snapshot["cache"] = self.cache.snapshot()
        return snapshot

    # the bulk lane: the model's worker thread
    def step(self) -> float | None:
        lane = self._lanes[BULK]
        self._intake(lane)
        now = monotonic()
        self._maybe_log_stats(now)
        if not lane.calls:
            self._report_if_idle()
            return None
        delay = self._window_delay(lane, now)
        if delay > 0:
            return delay
        self._run(self._form_batch(lane))
        return 0.0

    def close(self, error: BaseException) -> None:
        with self._lock:
            self._closed = error
            calls = [call for lane in self._lanes for call in (*lane.inbox, *lane.calls)]
            for lane in self._lanes:
                lane.inbox.clear()
                lane.calls.clear()
            self._queued_inputs = 0
        self._interactive_wake.set()
        for call in calls:
            call.completion.set_error(error)

    # the interactive lane
    def _interactive_loop(self, prepare_thread: Callable[[], None]) -> None:
        prepare_thread()
        try:
            os.setpriority(os.PRIO_PROCESS, native_thread_id(), INTERACTIVE_NICE)
        except OSError:
            log.debug("model %s: interactive lane runs at normal priority (no CAP_SYS_NICE)", self.name)
        lane = self._lanes[INTERACTIVE]
        while self._closed is None:
            self._interactive_wake.clear()
            self._intake(lane)
            if lane.calls:
                batch = self._form_batch(lane)
                if batch:
                    self._run(batch)
                continue
            self._report_if_idle()
            self._interactive_wake.wait(None)

    def _intake(self, lane: _Lane) -> None:
        while True:
            with self._lock:
                if not lane.inbox:
                    return
                call = lane.inbox.popleft()
            started = monotonic()
            try:
                tokens = self.task.tokenize(call.inputs, call.input_type, call.options)
            except Exception as error:
                self._fail_call(call, error if isinstance(error, EngineError) else BadRequestError(str(error)))
                continue
            with self._lock:
                self.metrics.record_stage("tokenize", monotonic() - started)
                call.tokenized = True
                call.remaining = len(tokens)
                call.pending.extend(_Item(call, call.positions[j], t) for j, t in enumerate(tokens))
                if self._closed is None:
                    lane.calls.append(call)
                    continue
            call.completion.set_error(self._closed)

    def _window_delay(self, lane: _Lane, now: float) -> float:
        window = self.settings.batch_window_ms / 1000.0
        if window <= 0 or self.settings.max_batch_size <= 1:
            return 0.0
        with self._lock:
            if sum(len(call.pending) for call in lane.calls) >= self.settings.max_batch_size:
                return 0.0
            waited = now - min(call.submitted for call in lane.calls)
        return max(0.0, window - waited)

    def _form_batch(self, lane: _Lane) -> list[_Item]:
        max_size = self.settings.max_batch_size
        # Look at many candidates (length sorting needs choice), taken round-robin over the waiting calls so a
        # huge call is interleaved with the others; the first candidate is the turn that is served now.
        lookahead = 1 if max_size <= 1 else min(8 * max_size, 512)
        with self._lock:
            candidates: list[_Item] = []
            while len(candidates) < lookahead and any(call.pending for call in lane.calls):
                for call in lane.calls:
                    if call.pending and len(candidates) < lookahead:
                        candidates.append(call.pending.popleft())
            if not candidates:
                return []
            ordered = sorted(candidates, key=lambda item: len(item.tokens))
            anchor = next(i for i, item in enumerate(ordered) if item is candidates[0])
            start, end = select_batch(
                [len(item.tokens) for item in ordered], anchor, max_size, self.settings.max_batch_tokens
            )
            chosen = ordered[start:end]
            chosen_ids = {id(item) for item in chosen}
            for item in reversed(candidates):  # put back the rest, each call's items in their original order
                if id(item) not in chosen_ids:
                    item.call.pending.appendleft(item)
            lane.calls.rotate(-1)
            for call in [call for call in lane.calls if not call.pending]:
                lane.calls.remove(call)
            self._queued_inputs -= len(chosen)
            self._running += 1
        return chosen

    def _report_if_idle(self) -> None:
        with self._lock:
            if self._queued_inputs == 0 and self._running == 0:
                self._activity(False)

    def _run(self, batch: list[_Item]) -> None:
        try:
            self._compute(batch)
        finally:
            with self._lock:
                self._running -= 1

    def _compute(self, batch: list[_Item]) -> None:
        started = monotonic()
        try:
            outputs = self.task.run([item.tokens for item in batch])
        except Exception as error:
            with self._lock:
                self.metrics.failed_batches += 1
            log.warning("model %s: a batch of %d failed: %s", self.name, len(batch), type(error).__name__)
            failure = InferenceError(f"ONNX Runtime failed on a batch of {len(batch)} input(s): {error}")
            for call in {id(item.call): item.call for item in batch}.values():
                self._fail_call(call, failure)
            return
        inferred = monotonic()
        finished: list[_Call] = []
        for item, output in zip(batch, outputs):
            call = item.call
            if call.failed:
                continue
            call.results[item.index] = output
            call.tokens += len(item.tokens)
            key = call.cache_keys.get(item.index)
            if key is not None and self.cache is not None:
                self.cache.put(key, output, len(item.tokens))
            call.remaining -= 1
            if call.remaining == 0:
                finished.append(call)
        for call in finished:
            try:
                results = self.task.finish(call.results, call.options)
            except Exception as error:  # numpy on a malformed output: this call fails, the others go on
                call.completion.set_error(InferenceError(f"post-processing failed: {type(error).__name__}: {error}"))
                continue
            call.completion.set_result(CallOutcome(results, call.tokens))
        with self._lock:
            for item in batch:
                self.metrics.record_stage("queue_wait", started - item.call.submitted)
            self.metrics.record_stage("inference", inferred - started)
            real = sum(len(item.tokens) for item in batch)
            self.metrics.record_batch(len(batch), real, len(batch) * max(len(item.tokens) for item in batch))
            self.metrics.record_stage("post", monotonic() - inferred)
            self._batches_since_log += 1

    def _fail_call(self, call: _Call, error: BaseException) -> None:
        with self._lock:
            call.failed = True
            self._queued_inputs -= len(call.pending) if call.tokenized else len(call.inputs)
            call.pending.clear()
            lane = self._lanes[call.priority]
            if call in lane.calls:
                lane.calls.remove(call)
        call.completion.set_error(error)

    def _maybe_log_stats(self, now: float) -> None:
        if self._batches_since_log and now - self._last_stats_log >= STATS_LOG_INTERVAL_S:
            with self._lock:
                snapshot = self.metrics.snapshot()
                self._last_stats_log = now
                self._batches_since_log = 0
            log.info(format_snapshot(self.name, snapshot))
