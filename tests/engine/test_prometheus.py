"""The metrics endpoint: embedding, rerank and generation calls through the engine, scraped over HTTP and parsed
with prometheus_client's own parser."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.api import Engine
from engine.errors import BadRequestError, SettingError
from engine.generation.events import GenerationParams
from engine.generation.sampling import SamplingParams
from engine.prometheus import METRICS_ENV, MetricsServer, parse_address, start_from_environment, start_metrics_server
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage
from tests.conftest import REPO, ROOTS, settings

EMBEDDER = "tiny-bert-embedder[text-embedding]"
RERANKER = "tiny-cross-encoder[rerank]"
DECODER = "tiny-qwen2-decoder[llm]"


def profile(path: str, model_type: str, **values: str):  # type: ignore[no-untyped-def]
    return parse_profile(settings(path, **values), model_type, roots=ROOTS)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: MetricsServer | str) -> Samples:
    """Every sample of the endpoint (a server, or its URL), parsed with prometheus_client's own parser."""
    url = server if isinstance(server, str) else server.url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for (n, have), v in samples.items() if n == name and set(labels.items()) <= have]
    assert len(found) == 1, f"{name} {labels}: {len(found)} samples"
    return found[0]


def buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    found = sorted(
        (float(dict(have)["le"]), v)
        for (n, have), v in samples.items()
        if n == f"{name}_bucket" and set(labels.items()) <= have
    )
    assert found, f"no buckets for {name} {labels}"
    return found


def check_histogram(samples: Samples, name: str, **labels: str) -> float:
    """Cumulative buckets that end in +Inf with every sample; returns the count."""
    counts = [count for _, count in buckets(samples, name, **labels)]
    assert counts == sorted(counts)
    total = value(samples, f"{name}_count", **labels)
    assert counts[-1] == total
    return total


