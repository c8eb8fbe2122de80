"""The new encoder kinds through the real plugin process over the daemon protocol: an XLM-RoBERTa embedder, an
XLM-RoBERTa cross-encoder and an LLM-style (Qwen3) reranker, each equal to the plain ONNX Runtime reference."""

from __future__ import annotations

import numpy as np
import pytest

from reference.encoders import QWEN3_RERANK_INSTRUCTION, p_yes, xlmr_pair_logits, xlmr_vectors, yes_no_logits
from tests.conftest import FIXTURES
from tests.plugin.daemon import PluginProcess, error_of, model_request, streams

BASE = {"intra_op_threads": "1", "cpu_affinity": "none"}
XLMR_EMBEDDER = {"model_path": "tiny-xlmr-embedder", **BASE}
XLMR_RERANKER = {"model_path": "tiny-xlmr-cross-encoder", **BASE}
LLM_RERANKER = {"model_path": "tiny-qwen3-reranker", **BASE}
QUERY = "weather in Paris"
DOCS = ["Il fait beau à Paris aujourd'hui.", "def parse(text): return int(text)", "天気予報 " * 30, "Берлин"]


def rerank(plugin: PluginProcess, credentials: dict[str, str], query: str = QUERY) -> list[dict]:
    records = plugin.request(
        model_request(
            "invoke_rerank", "rerank", "rr", credentials, query=query, docs=DOCS, score_threshold=0.0, top_n=0
        )
    )
    return streams(records)[0]["docs"]


def assert_scores(ranked: list[dict], expected: np.ndarray) -> None:
    assert sorted(d["index"] for d in ranked) == list(range(len(DOCS)))
    assert [d["score"] for d in ranked] == sorted((d["score"] for d in ranked), reverse=True)
    for doc in ranked:
        assert doc["text"] == DOCS[doc["index"]]
        assert doc["score"] == pytest.approx(expected[doc["index"]], abs=1e-5)


def test_xlmr_embedding(plugin: PluginProcess) -> None:
    texts = ["Wie spät ist es?", "こんにちは世界", "Привет, мир! " * 20, "a"]
    records = plugin.request(
        model_request("invoke_text_embedding", "text-embedding", "m3", XLMR_EMBEDDER, texts=texts, input_type="query")
    )
    payload = streams(records)[0]
    expected = xlmr_vectors(FIXTURES / "tiny-xlmr-embedder" / "model.onnx", texts, "cls", 512)
    np.testing.assert_allclose(np.array(payload["embeddings"]), expected, atol=1e-5, rtol=0)
    schema = streams(plugin.request(model_request("get_ai_model_schemas", "text-embedding", "m3", XLMR_EMBEDDER)))
    assert schema[0]["model_schema"]["model_properties"]["context_size"] == 512  # 514 positions minus the offset


def test_xlmr_cross_encoder_rerank(plugin: PluginProcess) -> None:
    directory = FIXTURES / "tiny-xlmr-cross-encoder"
    logits = xlmr_pair_logits(directory / "onnx" / "model.onnx", directory, QUERY, DOCS, 512)[:, 0]
    assert_scores(rerank(plugin, XLMR_RERANKER), 1 / (1 + np.exp(-logits)))


def test_llm_reranker_rerank(plugin: PluginProcess) -> None:
    directory = FIXTURES / "tiny-qwen3-reranker"
    default = p_yes(yes_no_logits(directory / "model.onnx", directory, QUERY, DOCS, QWEN3_RERANK_INSTRUCTION, 512))
    assert_scores(rerank(plugin, LLM_RERANKER), default)
    instruction = "Given a question in any language, find passages that answer it"
    custom = p_yes(yes_no_logits(directory / "model.onnx", directory, QUERY, DOCS, instruction, 512))
    assert_scores(rerank(plugin, {**LLM_RERANKER, "rerank_instruction": instruction}), custom)


def test_llm_reranker_credentials_validate(plugin: PluginProcess) -> None:
    records = plugin.request(model_request("validate_model_credentials", "rerank", "rr", LLM_RERANKER))
    assert streams(records)[0]["result"] is True


def test_llm_reranker_query_too_long_is_a_bad_request_and_the_plugin_keeps_serving(plugin: PluginProcess) -> None:
    small = {**LLM_RERANKER, "context_size": "192"}
    records = plugin.request(
        model_request(
            "invoke_rerank", "rerank", "rr", small, query="long query " * 80, docs=DOCS, score_threshold=0.0, top_n=0
        )
    )
    error = error_of(records)
    assert error["error_type"] == "InvokeBadRequestError"
    assert "query is too long" in error["message"]
    assert len(rerank(plugin, small)) == len(DOCS)
