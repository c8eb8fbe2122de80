"""The worker: a dedicated OS thread per loaded model, pinned to the model's cores, running the model's
scheduler (encoders add a second, interactive thread of their own: engine/encoders/batching.py).

The thread pins itself before it creates the ONNX Runtime session, so every pool thread ORT creates inherits
the model's cores as well (Linux threads inherit their creator's CPU mask).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from engine.channel import Completion
from engine.errors import EngineClosedError
from engine.native import NativeEvent, native_thread_id, start_thread
from engine.placement import Placement, join_placement

log = logging.getLogger(__name__)
T = TypeVar("T")


@runtime_checkable
class Scheduler(Protocol):
    def step(self) -> float | None:
        """Do one unit of work on the worker thread. 0: did work, call again; >0: call again after that many
        seconds (e.g. a batch window) or when woken; None: idle until woken."""

    def close(self, error: BaseException) -> None:
        """Fail everything still queued (called once, on the worker thread, when the model unloads)."""

    def snapshot(self) -> dict[str, object]:
        """Statistics of the model (safe from any thread)."""


class Worker:
    """Runs `build()` (the model load) and then its scheduler's steps on a dedicated, pinned OS thread."""

    def __init__(
        self, name: str, placement: Placement, blas_threads: int = 1, on_crash: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self._on_crash = on_crash or (lambda: None)  # the registry forgets a model whose worker died
        self.placement = placement
        self.blas_threads = blas_threads
        self.thread_ids: list[int] = []  # kernel tids of the worker thread (for diagnostics and tests)
        self._wake = NativeEvent()
        self._jobs: collections.deque[tuple[Callable[[], Any], Completion[Any]]] = collections.deque()
        self._stopping = False
        self._stop_reason = "was unloaded"
        self.stopped = NativeEvent()

    def start(self, build: Callable[[], Scheduler]) -> None:
        """Start the thread. `build` loads the model on it and reports success or failure to its waiters."""
        start_thread(lambda: self._run(build))

    def wake(self) -> None:
        self._wake.set()

    def call(self, job: Callable[[], T]) -> Completion[T]:
        """Run a short job on the worker thread between scheduler steps (token counting, statistics)."""
        done: Completion[T] = Completion()
        if self._stopping:
            done.set_error(EngineClosedError(f"model {self.name} is unloading"))
            return done
        self._jobs.append((job, done))
        self._wake.set()
        return done

    def stop(self, reason: str = "was unloaded") -> None:
        """Stop after the current step; what the scheduler still holds fails with `model … {reason}`."""
        self._stop_reason = reason
        self._stopping = True
        self._wake.set()

    def _run(self, build: Callable[[], Scheduler]) -> None:
        self.thread_ids.append(native_thread_id())
        try:
            scheduler = build()
        except BaseException:  # build() has reported the error to the callers waiting for the load
            self.stopped.set()
            return
        try:
            self._loop(scheduler)
        except BaseException:
            log.exception("worker of model %s crashed; the next call loads it again", self.name)
            self._stopping = True
            self._stop_reason = "stopped: its worker failed (the next call loads it again)"
            self._on_crash()
        finally:
            closed = EngineClosedError(f"model {self.name} {self._stop_reason}")
            scheduler.close(closed)
            while self._jobs:
                self._jobs.popleft()[1].set_error(closed)
            self.stopped.set()

    def _loop(self, scheduler: Scheduler) -> None:
        while not self._stopping:
            self._wake.clear()
            while self._jobs:
                job, done = self._jobs.popleft()
                try:
                    done.set_result(job())
                except Exception as error:
                    done.set_error(error)
            delay = scheduler.step()
            if delay is None:
                self._wake.wait(None)
            elif delay > 0:
                self._wake.wait(delay)

    def prepare_thread(self) -> None:
        """Pin the calling worker thread and limit BLAS threads; the first thing a build does."""
        join_placement(self.placement)
        self._limit_blas()

    def _limit_blas(self) -> None:
        # numpy's BLAS pool is process-wide (threadpoolctl cannot scope it to a thread); the engine's own
        # numpy work (pooling, sampling) is light, so the limit mainly stops BLAS from oversubscribing cores.
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.blas_threads, user_api="blas")
