"""The encoder micro-batcher on real tiny models: order, reassembly, priorities, backpressure, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from engine.api import Engine
from engine.encoders.batching import BULK, INTERACTIVE, MicroBatcher, select_batch
from engine.encoders.runner import Tokens
from engine.errors import BadRequestError, EngineClosedError, InferenceError, ModelBusyError
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS, settings

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def texts(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for _ in range(count)]


def embedder(engine: Engine, **values: str):
    profile = parse_profile(settings("tiny-bert-embedder", **values), "text-embedding", roots=ROOTS)
    return profile, engine.registry.get(profile).scheduler


def one_by_one(engine: Engine, inputs: list[str]) -> np.ndarray:
    profile = parse_profile(settings("tiny-bert-embedder", max_batch_size="1"), "text-embedding", roots=ROOTS)
    return np.array([engine.embed(profile, [text]).vectors[0] for text in inputs])


def test_results_keep_the_callers_order_across_batches(engine: Engine) -> None:
    inputs = texts(50)
    profile, batcher = embedder(engine, max_batch_size="8", max_batch_tokens="4096")
    batched = np.array(engine.embed(profile, inputs).vectors)
    np.testing.assert_allclose(batched, one_by_one(engine, inputs), atol=1e-5)
    assert batcher.metrics.batch_size.count >= 7  # 50 texts in batches of at most 8
    assert batcher.metrics.batch_size.maximum <= 8


def test_token_budget_bounds_padded_batch(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="64", max_batch_tokens="256")
    engine.embed(profile, texts(40, seed=1))
    assert batcher.metrics.padded_tokens.maximum <= 256


def test_length_sorting_keeps_padding_low(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="8", batch_window_ms="0")
    inputs = texts(64, seed=2)
    engine.embed(profile, inputs)
    lengths = [len(tokens) for tokens in batcher.task.tokenize(inputs, "document")]
    arrival_batches = [lengths[i : i + 8] for i in range(0, len(lengths), 8)]
    arrival_padding = sum(len(b) * max(b) for b in arrival_batches) / sum(lengths)
    assert batcher.metrics.padding_ratio.summary()["mean"] < min(1.25, arrival_padding)


def test_concurrent_callers_are_batched_together_and_each_gets_its_own(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="16", batch_window_ms="20")
    calls = [texts(4, seed=10 + i) for i in range(12)]
    results: dict[int, list[list[float]]] = {}

    def call(index: int) -> None:
        results[index] = engine.embed(profile, calls[index]).vectors

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, inputs in enumerate(calls):
        np.testing.assert_allclose(results[index], one_by_one(engine, inputs), atol=1e-5)
    assert batcher.metrics.batch_size.maximum > 4  # texts of different callers shared a batch


def test_full_queue_refuses_quickly_and_accepted_calls_complete(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="1", queue_limit="100")
    first = batcher.submit(texts(80), "document", BULK)
    second = batcher.submit(texts(20, seed=3), "document", BULK)
    started = time.monotonic()
    with pytest.raises(ModelBusyError, match="busy.*queue_limit of 100"):
        engine.embed(profile, texts(10))
    assert time.monotonic() - started < 1.0
    assert len(first.result().results) == 80 and len(second.result().results) == 20
    assert batcher.metrics.rejected == 1
    assert engine.embed(profile, texts(10)).vectors  # accepted again once drained


class FailOnMarker:
    """Wraps the real embedding task; a batch containing the marker text's tokens fails like ORT would."""

    def __init__(self, task, marker: Tokens) -> None:
        self.task = task
        self.marker = marker

    def tokenize(self, inputs: Sequence[str], input_type: str, options=None) -> list[Tokens]:  # type: ignore[no-untyped-def]
        return self.task.tokenize(inputs, input_type, options)

    def run(self, batch: Sequence[Tokens]) -> list[np.ndarray]:
        if any(tokens == self.marker for tokens in batch):
            raise RuntimeError("injected failure")
        return self.task.run(batch)

    def finish(self, results, options=None):  # type: ignore[no-untyped-def]
        return self.task.finish(results, options)

    def cache_key(self, text, input_type, options=None):  # type: ignore[no-untyped-def]
        return None


