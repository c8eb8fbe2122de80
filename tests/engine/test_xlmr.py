"""XLM-RoBERTa embedder (bge-m3 / multilingual-e5 style) and cross-encoder (bge-reranker style) through the
engine equal an independent reference: the ONNX graph run directly with ONNX Runtime one input at a time, the
ids assembled here from the Unigram tokenizer's pieces and XLM-R's template, pooled or scored in numpy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine.api import Engine
from engine.errors import SettingError
from engine.settings.profile import parse_profile
from reference.encoders import xlmr_pair_ids, xlmr_pair_logits, xlmr_vectors
from tests.conftest import FIXTURES, ROOTS, settings

EMBEDDER = FIXTURES / "tiny-xlmr-embedder"
CROSS_ENCODER = FIXTURES / "tiny-xlmr-cross-encoder"
TEXTS = [
    "Wie spät ist es in Berlin?",
    "こんにちは世界。今日はいい天気ですね。",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon " * 6,
    "a",
    "Привет, мир! Как дела? 你好，世界！",
]
QUERY = "weather in Paris"
DOCS = ["Il fait beau à Paris aujourd'hui.", "def parse(text): return int(text)", "天気 " * 200, ""]


def reference_vectors(texts: list[str], pooling: str, context: int) -> np.ndarray:
    return xlmr_vectors(EMBEDDER / "model.onnx", texts, pooling, context)


def reference_logits(query: str, docs: list[str], context: int = 512) -> np.ndarray:
    return xlmr_pair_logits(CROSS_ENCODER / "onnx" / "model.onnx", CROSS_ENCODER, query, docs, context)


def embed_profile(model: str = "tiny-xlmr-embedder", roots: tuple[Path, ...] = ROOTS, **values: str):
    return parse_profile(settings(model, **values), "text-embedding", roots=roots)


@pytest.mark.parametrize(("pooling", "expected_pooling"), [("auto", "cls"), ("mean", "mean")])
def test_embeddings_match_the_reference(engine: Engine, pooling: str, expected_pooling: str) -> None:
    """auto reads bge-m3's CLS pooling from the sentence-transformers files; mean is multilingual-e5's."""
    profile = embed_profile(pooling=pooling, context_size="48")  # the long text is truncated
    outcome = engine.embed(profile, TEXTS)
    assert engine.model_info(profile).details["pooling"] == expected_pooling
    np.testing.assert_allclose(
        np.array(outcome.vectors), reference_vectors(TEXTS, expected_pooling, 48), atol=1e-5, rtol=0
    )


def test_the_graph_takes_no_token_type_ids() -> None:
    for path in (EMBEDDER / "model.onnx", CROSS_ENCODER / "onnx" / "model.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


def test_the_transformers_js_layout_gives_the_same_vectors(engine: Engine, tmp_path: Path) -> None:
    hub = tmp_path / "xlmr-hub-layout"
    shutil.copytree(EMBEDDER, hub, ignore=shutil.ignore_patterns("model.onnx"))
    (hub / "onnx").mkdir()
    shutil.copyfile(EMBEDDER / "model.onnx", hub / "onnx" / "model.onnx")
    profile = embed_profile(hub.name, roots=(tmp_path.resolve(),))
    assert engine.model_info(profile).onnx_file.endswith("onnx/model.onnx")
    np.testing.assert_allclose(engine.embed(profile, TEXTS).vectors, reference_vectors(TEXTS, "cls", 512), atol=1e-5)


def test_context_stops_before_the_padding_offset(engine: Engine) -> None:
    """514 position embeddings, positions start at 2: 512 tokens is the most the graph takes."""
    assert engine.traits(embed_profile()).context_size == 512
    long_text = " ".join(f"word{i}" for i in range(2000))
    vector = engine.embed(embed_profile(context_size="512"), [long_text]).vectors
    np.testing.assert_allclose(vector, reference_vectors([long_text], "cls", 512), atol=1e-5)
    with pytest.raises(SettingError, match="^context_size: .*1 to 512"):
        engine.embed(embed_profile(context_size="513"), ["x"])


def rerank_profile(**values: str):
    return parse_profile(settings("tiny-xlmr-cross-encoder", **values), "rerank", roots=ROOTS)


def test_pairs_use_the_xlmr_template(engine: Engine) -> None:
    model = engine.registry.get(rerank_profile())
    (pair,) = model.scheduler.task.tokenize([(QUERY, DOCS[0])], "pair")
    tokenizer = Tokenizer.from_file(str(CROSS_ENCODER / "tokenizer.json"))
    query_ids, doc_ids = (tokenizer.encode(text, add_special_tokens=False).ids for text in (QUERY, DOCS[0]))
    assert list(pair.ids) == [0, *query_ids, 2, 2, *doc_ids, 2]  # <s> A </s></s> B </s>
    assert list(pair.ids) == xlmr_pair_ids(CROSS_ENCODER, QUERY, DOCS[0], 512)


@pytest.mark.parametrize("score_mode", ["probability", "logit"])
def test_cross_encoder_scores_match_the_reference(engine: Engine, score_mode: str) -> None:
    hits = engine.rerank(rerank_profile(score_mode=score_mode, context_size="64"), QUERY, DOCS)
    logits = reference_logits(QUERY, DOCS, context=64)[:, 0]
    expected = logits if score_mode == "logit" else 1 / (1 + np.exp(-logits))
    assert sorted(hit.index for hit in hits) == list(range(len(DOCS)))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)
