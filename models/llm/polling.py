"""Long non-streamed generations by polling (ModelFeature.POLLING): Dify starts a job and checks it until done,
so a generation may outlast the daemon's and Dify's request timeouts.

A job is a greenlet that reads the engine's stream of one generation into a record; checks read the record.
The generation itself runs on the model's worker as any other (its limits: max_tokens, max_generation_seconds).
Jobs live in this process only; a finished job is dropped once its result is collected, or after
`FINISHED_JOB_TTL_S` if nobody comes for it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gevent

from engine.errors import BadRequestError
from engine.generation.events import Finished, GenerationEvent, TextDelta, ToolCallDelta
from engine.text.messages import ToolCall

# How long a finished job's result waits for its check, and how often Dify is asked to check.
FINISHED_JOB_TTL_S = 900.0
CHECK_AFTER_S = 1
# Most jobs kept at once (running or waiting for their check): beyond, a new start is refused as a bad request.
MAX_JOBS = 256


@dataclass
class PollingJob:
    texts: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finished: Finished | None = None
    error: BaseException | None = None
    ended_at: float | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.ended_at is not None

    def read(self, events: Iterator[GenerationEvent]) -> None:
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    self.texts.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    self.calls.append(event.call)
                elif isinstance(event, Finished):
                    self.finished = event
        except Exception as error:  # reported by the next check, as the call's failure
            self.error = error
        finally:
            self.ended_at = time.monotonic()


class PollingJobs:
    """The open jobs of this plugin process (greenlets only: no lock needed)."""

    def __init__(self) -> None:
        self._jobs: dict[str, PollingJob] = {}

    def start(self, events: Iterator[GenerationEvent]) -> str:
        self._expire()
        if len(self._jobs) >= MAX_JOBS:
            close = getattr(events, "close", None)
            if close is not None:
                close()
            raise BadRequestError(f"{MAX_JOBS} polling jobs are open; check them before starting more")
        job_id = secrets.token_hex(16)
        job = PollingJob()
        self._jobs[job_id] = job
        gevent.spawn(job.read, events)
        return job_id

    def get(self, job_id: object) -> PollingJob:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise BadRequestError("unknown polling job (finished and collected, expired, or from another process)")
        return job

    def collect(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.ended_at is not None and now - job.ended_at > FINISHED_JOB_TTL_S:
                del self._jobs[job_id]