@pytest.fixture()
def served(engine: Engine) -> Iterator[tuple[Engine, MetricsServer]]:
    server = start_metrics_server("127.0.0.1:0", lambda: engine, lambda error: f"Dify{error.__name__}")
    yield engine, server
    server.close()


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(" 0.0.0.0:9464 ") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("9464", ":9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "::1:9464"):
        with pytest.raises(SettingError, match=METRICS_ENV):
            parse_address(bad)


def test_the_endpoint_shows_what_the_calls_did(served: tuple[Engine, MetricsServer]) -> None:
    engine, server = served
    before = scrape(server)
    assert value(before, "onnx_local_loaded_models") == 0
    assert value(before, "process_resident_memory_bytes") > 10e6

    embedder = profile("tiny-bert-embedder", "text-embedding")
    texts = [f"document {i} about metrics" for i in range(6)]
    engine.embed(embedder, texts[:2])
    engine.embed(embedder, texts[2:])
    engine.embed(embedder, texts[:3])  # every text again: from the embedding cache
    engine.embed(embedder, ["a query"], "query")
    with pytest.raises(BadRequestError):
        engine.embed(embedder, ["x"], "neither")
    reranker = profile("tiny-cross-encoder", "rerank")
    for _ in range(2):
        engine.rerank(reranker, "red apple", ["an apple", "a red car", "green pear"])
    decoder = profile("tiny-qwen2-decoder", "llm")
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=5)
    for _ in range(3):
        events = list(engine.generate(decoder, [ChatMessage("user", "hello")], params))
        assert events
    with pytest.raises(BadRequestError):
        engine.generate(decoder, [ChatMessage("user", "hello")], GenerationParams(max_tokens=0))

    samples = scrape(server)
    # requests and errors by class (the classifier given to the server names the Dify class)
    assert value(samples, "onnx_local_requests_total", model=EMBEDDER, type="text-embedding") == 5
    assert value(samples, "onnx_local_requests_total", model=RERANKER, type="rerank") == 2
    assert value(samples, "onnx_local_requests_total", model=DECODER, type="llm") == 4
    for model in (EMBEDDER, DECODER):
        errors = value(samples, "onnx_local_request_errors_total", model=model, error="BadRequestError")
        assert errors == 1
        assert value(samples, "onnx_local_request_errors_total", model=model, dify_error="DifyBadRequestError") == 1
    assert not [key for key in samples if key[0] == "onnx_local_request_errors_total" and ("model", RERANKER) in key[1]]
    assert value(samples, "onnx_local_rate_limited_total") == 0

    # loaded instances, cores, threads
    assert value(samples, "onnx_local_loaded_models") == 3
    for model, kind in ((EMBEDDER, "text-embedding"), (RERANKER, "rerank"), (DECODER, "llm")):
        assert value(samples, "onnx_local_model_info", model=model, type=kind) == 1
        assert value(samples, "onnx_local_model_threads", model=model) == 1  # intra_op_threads=1
        assert value(samples, "onnx_local_model_cores", model=model) == 0  # cpu_affinity=none: unpinned
        assert value(samples, "onnx_local_model_file_bytes", model=model) > 100_000
        assert value(samples, "onnx_local_calls_in_progress", model=model) == 0
    assert value(samples, "onnx_local_process_threads") >= 4  # the workers, lanes and the server's own thread

    # encoder stages, batch shapes and padding
    for model in (EMBEDDER, RERANKER):
        for stage in ("queue_wait", "tokenize", "inference", "post"):
            assert check_histogram(samples, "onnx_local_stage_seconds", model=model, stage=stage) > 0
        assert value(samples, "onnx_local_queued_inputs", model=model) == 0
        check_histogram(samples, "onnx_local_batch_padding_ratio", model=model)
        assert value(samples, "onnx_local_batch_padding_ratio_sum", model=model) >= value(
            samples, "onnx_local_batch_padding_ratio_count", model=model
        )  # padded tokens are never fewer than real ones
        check_histogram(samples, "onnx_local_batch_padded_tokens", model=model)
        assert value(samples, "onnx_local_failed_batches_total", model=model) == 0
    check_histogram(samples, "onnx_local_batch_size", model=EMBEDDER)
    assert value(samples, "onnx_local_batch_size_sum", model=EMBEDDER) == 7  # 6 documents + 1 query computed
    assert value(samples, "onnx_local_batch_size_sum", model=RERANKER) == 6  # 2 calls x 3 pairs
    # the embedding cache
    assert value(samples, "onnx_local_embedding_cache_hits_total", model=EMBEDDER) == 3
    assert value(samples, "onnx_local_embedding_cache_misses_total", model=EMBEDDER) == 7
    assert value(samples, "onnx_local_embedding_cache_saved_tokens_total", model=EMBEDDER) > 0
    assert value(samples, "onnx_local_embedding_cache_bytes", model=EMBEDDER) > 0

    # generation: queue, time to first token, decode speed, sizes, endings
    assert value(samples, "onnx_local_waiting_requests", model=DECODER) == 0
    assert value(samples, "onnx_local_active_sequences", model=DECODER) == 0
    assert check_histogram(samples, "onnx_local_time_to_first_token_seconds", model=DECODER) == 3
    assert 0 < value(samples, "onnx_local_time_to_first_token_seconds_sum", model=DECODER) < 30
    assert check_histogram(samples, "onnx_local_decode_tokens_per_second", model=DECODER) >= 1
    assert value(samples, "onnx_local_decode_tokens_per_second_sum", model=DECODER) > 0
    assert check_histogram(samples, "onnx_local_completion_tokens", model=DECODER) == 3
    assert value(samples, "onnx_local_completion_tokens_sum", model=DECODER) <= 15
    check_histogram(samples, "onnx_local_prompt_tokens", model=DECODER)
    finished = [v for (n, labels), v in samples.items() if n == "onnx_local_generations_finished_total"]
    assert sum(finished) == 3
    # work not redone: the prefix cache looked up every generation; drafts are counted (their number varies)
    assert value(samples, "onnx_local_prefix_cache_lookups_total", model=DECODER) == 3
    assert value(samples, "onnx_local_prefix_cache_reused_tokens_total", model=DECODER) >= 0
    assert value(samples, "onnx_local_speculative_proposed_tokens_total", model=DECODER) >= value(
        samples, "onnx_local_speculative_accepted_tokens_total", model=DECODER
    )

    check_dashboard({name for name, _ in samples})


def check_dashboard(served: set[str]) -> None:
    """docs/grafana-dashboard.json queries only series the endpoint serves, in balanced expressions."""
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert exprs and all(panel["targets"] for panel in panels)
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    named = {name for expr in exprs for name in re.findall(r"\b(?:onnx_local|process)_[a-z_]+", expr)}
    assert named - served == set()
    for needed in (
        "onnx_local_requests_total",
        "onnx_local_stage_seconds_bucket",
        "onnx_local_queued_inputs",
        "onnx_local_time_to_first_token_seconds_bucket",
        "onnx_local_embedding_cache_hits_total",
        "onnx_local_model_threads",
        "process_resident_memory_bytes",
    ):
        assert needed in named


