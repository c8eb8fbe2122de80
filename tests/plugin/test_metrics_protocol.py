"""The real plugin process with ONNX_LOCAL_METRICS_ADDR set: it serves metrics for Prometheus from its own OS
threads while it answers the daemon's requests, and writes nothing but protocol records to stdout."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import FIXTURES
from tests.engine.test_prometheus import Samples, scrape, value
from tests.plugin.daemon import REPO, PluginProcess, error_of, model_request, streams

EMBEDDER = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}
RERANKER = {"model_path": "tiny-cross-encoder", "intra_op_threads": "1", "cpu_affinity": "none"}
LLM = {"model_path": "tiny-qwen2-decoder", "intra_op_threads": "1", "cpu_affinity": "none"}
ANNOUNCED = re.compile(r"metrics for Prometheus at (http://127\.0\.0\.1:\d+/metrics)")



def start(address: str) -> PluginProcess:
    process = PluginProcess(
        sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(FIXTURES), "ONNX_LOCAL_METRICS_ADDR": address}
    )
    process.start()
    return process


def log_line(process: PluginProcess, pattern: re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in list(process.logs):
            if found := pattern.search(record["message"]):
                return found
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern.pattern}: {process.logs}")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[PluginProcess, str]]:
    process = start("127.0.0.1:0")  # port 0: any free port, named in the plugin log
    try:
        yield process, log_line(process, ANNOUNCED).group(1)
    finally:
        process.close()
    assert process.stray == [], f"non-protocol lines on stdout: {process.stray[:5]}"


def test_the_endpoint_answers_before_any_model_is_loaded(served: tuple[PluginProcess, str]) -> None:
    _, url = served
    samples = scrape(url)
    assert value(samples, "onnx_local_loaded_models") == 0
    assert value(samples, "process_resident_memory_bytes") > 10e6


def test_scrapes_while_the_plugin_answers_requests(served: tuple[PluginProcess, str]) -> None:
    process, url = served
    scrapes: list[Samples] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def scrape_on() -> None:
        while not stop.is_set():
            try:
                scrapes.append(scrape(url))
            except BaseException as error:  # reported below
                failures.append(error)
            time.sleep(0.02)

    scraper = threading.Thread(target=scrape_on, daemon=True)
    heartbeats = len(process.heartbeats)
    scraper.start()
    try:
        for i in range(3):
            texts = [f"text {i} for the metrics test", f"another text {i}"]
            records = process.request(
                model_request(
                    "invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=texts, input_type="document"
                )
            )
            assert len(streams(records)[0]["embeddings"]) == 2
        limited = {**EMBEDDER, "queue_limit": "1"}
        records = process.request(
            model_request(
                "invoke_text_embedding", "text-embedding", "emb", limited, texts=["a", "b"], input_type="document"
            )
        )
        assert error_of(records)["error_type"] == "InvokeBadRequestError"
        records = process.request(
            model_request(
                "invoke_rerank",
                "rerank",
                "rr",
                RERANKER,
                query="red apple",
                docs=["apple", "car"],
                score_threshold=0.0,
                top_n=0,
            )
        )
        assert len(streams(records)[0]["docs"]) == 2
        for _ in range(2):
            records = process.request(
                model_request(
                    "invoke_llm",
                    "llm",
                    "tiny",
                    LLM,
                    prompt_messages=[{"role": "user", "content": "hello"}],
                    model_parameters={"temperature": 0.0, "max_tokens": 4},
                    stop=None,
                    tools=None,
                    stream=True,
                )
            )
            assert streams(records)[-1]["delta"]["finish_reason"] in ("stop", "length")
        time.sleep(0.3)
    finally:
        stop.set()
        scraper.join(15)
    assert failures == []
    assert len(scrapes) >= 3
    assert len(process.heartbeats) > heartbeats  # the daemon's heartbeats went on meanwhile

    samples = scrape(url)
    embedder, reranker, decoder = (
        "tiny-bert-embedder[text-embedding]",
        "tiny-cross-encoder[rerank]",
        "tiny-qwen2-decoder[llm]",
    )
    assert value(samples, "onnx_local_loaded_models") == 3
    assert value(samples, "onnx_local_requests_total", model=embedder) == 4
    assert value(samples, "onnx_local_requests_total", model=reranker) == 1
    assert value(samples, "onnx_local_requests_total", model=decoder) == 2
    bad = value(
        samples,
        "onnx_local_request_errors_total",
        model=embedder,
        error="BadRequestError",
        dify_error="InvokeBadRequestError",
    )
    assert bad == 1
    assert value(samples, "onnx_local_batch_size_sum", model=embedder) == 6
    for stage in ("queue_wait", "tokenize", "inference", "post"):
        assert value(samples, "onnx_local_stage_seconds_count", model=reranker, stage=stage) > 0
    assert value(samples, "onnx_local_time_to_first_token_seconds_count", model=decoder) == 2
    assert value(samples, "onnx_local_completion_tokens_sum", model=decoder) <= 8
    assert value(samples, "onnx_local_model_threads", model=decoder) == 1
    assert value(samples, "process_resident_memory_bytes") > 10e6


def test_an_invalid_address_is_logged_and_the_plugin_serves_on() -> None:
    process = start("everywhere:ninety")
    try:
        found = log_line(process, re.compile(r"metrics for Prometheus are off: ONNX_LOCAL_METRICS_ADDR: .*not valid"))
        assert [r["level"] for r in process.logs if r["message"] == found.string] == ["ERROR"]
        records = process.request(
            model_request(
                "invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["still here"], input_type="document"
            )
        )
        assert len(streams(records)[0]["embeddings"]) == 1
    finally:
        process.close()
    assert process.stray == []
