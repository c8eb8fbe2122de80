"""The real plugin process over the daemon's stdio protocol: text embedding, rerank, validation, schemas."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from tests.conftest import FIXTURES
from tests.plugin.daemon import REPO, PluginProcess, error_of, model_request, streams

EMBEDDER = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}
RERANKER = {"model_path": "tiny-cross-encoder", "intra_op_threads": "1", "cpu_affinity": "none"}


def embed(plugin: PluginProcess, texts: list[str], input_type: str = "document", **kwargs) -> dict:
    records = plugin.request(
        model_request("invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=texts, input_type=input_type),
        **kwargs,
    )
    (payload,) = streams(records)
    return payload


def test_manifest_first_then_heartbeats(plugin: PluginProcess) -> None:
    assert plugin.manifest is not None and plugin.manifest["name"] == "onnx_local"
    assert plugin.heartbeats


def test_validate_provider_credentials(plugin: PluginProcess) -> None:
    records = plugin.request(
        {
            "type": "model",
            "user_id": "u",
            "action": "validate_provider_credentials",
            "provider": "onnx_local",
            "credentials": {},
        }
    )
    assert streams(records) == [{"result": True, "credentials": {}}]


def test_validate_model_credentials_good(plugin: PluginProcess) -> None:
    records = plugin.request(model_request("validate_model_credentials", "text-embedding", "emb", EMBEDDER))
    assert streams(records)[0]["result"] is True


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        ({"model_path": "does-not-exist"}, "model_path"),
        ({"model_path": "/etc"}, "model_path"),
        ({"model_path": "../.."}, "model_path"),
        ({**EMBEDDER, "intra_op_threads": "0"}, "intra_op_threads"),
        ({**EMBEDDER, "cpu_affinity": "4095"}, "cpu_affinity"),
        ({**EMBEDDER, "pooling": "median"}, "pooling"),
        ({**EMBEDDER, "context_size": "999999"}, "context_size"),
    ],
)
def test_validate_model_credentials_bad(plugin: PluginProcess, credentials: dict, field: str) -> None:
    records = plugin.request(model_request("validate_model_credentials", "text-embedding", "emb", credentials))
    error = error_of(records)
    assert error["error_type"] == "CredentialsValidateFailedError"
    assert error["message"].startswith(f"{field}:"), error["message"]


def test_model_schema(plugin: PluginProcess) -> None:
    records = plugin.request(model_request("get_ai_model_schemas", "text-embedding", "emb", EMBEDDER))
    schema = streams(records)[0]["model_schema"]
    assert schema["model"] == "emb" and schema["fetch_from"] == "customizable-model"
    assert schema["model_properties"]["context_size"] == 128  # sentence_bert_config max_seq_length
    assert 1 <= schema["model_properties"]["max_chunks"] <= 64


def test_embedding_document_and_query(plugin: PluginProcess) -> None:
    texts = ["first text", "second, longer text about ONNX Runtime on a CPU", "émoji 🎉 and 中文"]
    document = embed(plugin, texts)
    assert document["model"] == "emb"
    vectors = np.array(document["embeddings"])
    assert vectors.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert document["usage"]["tokens"] > 0 and document["usage"]["total_tokens"] == document["usage"]["tokens"]
    query = embed(plugin, texts, "query")
    np.testing.assert_allclose(query["embeddings"], document["embeddings"], atol=1e-6)  # no prefixes set


def test_num_tokens(plugin: PluginProcess) -> None:
    records = plugin.request(
        model_request("get_text_embedding_num_tokens", "text-embedding", "emb", EMBEDDER, texts=["a b c d e f g", "a"])
    )
    counts = streams(records)[0]["num_tokens"]
    assert len(counts) == 2 and counts[0] > counts[1] >= 3


def test_daemon_shaped_request(plugin: PluginProcess) -> None:
    data = model_request("invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["x"], input_type="query")
    records = plugin.request(data, full_envelope=True)
    assert len(streams(records)[0]["embeddings"]) == 1


def test_rerank(plugin: PluginProcess) -> None:
    docs = ["green pear", "red apple pie", "apple", "a long unrelated sentence about taxes"]
    records = plugin.request(
        model_request(
            "invoke_rerank", "rerank", "rr", RERANKER, query="red apple", docs=docs, score_threshold=0.0, top_n=0
        )
    )
    result = streams(records)[0]
    assert result["model"] == "rr"
    ranked = result["docs"]
    assert sorted(d["index"] for d in ranked) == [0, 1, 2, 3]  # zeros mean unset: nothing dropped
    assert [d["score"] for d in ranked] == sorted((d["score"] for d in ranked), reverse=True)
    assert all(d["text"] == docs[d["index"]] and 0.0 <= d["score"] <= 1.0 for d in ranked)
    top = streams(
        plugin.request(
            model_request(
                "invoke_rerank", "rerank", "rr", RERANKER, query="red apple", docs=docs, score_threshold=0.0, top_n=2
            )
        )
    )[0]["docs"]
    assert top == ranked[:2]


def test_unsupported_model_type_is_an_error_not_a_crash(plugin: PluginProcess) -> None:
    records = plugin.request(model_request("invoke_tts", "tts", "t", {}, content_text="hi", voice="v", tenant_id="t"))
    assert [r["type"] for r in records][-1] == "end"
    assert embed(plugin, ["still serving"])["embeddings"]


def test_heartbeats_continue_and_cheap_requests_overtake_a_long_call(plugin: PluginProcess) -> None:
    # its own model instance: batching off, the full 512 positions per text
    slow = {**EMBEDDER, "max_batch_size": "1", "normalize": "false", "context_size": "512"}
    plugin.request(model_request("validate_model_credentials", "text-embedding", "slow", slow))
    # Size the long call from a measured rate so it computes for ~4 s, capped so that its response (≈ 20 bytes
    # per float) stays under the daemon's 5 MiB line limit.
    probe = [f"probe {i} " + "lorem ipsum dolor sit amet " * 100 for i in range(100)]
    probe_started = time.monotonic()
    plugin.request(
        model_request("invoke_text_embedding", "text-embedding", "slow", slow, texts=probe, input_type="document")
    )
    rate = len(probe) / max(1e-3, time.monotonic() - probe_started)
    long_texts = [f"text {i} " + "lorem ipsum dolor sit amet " * 100 for i in range(int(min(3000, rate * 4)))]
    started = time.monotonic()
    long_id = plugin.send(
        model_request("invoke_text_embedding", "text-embedding", "slow", slow, texts=long_texts, input_type="document")
    )
    time.sleep(0.3)
    cheap = plugin.request(
        model_request("get_text_embedding_num_tokens", "text-embedding", "emb", EMBEDDER, texts=["quick"])
    )
    cheap_done = time.monotonic()
    long_records = plugin.collect(long_id, timeout=300)
    long_done = time.monotonic()
    assert streams(cheap)[0]["num_tokens"]
    assert len(streams(long_records)[0]["embeddings"]) == len(long_texts)
    assert cheap_done < long_done, "the cheap request waited for the long one"
    during = [t for t in plugin.heartbeats if started <= t <= long_done]
    assert long_done - started > 1.5, "the long call must take a while for this test to mean anything"
    gaps = np.diff([started, *during, long_done])
    assert gaps.max() < 2.5, f"heartbeat gap of {gaps.max():.1f}s during inference (interval 0.5 s)"


def test_many_concurrent_calls_all_complete(plugin: PluginProcess) -> None:
    ids = [
        plugin.send(
            model_request(
                "invoke_text_embedding",
                "text-embedding",
                "emb",
                EMBEDDER,
                texts=[f"call {i} text {j}" for j in range(4)],
                input_type="document",
            )
        )
        for i in range(64)
    ]
    for session_id in ids:
        assert len(streams(plugin.collect(session_id, timeout=120))[0]["embeddings"]) == 4


def test_bad_input_type_maps_to_bad_request(plugin: PluginProcess) -> None:
    records = plugin.request(
        model_request(
            "invoke_text_embedding",
            "text-embedding",
            "emb",
            {**EMBEDDER, "max_batch_size": "x"},
            texts=["a"],
            input_type="document",
        )
    )
    error = error_of(records)
    assert error["error_type"] == "InvokeBadRequestError"
    assert "max_batch_size" in error["message"]
    assert embed(plugin, ["still serving"])["embeddings"]


def test_statistics_on_demand_go_to_the_plugin_log(plugin: PluginProcess) -> None:
    import signal

    embed(plugin, ["warm the model up"])
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [entry["message"] for entry in plugin.logs if "inference p50=" in entry.get("message", "")]
        if lines:
            break
        time.sleep(0.1)
    assert any("tiny-bert-embedder[text-embedding]" in line and "queue_wait" in line for line in lines), lines


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to restrict the plugin to one")
def test_core_outside_the_process_allowed_set_is_refused() -> None:
    first, second = sorted(os.sched_getaffinity(0))[:2]
    restricted = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(FIXTURES)}, cpus={first})
    restricted.start()
    try:
        bad = {**EMBEDDER, "cpu_affinity": str(second)}
        error = error_of(restricted.request(model_request("validate_model_credentials", "text-embedding", "e", bad)))
        assert error["error_type"] == "CredentialsValidateFailedError"
        assert error["message"].startswith("cpu_affinity:") and f"not allowed: {second}" in error["message"]
        good = {**EMBEDDER, "cpu_affinity": str(first)}
        assert streams(restricted.request(model_request("validate_model_credentials", "text-embedding", "e", good)))
    finally:
        restricted.close()
