"""A model whose worker cannot start or dies is forgotten: its callers get an error (never a hang), its cores
go back, and the next call loads it again."""

from __future__ import annotations

import pytest

from engine import worker as worker_module
from engine.api import Engine
from engine.errors import EngineClosedError
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS, settings


def embedder_profile():  # type: ignore[no-untyped-def]
    return parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)


def test_a_worker_thread_that_cannot_start_is_an_error_and_the_next_call_loads(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = worker_module.start_thread

    def no_threads(target):  # type: ignore[no-untyped-def]
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(worker_module, "start_thread", no_threads)
    with pytest.raises(EngineClosedError, match="could not start a worker thread"):
        engine.embed(embedder_profile(), ["hello"])
    assert engine.registry.loaded() == [] and engine.placement()["models"] == {}
    monkeypatch.setattr(worker_module, "start_thread", real_start)
    assert engine.embed(embedder_profile(), ["hello"]).vectors


def test_a_worker_that_dies_is_forgotten_and_reloaded(engine: Engine) -> None:
    profile = embedder_profile()
    first = engine.registry.get(profile)
    batcher = first.scheduler

    def crash() -> float | None:
        raise MemoryError("simulated crash inside the worker loop")

    batcher.step = crash  # type: ignore[method-assign]
    first.worker.wake()
    assert first.worker.stopped.wait(5)
    with pytest.raises(EngineClosedError):
        batcher.submit(["late"], "document", 1).result()
    assert engine.registry.loaded() == []
    second = engine.registry.get(profile)
    assert second is not first and engine.embed(profile, ["reloaded"]).vectors
