"""Rerank through the engine: scores equal a direct ONNX Runtime run, pair truncation spares the query,
top_n / score_threshold semantics (zeros mean unset, as the daemon sends them)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine.api import Engine
from engine.errors import BadRequestError
from engine.settings.profile import parse_profile
from tests.conftest import FIXTURES, ROOTS, settings

QUERY = "parse a configuration file"
DOCS = [
    "Read and parse configuration files in the INI format.",
    "Return the absolute value of a number.",
    "def parse(text): return configparser.ConfigParser().read_string(text)",
    "A long unrelated sentence about the weather in spring " * 8,
    "",
]


def direct_logits(model: str, query: str, docs: list[str], context: int = 512) -> np.ndarray:
    directory = FIXTURES / model
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=context, strategy="only_second")
    session = ort.InferenceSession(str(directory / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for doc in docs:
        encoding = tokenizer.encode(query, doc)
        ids = np.array([encoding.ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        rows.append(session.run(["logits"], feeds)[0][0])
    return np.array(rows, dtype=np.float64)


def rerank_profile(model: str = "tiny-cross-encoder", **values: str):
    return parse_profile(settings(model, **values), "rerank", roots=ROOTS)


def test_probability_is_sigmoid_of_the_logit(engine: Engine) -> None:
    hits = engine.rerank(rerank_profile(), QUERY, DOCS)
    expected = 1 / (1 + np.exp(-direct_logits("tiny-cross-encoder", QUERY, DOCS)[:, 0]))
    assert sorted(hit.index for hit in hits) == list(range(len(DOCS)))
    for hit in hits:
        assert hit.text == DOCS[hit.index]
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_logit_mode_returns_raw_logits(engine: Engine) -> None:
    hits = engine.rerank(rerank_profile(score_mode="logit"), QUERY, DOCS)
    expected = direct_logits("tiny-cross-encoder", QUERY, DOCS)[:, 0]
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_two_label_models_use_softmax(engine: Engine) -> None:
    hits = engine.rerank(rerank_profile("tiny-cross-encoder-2label"), QUERY, DOCS)
    logits = direct_logits("tiny-cross-encoder-2label", QUERY, DOCS)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for hit in hits:
        assert hit.score == pytest.approx(softmax[hit.index, 1], abs=1e-5)


def test_top_n_threshold_and_zero_means_unset(engine: Engine) -> None:
    profile = rerank_profile()
    everything = engine.rerank(profile, QUERY, DOCS)
    assert engine.rerank(profile, QUERY, DOCS, top_n=0, score_threshold=0.0) == everything
    assert engine.rerank(profile, QUERY, DOCS, top_n=None, score_threshold=None) == everything
    assert engine.rerank(profile, QUERY, DOCS, top_n=2) == everything[:2]
    threshold = (everything[1].score + everything[2].score) / 2
    assert engine.rerank(profile, QUERY, DOCS, score_threshold=threshold) == everything[:2]
    assert engine.rerank(profile, QUERY, DOCS, top_n=1, score_threshold=threshold) == everything[:1]
    logit_profile = rerank_profile(score_mode="logit")
    assert len(engine.rerank(logit_profile, QUERY, DOCS, score_threshold=0.0)) == len(DOCS)  # 0 is unset


def test_document_is_truncated_never_the_query(engine: Engine) -> None:
    profile = rerank_profile(context_size="24")
    model = engine.registry.get(profile)
    tokenizer = Tokenizer.from_file(str(FIXTURES / "tiny-cross-encoder" / "tokenizer.json"))
    query_ids = tokenizer.encode(QUERY, add_special_tokens=False).ids
    (pair,) = model.scheduler.task.tokenize([(QUERY, DOCS[3])], "pair")
    assert len(pair) == 24
    assert list(pair.ids[1 : 1 + len(query_ids)]) == query_ids
    hits = engine.rerank(profile, QUERY, DOCS)
    expected = 1 / (1 + np.exp(-direct_logits("tiny-cross-encoder", QUERY, DOCS, context=24)[:, 0]))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_query_longer_than_the_context_is_a_clear_error(engine: Engine) -> None:
    profile = rerank_profile(context_size="16")
    with pytest.raises(BadRequestError, match="query is too long.*16 tokens"):
        engine.rerank(profile, "a very long query " * 20, DOCS[:2])
    assert engine.rerank(profile, "short", DOCS[:2])  # the model keeps serving


def test_no_documents(engine: Engine) -> None:
    assert engine.rerank(rerank_profile(), QUERY, []) == []


def test_a_rerank_whose_response_cannot_cross_the_daemon_line_is_refused(engine: Engine) -> None:
    with pytest.raises(BadRequestError, match="one response can carry"):
        engine.rerank(rerank_profile(), "query", ["a long document " * 100] * 3000)