def test_queue_depth_while_the_worker_is_held(served: tuple[Engine, MetricsServer]) -> None:
    engine, server = served
    embedder = profile("tiny-bert-embedder", "text-embedding")
    decoder = profile("tiny-qwen2-decoder", "llm")
    engine.embed(embedder, ["load"])
    streams = [engine.generate(decoder, [ChatMessage("user", "hi")], GenerationParams(max_tokens=2))]
    list(streams.pop())
    models = {model.info.name: model for model in engine.registry.loaded()}
    gates = {name: threading.Event() for name in models}
    for name, model in models.items():
        model.worker.call(gates[name].wait)  # the worker thread waits: nothing queued is served meanwhile
    callers = [
        threading.Thread(target=engine.embed, args=(embedder, [f"held text {c} {i}" for i in range(5)]))
        for c in range(3)
    ]
    for caller in callers:
        caller.start()
    streams = [
        engine.generate(decoder, [ChatMessage("user", f"q{i}")], GenerationParams(max_tokens=2)) for i in range(2)
    ]
    try:
        samples: Samples = {}
        for _ in range(200):
            samples = scrape(server)
            if value(samples, "onnx_local_queued_inputs", model=EMBEDDER) == 15:
                break
        assert value(samples, "onnx_local_queued_inputs", model=EMBEDDER) == 15
        assert value(samples, "onnx_local_calls_in_progress", model=EMBEDDER) == 3
        assert value(samples, "onnx_local_waiting_requests", model=DECODER) == 2
        assert value(samples, "onnx_local_active_sequences", model=DECODER) == 0
        assert value(samples, "onnx_local_calls_in_progress", model=DECODER) == 2
    finally:
        for gate in gates.values():
            gate.set()
        for caller in callers:
            caller.join(30)
        for stream in streams:
            list(stream)
    samples = scrape(server)
    assert value(samples, "onnx_local_queued_inputs", model=EMBEDDER) == 0
    assert value(samples, "onnx_local_requests_total", model=EMBEDDER) == 4
    assert check_histogram(samples, "onnx_local_time_to_first_token_seconds", model=DECODER) == 3


def test_counts_survive_an_unload_and_histograms_start_again(served: tuple[Engine, MetricsServer]) -> None:
    engine, server = served
    embedder = profile("tiny-bert-embedder", "text-embedding")
    engine.embed(embedder, ["one", "two"])
    for model in engine.registry.loaded():
        engine.registry.unload(model, "test")
    samples = scrape(server)
    assert value(samples, "onnx_local_loaded_models") == 0
    assert value(samples, "onnx_local_requests_total", model=EMBEDDER) == 1
    assert not [key for key in samples if key[0] == "onnx_local_batch_size_count"]
    engine.embed(embedder, ["three"])
    samples = scrape(server)
    assert value(samples, "onnx_local_requests_total", model=EMBEDDER) == 2
    assert value(samples, "onnx_local_batch_size_count", model=EMBEDDER) == 1


def test_gzip_and_openmetrics_when_asked(served: tuple[Engine, MetricsServer]) -> None:
    _, server = served
    request = urllib.request.Request(
        server.url, headers={"Accept-Encoding": "gzip", "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")


def test_stalled_clients_do_not_hold_up_a_scrape(served: tuple[Engine, MetricsServer]) -> None:
    _, server = served
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        started = time.monotonic()
        assert value(scrape(server), "onnx_local_loaded_models") == 0
        assert time.monotonic() - started < 5  # other threads serve while the silent connections wait
    finally:
        for connection in silent:
            connection.close()


def test_the_environment_decides(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert start_from_environment(lambda: None) is None
    monkeypatch.setenv(METRICS_ENV, "everywhere")
    with caplog.at_level(logging.ERROR, "engine.prometheus"):
        assert start_from_environment(lambda: None) is None
    assert f"metrics for Prometheus are off: {METRICS_ENV}: 'everywhere' is not valid" in caplog.text
    caplog.clear()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        monkeypatch.setenv(METRICS_ENV, f"127.0.0.1:{taken.getsockname()[1]}")
        with caplog.at_level(logging.ERROR, "engine.prometheus"):
            assert start_from_environment(lambda: None) is None
        assert "cannot be served" in caplog.text and "Address already in use" in caplog.text
    finally:
        taken.close()
    monkeypatch.setenv(METRICS_ENV, "127.0.0.1:0")
    server = start_from_environment(lambda: None)
    assert server is not None
    try:
        samples = scrape(server)
        assert value(samples, "onnx_local_loaded_models") == 0  # no engine yet: none is created for a scrape
    finally:
        server.close()