def test_failure_is_isolated_to_its_batch_and_the_worker_goes_on(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="4", batch_window_ms="50")
    marker_text = "zeta zeta zeta poison"
    real_task = batcher.task
    batcher.task = FailOnMarker(real_task, real_task.tokenize([marker_text], "document")[0])
    try:
        bad = batcher.submit([marker_text, "alpha", "beta"], "query", INTERACTIVE)
        good = batcher.submit(texts(9, seed=4), "document", BULK)
        with pytest.raises(InferenceError, match="injected failure"):
            bad.result()
        assert len(good.result().results) == 9
    finally:
        batcher.task = real_task
    assert batcher.metrics.failed_batches == 1
    assert batcher.queued_inputs == 0
    assert len(engine.embed(profile, texts(3)).vectors) == 3


def test_queries_go_before_queued_documents(engine: Engine) -> None:
    _, batcher = embedder(engine, max_batch_size="2", batch_window_ms="0")
    order: list[str] = []
    bulk = batcher.submit(texts(200, seed=5), "document", BULK)
    time.sleep(0.01)
    query = batcher.submit(["where is the query"], "query", INTERACTIVE)

    def wait(name: str, completion) -> None:
        completion.result()
        order.append(name)

    waiters = [threading.Thread(target=wait, args=(n, c)) for n, c in (("bulk", bulk), ("query", query))]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    assert order == ["query", "bulk"]


def test_a_huge_call_does_not_starve_a_later_one(engine: Engine) -> None:
    _, batcher = embedder(engine, max_batch_size="2", batch_window_ms="0")
    huge = batcher.submit(texts(300, seed=6), "document", BULK)
    time.sleep(0.01)
    small = batcher.submit(texts(4, seed=7), "document", BULK)
    small.result()
    assert not huge.done  # the small call finished while the huge one was still being served
    huge.result()


def test_unloading_fails_queued_calls_instead_of_leaving_them_waiting(engine: Engine) -> None:
    profile, batcher = embedder(engine, max_batch_size="1", batch_window_ms="0")
    model = engine.registry.get(profile)
    queued = batcher.submit(texts(400, seed=8), "document", BULK)
    engine.registry.unload(model, "test")
    with pytest.raises(EngineClosedError):
        queued.result()
    with pytest.raises(EngineClosedError):
        batcher.submit(["late"], "document", BULK)
    assert engine.embed(profile, ["a new instance serves"]).vectors


def test_idle_unload_skips_models_with_calls_in_progress(engine: Engine) -> None:
    profile, _ = embedder(engine, idle_unload_minutes="0.001")
    with engine.registry.use(profile, MicroBatcher) as model:
        engine.registry.unload_idle(now=model.last_used + 60)
        assert engine.registry.loaded() == [model]
    engine.registry.unload_idle(now=model.last_used + 60)
    assert engine.registry.loaded() == []


class TestSelectBatch:
    def test_window_contains_the_anchor_and_respects_the_budget(self) -> None:
        lengths = [3, 4, 5, 30, 31, 200, 210, 256, 256, 256]
        for anchor in range(len(lengths)):
            start, end = select_batch(lengths, anchor, max_size=4, budget=512)
            assert start <= anchor < end and end - start <= 4
            assert end - start == 1 or (end - start) * lengths[end - 1] <= 512

    def test_short_texts_fill_the_batch_long_ones_stay_tight(self) -> None:
        assert select_batch([5, 5, 6, 6, 7, 7, 8, 8], 0, max_size=8, budget=4096) == (0, 8)
        # a 256-token text is not padded out with short neighbours' worth of waste
        start, end = select_batch([20, 22, 24, 256], 3, max_size=4, budget=4096)
        assert (start, end) == (3, 4)


def test_a_single_call_over_the_queue_limit_is_a_bad_request_even_when_idle(engine: Engine) -> None:
    profile, batcher = embedder(engine, queue_limit="10")
    with pytest.raises(BadRequestError, match="11 inputs.*at most 10 \\(queue_limit\\)"):
        engine.embed(profile, texts(11))
    assert batcher.queued_inputs == 0 and engine.embed(profile, texts(10)).vectors


def test_a_call_whose_response_cannot_cross_the_daemon_line_is_refused(engine: Engine) -> None:
    profile, _ = embedder(engine, queue_limit="0")
    with pytest.raises(BadRequestError, match="most one response can carry"):
        engine.embed(profile, ["x"] * 20_000)
