"""A shared process has a memory budget and an instance cap: idle models make room, least recently used first;
when the loaded models are all busy, a load is refused with a busy error naming the figures."""

from __future__ import annotations

import pytest

from engine.api import BUILDERS, Engine
from engine.encoders.batching import MicroBatcher
from engine.errors import ModelBusyError, SettingError
from engine.memory import BUDGET_ENV, MAX_MODELS_ENV, MemoryBudget
from engine.registry import ModelRegistry
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS, settings


def profiles():  # type: ignore[no-untyped-def]
    return (
        parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS),
        parse_profile(settings("tiny-cross-encoder"), "rerank", roots=ROOTS),
        parse_profile(settings("tiny-cross-encoder-2label"), "rerank", roots=ROOTS),
    )


def engine_with(budget: MemoryBudget) -> Engine:
    return Engine(ModelRegistry(BUILDERS, budget=budget))


def test_instance_cap_unloads_the_least_recently_used_idle_model() -> None:
    engine = engine_with(MemoryBudget(1 << 50, max_models=2))
    embedder, reranker, other = profiles()
    try:
        engine.embed(embedder, ["a"])
        engine.rerank(reranker, "q", ["d"])
        engine.embed(embedder, ["used again: the reranker is now the least recently used"])
        engine.rerank(other, "q", ["d"])
        names = sorted(model.info.name for model in engine.registry.loaded())
        assert names == ["tiny-bert-embedder[text-embedding]", "tiny-cross-encoder-2label[rerank]"]
    finally:
        engine.close()


def test_a_load_that_cannot_fit_beside_busy_models_is_a_busy_error() -> None:
    engine = engine_with(MemoryBudget(1 << 50, max_models=1))
    embedder, reranker, _ = profiles()
    try:
        busy = pytest.raises(ModelBusyError, match=f"at most 1 models loaded.*{MAX_MODELS_ENV}")
        with engine.registry.use(embedder, MicroBatcher), busy:
            engine.rerank(reranker, "q", ["d"])
        assert [model.info.name for model in engine.registry.loaded()] == ["tiny-bert-embedder[text-embedding]"]
        assert engine.rerank(reranker, "q", ["d"])  # idle now: it makes room
    finally:
        engine.close()


def test_memory_budget_evicts_idle_models_to_fit() -> None:
    expected = MemoryBudget.expected_bytes(1)
    budget = MemoryBudget(MemoryBudget.resident_bytes() + int(1.5 * expected) + (40 << 20), max_models=8)
    engine = engine_with(budget)
    embedder, reranker, _ = profiles()
    try:
        engine.embed(embedder, ["a"])
        engine.registry.budget = MemoryBudget(MemoryBudget.resident_bytes() + expected // 2, max_models=8)
        engine.rerank(reranker, "q", ["d"])  # does not fit beside the embedder: the idle embedder goes
        assert [model.info.name for model in engine.registry.loaded()] == ["tiny-cross-encoder[rerank]"]
    finally:
        engine.close()


def test_budget_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUDGET_ENV, "512")
    monkeypatch.setenv(MAX_MODELS_ENV, "3")
    assert MemoryBudget.from_environment() == MemoryBudget(512 << 20, 3)
    monkeypatch.delenv(BUDGET_ENV)
    monkeypatch.delenv(MAX_MODELS_ENV)
    default = MemoryBudget.from_environment()
    assert default.budget_bytes > 0 and default.max_models == 8
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(SettingError, match=BUDGET_ENV):
        MemoryBudget.from_environment()
