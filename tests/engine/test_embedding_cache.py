"""Repeated texts skip the queue: vectors come from the model's cache, identical to computed ones."""

from __future__ import annotations

import numpy as np

from engine.api import Engine
from engine.encoders.embedding_cache import EmbeddingCache
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS, settings


def profile(**values: str):  # type: ignore[no-untyped-def]
    return parse_profile(settings("tiny-bert-embedder", **values), "text-embedding", roots=ROOTS)


def batches(engine: Engine) -> int:
    (snapshot,) = engine.stats().values()
    return int(snapshot["batch_size"]["count"])  # type: ignore[index]


def test_repeated_texts_are_served_from_the_cache_in_the_callers_order(engine: Engine) -> None:
    texts = [f"document number {i} about caching" for i in range(12)]
    first = engine.embed(profile(), texts)
    computed = batches(engine)
    mixed = [texts[3], "a new text", texts[0], texts[11]]
    second = engine.embed(profile(), mixed)
    assert batches(engine) == computed + 1  # only the new text was computed
    np.testing.assert_array_equal(second.vectors[0], first.vectors[3])
    np.testing.assert_array_equal(second.vectors[2], first.vectors[0])
    again = engine.embed(profile(), texts)
    assert batches(engine) == computed + 1  # every text was a hit: no queue at all
    assert again.vectors == first.vectors and again.tokens == first.tokens
    (snapshot,) = engine.stats().values()
    cache = snapshot["cache"]
    assert cache["hits"] == 15 and cache["misses"] == 13 and cache["saved_tokens"] > 0  # type: ignore[index]


def test_cached_vectors_follow_each_calls_normalization_and_prefix(engine: Engine) -> None:
    text = ["the same sentence"]
    normalized = np.asarray(engine.embed(profile(), text).vectors[0])
    raw = np.asarray(engine.embed(profile(normalize="false"), text).vectors[0])
    np.testing.assert_allclose(raw / np.linalg.norm(raw), normalized, atol=1e-6)
    prefixed = engine.embed(profile(document_prefix="passage: "), text).vectors[0]
    assert not np.allclose(prefixed, normalized)  # another key: computed, not taken from the cache


def test_zero_turns_the_cache_off(engine: Engine) -> None:
    off = profile(embedding_cache_mb="0")
    engine.embed(off, ["one text"])
    computed = batches(engine)
    engine.embed(off, ["one text"])
    assert batches(engine) == computed + 1


def test_the_cache_stays_within_its_budget_least_recently_used_out() -> None:
    cache = EmbeddingCache(budget_bytes=3 * (EmbeddingCache._size(("document", "x" * 10), np.zeros(8, np.float32))))
    for index in range(5):
        cache.put(("document", f"text {index:5d}"), np.full(8, index, np.float32), 3)
    assert cache.get(("document", "text     0")) is None and cache.get(("document", "text     4")) is not None
    assert cache.snapshot()["bytes"] <= cache.budget_bytes  # type: ignore[operator]
