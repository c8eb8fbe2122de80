"""Loaded models: one instance per (model files, profile), loaded lazily on its own worker, shared by every
request, unloaded after its idle time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psutil

from engine.channel import Completion
from engine.errors import BadRequestError, EngineClosedError, ModelBusyError
from engine.memory import BUDGET_ENV, MAX_MODELS_ENV, MemoryBudget
from engine.model_files import ModelFiles, directory_fingerprint, find_model_files
from engine.model_info import ModelInfo
from engine.native import NativeEvent, allocate_lock, monotonic, start_thread
from engine.placement import CoreAllocator, CpuTopology, Placement
from engine.settings.profile import RuntimeProfile, instance_settings
from engine.worker import Scheduler, Worker

log = logging.getLogger(__name__)
S = TypeVar("S", bound=Scheduler)
# Model types whose work is interactive (a chat's decode steps, rerank): they take the remainder of an uneven
# split of the cores. Embedding models serve both queries and documents and count as bulk.
INTERACTIVE_TYPES = ("llm", "rerank")


@dataclass(eq=False)
class LoadedModel(Generic[S]):
    """A handle on one loaded instance: its files, placement, worker and `scheduler` (the model family's
    server: a MicroBatcher for encoders, a GenerationScheduler for chat models)."""

    key: tuple[Any, ...]
    profile: RuntimeProfile
    files: ModelFiles
    placement: Placement
    worker: Worker
    scheduler: S
    info: ModelInfo
    last_used: float = 0.0
    active_calls: int = 0  # calls in progress; guarded by the registry's lock
    idle_unload_seconds: float = 0.0  # the latest call's idle_unload_minutes (a per-call setting)


# A builder runs on the model's worker thread (already pinned) and returns its scheduler and description:
# builder(profile, files, placement, wake, name).
Builder = Callable[[RuntimeProfile, ModelFiles, Placement, Callable[[], None], str], tuple[Scheduler, ModelInfo]]


@dataclass(eq=False)
class _Entry:
    placement: Placement
    worker: Worker
    model: LoadedModel[Any] | None = None
    error: BaseException | None = None
    waiters: list[Completion[LoadedModel[Any]]] = field(default_factory=list)


class ModelRegistry:
    def __init__(
        self,
        builders: dict[str, Builder],
        allocator: CoreAllocator | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.builders = builders
        self.allocator = allocator or CoreAllocator(CpuTopology.read())
        self.budget = budget or MemoryBudget.from_environment()
        self._lock = allocate_lock()
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._reaper_wake = NativeEvent()
        self._closed = False
        # The reaper starts with the registry (created on first use, never at import), not with the first
        # model: a thread created from a model's worker would inherit that model's CPU pinning.
        start_thread(self._reap_forever)

    def get(self, profile: RuntimeProfile) -> LoadedModel[Any]:
        """The loaded model for this profile, loading it on first use (waits, greenlet-friendly)."""
        # Keyed on what changes the loaded session only: per-call settings apply to each call.
        # An hf: model's directory is filled by its first load: keyed on the repository (in the profile) instead.
        fingerprint = directory_fingerprint(profile.model_dir) if profile.hub is None else ()
        key = (instance_settings(profile), fingerprint)
        waiter: Completion[LoadedModel[Any]] = Completion()
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is shut down")
            entry = self._entries.get(key)
            if entry is not None and entry.model is not None:
                entry.model.last_used = monotonic()
                return entry.model
            if entry is None:
                entry = self._start_load(key, profile)
            entry.waiters.append(waiter)
        return waiter.result()

    def _start_load(self, key: tuple[Any, ...], profile: RuntimeProfile) -> _Entry:
        name = self._unique_name(f"{profile.model_dir.name}[{profile.model_type}]")
        interactive = profile.model_type in INTERACTIVE_TYPES
        placement = self.allocator.place(profile.placement, profile.session, name, interactive)
        worker = Worker(name, placement, profile.blas_threads, lambda: self._forget(key, entry, "crashed"))
        entry = _Entry(placement, worker)
        builder = self.builders[profile.model_type]
        try:
            entry.worker.start(lambda: self._build(builder, entry, key, profile))
        except Exception as error:  # no thread: nothing would ever answer this entry's waiters
            self.allocator.release(placement)
            log.error("model %s: its worker thread could not start: %s", name, error)
            raise EngineClosedError(f"model {name} could not start a worker thread ({error}); retry later") from None
        self._entries[key] = entry
        return entry

    def _forget(self, key: tuple[Any, ...], entry: _Entry, why: str) -> None:
        """A worker died: drop its entry (the next call loads the model again) and give its cores back."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        self.allocator.release(entry.placement)
        log.warning("model %s forgotten: its worker %s", entry.worker.name, why)

    def _make_room(self, loading: _Entry, file_bytes: int) -> None:
        """Unload idle models, least recently used first, until the new one fits the memory budget and the
        instance cap; ModelBusyError when it cannot. Idle models are chosen and removed under the lock that
        counts calls, so no call can start on one being unloaded."""
        budget = self.budget
        needed = budget.expected_bytes(file_bytes)
        projected = budget.resident_bytes() + needed
        evicted: list[LoadedModel[Any]] = []
        with self._lock:
            loaded = [e.model for e in self._entries.values() if e.model is not None and e is not loading]
            idle = sorted((m for m in loaded if m.active_calls == 0), key=lambda m: m.last_used)
            count = len(loaded)
            while (projected > budget.budget_bytes or count >= budget.max_models) and idle:
                victim = idle.pop(0)
                del self._entries[victim.key]
                evicted.append(victim)
                projected -= self._footprint(victim)
                count -= 1
            fits = projected <= budget.budget_bytes and count < budget.max_models
        for victim in evicted:
            self._stop(victim, "to make room for a model being loaded (memory budget or instance cap)")
        if not fits:
            mib = 2**20
            raise ModelBusyError(
                f"model {loading.worker.name} cannot be loaded now: it needs about {needed // mib} MB and the "
                f"plugin's memory budget is {budget.budget_bytes // mib} MB ({budget.resident_bytes() // mib} MB in "
                f"use), at most {budget.max_models} models loaded, and the {count} loaded models are all in use; "
                f"retry later, or the administrator raises {BUDGET_ENV} / {MAX_MODELS_ENV}"
            )

    def _footprint(self, model: LoadedModel[Any]) -> int:
        """What unloading a model gives back: the memory its load added, at least what its file predicts."""
        measured = int(float(model.info.details.get("rss_delta_mb", 0)) * 1e6)
        return max(measured, self.budget.expected_bytes(model.files.size_bytes))

    def _unique_name(self, base: str) -> str:
        """Instances of one directory with other settings get #2, #3, … (statistics and placement key on it)."""
        taken = {entry.worker.name for entry in self._entries.values()}
        number = 1
        name = base
        while name in taken:
            number += 1
            name = f"{base}#{number}"
        return name

    def _build(self, builder: Builder, entry: _Entry, key: tuple[Any, ...], profile: RuntimeProfile) -> Scheduler:
        started = monotonic()
        rss_before = psutil.Process().memory_info().rss
        try:
            entry.worker.prepare_thread()
            if profile.hub is not None:  # hf:REPO_ID (admin opt-in): download on this worker, progress in the log
                from engine.hub import fetch_for_profile

                fetch_for_profile(profile)
            files = find_model_files(profile.model_dir, profile.model_file)  # reads graphs: on the worker
            self._make_room(entry, files.size_bytes)
            scheduler, info = builder(profile, files, entry.placement, entry.worker.wake, entry.worker.name)
        except BaseException as error:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
                waiters, entry.waiters = entry.waiters, []
            self.allocator.release(entry.placement)
            for waiter in waiters:
                waiter.set_error(error)
            raise
        info.load_seconds = monotonic() - started
        # Process-wide, so approximate when models load concurrently; still the best cheap signal of a model's cost.
        info.details["rss_delta_mb"] = round((psutil.Process().memory_info().rss - rss_before) / 1e6, 1)
        model = LoadedModel(
            key,
            profile,
            files,
            entry.placement,
            entry.worker,
            scheduler,
            info,
            monotonic(),
            0,
            profile.idle_unload_seconds,
        )
        log.info("loaded model %s: %s", info.name, info.describe())
        with self._lock:
            entry.model = model
            waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            waiter.set_result(model)
        return scheduler

    @contextmanager
    def use(self, profile: RuntimeProfile, kind: type[S]) -> Iterator[LoadedModel[S]]:
        """The loaded model (loading it if needed), counted in use for the whole block so idle unload cannot
        stop it under a call; every call of every kind goes through here. `kind` is the scheduler class the
        caller needs (BadRequestError when the profile's model is of another kind)."""
        model = self._begin(profile)
        try:
            if not isinstance(model.scheduler, kind):
                raise BadRequestError(f"{model.info.name} is a {model.profile.model_type} model: it cannot serve this")
            yield model
        finally:
            with self._lock:
                model.active_calls -= 1
                model.last_used = monotonic()

    def _begin(self, profile: RuntimeProfile) -> LoadedModel[Any]:
        """Find or load the model and count a call, retrying if it was unloaded between the two."""
        for _ in range(3):
            model = self.get(profile)
            with self._lock:
                entry = self._entries.get(model.key)
                if entry is not None and entry.model is model:
                    model.active_calls += 1
                    model.last_used = monotonic()
                    model.idle_unload_seconds = profile.idle_unload_seconds
                    return model
        raise EngineClosedError("the model was unloaded while the call started; retry")

    def loaded(self) -> list[LoadedModel[Any]]:
        with self._lock:
            return [entry.model for entry in self._entries.values() if entry.model is not None]

    def unload(self, model: LoadedModel[Any], reason: str) -> None:
        with self._lock:
            entry = self._entries.get(model.key)
            if entry is None or entry.model is not model:
                return
            del self._entries[model.key]
        self._stop(model, reason)

    def _stop(self, model: LoadedModel[Any], reason: str) -> None:
        log.info("unloading model %s (%s)", model.info.name, reason)
        model.worker.stop()
        model.worker.stopped.wait(30.0)
        self.allocator.release(model.placement)

    def unload_idle(self, now: float | None = None) -> None:
        """Unload models unused for their idle time. The check and the removal happen under the lock that
        counts calls, so a call cannot start on a model being unloaded."""
        now = monotonic() if now is None else now
        idle: list[LoadedModel[Any]] = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                model = entry.model
                limit = model.idle_unload_seconds if model else 0
                if model and limit > 0 and model.active_calls == 0 and now - model.last_used >= limit:
                    del self._entries[key]
                    idle.append(model)
        for model in idle:
            self._stop(model, f"idle for {now - model.last_used:.0f}s")

    def close(self, wait_seconds: float = 30.0, reason: str = "was unloaded") -> None:
        """Unload every model: each worker fails what it still holds (`model … {reason}`) after its current
        step; waits at most `wait_seconds` for them all (a run in progress cannot be interrupted)."""
        with self._lock:
            self._closed = True
            models = [entry.model for entry in self._entries.values() if entry.model is not None]
            self._entries.clear()
        for model in models:
            log.info("unloading model %s (shutdown)", model.info.name)
            model.worker.stop(reason)
        deadline = monotonic() + wait_seconds
        for model in models:
            model.worker.stopped.wait(max(0.0, deadline - monotonic()))
            self.allocator.release(model.placement)
        self._reaper_wake.set()

    def _reap_forever(self) -> None:
        while not self._closed:
            self._reaper_wake.wait(15.0)
            if self._closed:
                return
            try:
                self.unload_idle()
            except Exception:
                log.exception("idle unload failed")
