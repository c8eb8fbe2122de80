"""Encoder micro-batcher: the scheduler of an embedding or rerank model's worker.

Calls from any number of callers enter one queue. The worker tokenizes them, then forms micro-batches:
interactive calls (queries, rerank) before bulk documents, texts of different calls interleaved so one huge
call cannot starve the others, batches of similar length (little padding) within a size and padded-token
budget, waiting at most a short window for a batch to fill. Each call's results come back in its order.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.channel import Completion
from engine.encoders.runner import Tokens
from engine.errors import BadRequestError, EngineError, InferenceError, ModelBusyError
from engine.metrics import ModelMetrics, format_snapshot
from engine.native import allocate_lock, monotonic
from engine.profile import BatchingSettings

log = logging.getLogger(__name__)

INTERACTIVE, BULK = 0, 1
# A bulk call that has waited this long gets every other batch even while interactive work keeps coming.
MAX_BULK_WAIT_S = 1.0
STATS_LOG_INTERVAL_S = 60.0


class EncoderTask(Protocol):
    def tokenize(self, inputs: Sequence[Any], input_type: str) -> list[Tokens]: ...

    def run(self, batch: Sequence[Tokens]) -> list[Any]: ...


@dataclass(frozen=True)
class CallOutcome:
    results: list[Any]  # one per input, in the caller's order
    tokens: int  # tokens actually processed (after truncation)


@dataclass(eq=False)
class _Call:
    inputs: Sequence[Any]
    input_type: str
    priority: int
    completion: Completion[CallOutcome]
    submitted: float
    results: list[Any] = field(default_factory=list)
    pending: collections.deque[_Item] = field(default_factory=collections.deque)
    remaining: int = 0
    tokens: int = 0
    failed: bool = False


@dataclass(eq=False)
class _Item:
    call: _Call
    index: int
    tokens: Tokens


class MicroBatcher:
    def __init__(self, name: str, task: EncoderTask, settings: BatchingSettings, wake: Any) -> None:
        self.name = name
        self.task = task
        self.settings = settings
        self.metrics = ModelMetrics()
        self._wake = wake  # callable that wakes the worker thread
        self._lock = allocate_lock()
        self._inbox: collections.deque[_Call] = collections.deque()
        self._queues: tuple[collections.deque[_Call], collections.deque[_Call]] = (
            collections.deque(),
            collections.deque(),
        )
        self._queued_inputs = 0  # accepted inputs not yet in a batch (the queue_limit counts these)
        self._closed: BaseException | None = None
        self._last_class = BULK
        self._last_stats_log = monotonic()
        self._batches_since_log = 0

    # caller side: any thread or greenlet
    def submit(self, inputs: Sequence[Any], input_type: str, priority: int) -> Completion[CallOutcome]:
        completion: Completion[CallOutcome] = Completion()
        if not inputs:
            completion.set_result(CallOutcome([], 0))
            return completion
        limit = self.settings.queue_limit
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
            self._inbox.append(_Call(list(inputs), input_type, priority, completion, monotonic()))
        self._wake()
        return completion

    @property
    def queued_inputs(self) -> int:
        return self._queued_inputs

    # worker side
    def step(self) -> float | None:
        self._intake()
        now = monotonic()
        self._maybe_log_stats(now)
        klass = self._choose_class(now)
        if klass is None:
            return None
        queue = self._queues[klass]
        # Only bulk work waits for company: an interactive call (one query, or a rerank that brings all its
        # pairs at once) gains nothing from waiting.
        delay = self._window_delay(queue, now) if klass == BULK else 0.0
        if delay > 0:
            return delay
        batch = self._form_batch(queue)
        self._last_class = klass
        self._run(batch)
        return 0.0

    def close(self, error: BaseException) -> None:
        with self._lock:
            self._closed = error
            calls = list(self._inbox) + [c for q in self._queues for c in q]
            self._inbox.clear()
            for queue in self._queues:
                queue.clear()
            self._queued_inputs = 0
        for call in calls:
            call.completion.set_error(error)

    def _intake(self) -> None:
        while self._inbox:
            with self._lock:
                call = self._inbox.popleft()
            started = monotonic()
            try:
                tokens = self.task.tokenize(call.inputs, call.input_type)
            except Exception as error:
                self._fail_call(call, error if isinstance(error, EngineError) else BadRequestError(str(error)))
                continue
            self.metrics.record_stage("tokenize", monotonic() - started)
            call.results = [None] * len(tokens)
            call.remaining = len(tokens)
            call.pending.extend(_Item(call, index, t) for index, t in enumerate(tokens))
            self._queues[call.priority].append(call)

    def _choose_class(self, now: float) -> int | None:
        interactive, bulk = self._queues
        if not interactive and not bulk:
            return None
        if not bulk:
            return INTERACTIVE
        if not interactive:
            return BULK
        bulk_overdue = now - min(call.submitted for call in bulk) > MAX_BULK_WAIT_S
        return BULK if bulk_overdue and self._last_class == INTERACTIVE else INTERACTIVE

    def _window_delay(self, queue: collections.deque[_Call], now: float) -> float:
        window = self.settings.batch_window_ms / 1000.0
        if window <= 0 or self.settings.max_batch_size <= 1:
            return 0.0
        if sum(len(call.pending) for call in queue) >= self.settings.max_batch_size:
            return 0.0
        waited = now - min(call.submitted for call in queue)
        return max(0.0, window - waited)

    def _form_batch(self, queue: collections.deque[_Call]) -> list[_Item]:
        max_size = self.settings.max_batch_size
        # Round-robin over calls: each call contributes in turn, so a huge call is interleaved with others.
        lookahead = max_size if max_size <= 1 else min(8 * max_size, 512)
        candidates: list[_Item] = []
        while len(candidates) < lookahead and any(call.pending for call in queue):
            for call in queue:
                if call.pending and len(candidates) < lookahead:
                    candidates.append(call.pending.popleft())
        chosen = self._select_similar_lengths(candidates)
        chosen_ids = {id(item) for item in chosen}
        for item in reversed(candidates):  # put back the rest, each call's items in their original order
            if id(item) not in chosen_ids:
                item.call.pending.appendleft(item)
        queue.rotate(-1)
        for call in [call for call in queue if not call.pending]:
            queue.remove(call)
        with self._lock:
            self._queued_inputs -= len(chosen)
        return chosen

    def _select_similar_lengths(self, candidates: list[_Item]) -> list[_Item]:
        """The first candidate (the longest-waiting turn) plus its neighbours in length order: of the windows of
        the length-sorted candidates that contain it, the largest that fits max_batch_size and max_batch_tokens
        (batch size × longest sequence), and of those the one with the least padding."""
        max_size, budget = self.settings.max_batch_size, self.settings.max_batch_tokens
        ordered = sorted(candidates, key=lambda item: len(item.tokens))
        lengths = [len(item.tokens) for item in ordered]
        anchor = next(i for i, item in enumerate(ordered) if item is candidates[0])
        for size in range(min(max_size, len(ordered)), 1, -1):
            best: tuple[int, int] | None = None  # (padding, start)
            for start in range(max(0, anchor - size + 1), min(anchor, len(ordered) - size) + 1):
                window = lengths[start : start + size]
                longest = window[-1]
                if size * longest > budget:
                    continue
                padding = size * longest - sum(window)
                if best is None or padding < best[0]:
                    best = (padding, start)
            if best is not None:
                return ordered[best[1] : best[1] + size]
        return [ordered[anchor]]

    def _run(self, batch: list[_Item]) -> None:
        started = monotonic()
        for item in batch:
            self.metrics.record_stage("queue_wait", started - item.call.submitted)
        try:
            outputs = self.task.run([item.tokens for item in batch])
        except Exception as error:
            self.metrics.failed_batches += 1
            log.warning("model %s: a batch of %d failed: %s", self.name, len(batch), type(error).__name__)
            failure = InferenceError(f"ONNX Runtime failed on a batch of {len(batch)} input(s): {error}")
            for call in {id(item.call): item.call for item in batch}.values():
                self._fail_call(call, failure)
            return
        inferred = monotonic()
        self.metrics.record_stage("inference", inferred - started)
        real = sum(len(item.tokens) for item in batch)
        self.metrics.record_batch(len(batch), real, len(batch) * max(len(item.tokens) for item in batch))
        for item, output in zip(batch, outputs):
            call = item.call
            if call.failed:
                continue
            call.results[item.index] = output
            call.tokens += len(item.tokens)
            call.remaining -= 1
            if call.remaining == 0:
                call.completion.set_result(CallOutcome(call.results, call.tokens))
        self.metrics.record_stage("post", monotonic() - inferred)
        self._batches_since_log += 1

    def _fail_call(self, call: _Call, error: BaseException) -> None:
        call.failed = True
        with self._lock:
            self._queued_inputs -= len(call.pending) if call.results else len(call.inputs)
        call.pending.clear()
        for queue in self._queues:
            if call in queue:
                queue.remove(call)
        call.completion.set_error(error)

    def _maybe_log_stats(self, now: float) -> None:
        if self._batches_since_log and now - self._last_stats_log >= STATS_LOG_INTERVAL_S:
            log.info(format_snapshot(self.name, self.metrics.snapshot()))
            self._last_stats_log = now
            self._batches_since_log = 0
