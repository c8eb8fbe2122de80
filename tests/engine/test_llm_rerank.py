"""LLM-style reranker (Qwen3-Reranker recipe) through the engine equals an independent reference: the model
card's prompt written out here, the decoder run directly with ONNX Runtime one pair at a time (empty cache),
P(yes) = softmax over the last position's "no" and "yes" logits in numpy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine import graph_edit
from engine.api import Engine
from engine.encoders.answer_graph import answer_position_graph
from engine.encoders.llm_rerank import DecoderScorer, LlmRerankTask, answer_ids
from engine.errors import BadRequestError, ModelLoadError, SettingError
from engine.settings.profile import RerankSettings, parse_profile
from reference.encoders import QWEN3_RERANK_INSTRUCTION, p_yes, qwen3_rerank_ids, yes_no_logits
from tests.conftest import FIXTURES, ROOTS, settings

RERANKER = FIXTURES / "tiny-qwen3-reranker"
QUERY = "parse a configuration file"
DOCS = [
    "Read and parse configuration files in the INI format.",
    "Return the absolute value of a number.",
    "def parse(text): return configparser.ConfigParser().read_string(text)",
    "A long unrelated sentence about the weather in spring " * 8,
    "",
    "こんにちは世界。今日はいい天気ですね。",
]


def reference_logits(docs: list[str], instruction: str = QWEN3_RERANK_INSTRUCTION, context: int = 512) -> np.ndarray:
    return yes_no_logits(RERANKER / "model.onnx", RERANKER, QUERY, docs, instruction, context)


def profile_of(model: str = "tiny-qwen3-reranker", roots: tuple[Path, ...] = ROOTS, **values: str):
    return parse_profile(settings(model, **values), "rerank", roots=roots)


def test_scores_are_p_yes_of_the_reference(engine: Engine) -> None:
    hits = engine.rerank(profile_of(), QUERY, DOCS)
    expected = p_yes(reference_logits(DOCS))
    assert float(expected.max() - expected.min()) > 0.01  # the fixture's scores differ between documents
    assert sorted(hit.index for hit in hits) == list(range(len(DOCS)))
    for hit in hits:
        assert hit.text == DOCS[hit.index]
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert engine.model_info(profile_of()).details["reranker"] == "llm (yes/no)"


def test_logit_mode_is_the_yes_minus_no_log_odds(engine: Engine) -> None:
    hits = engine.rerank(profile_of(score_mode="logit"), QUERY, DOCS)
    logits = reference_logits(DOCS)
    for hit in hits:
        assert hit.score == pytest.approx(logits[hit.index, 1] - logits[hit.index, 0], abs=1e-5)


def test_a_padded_batch_equals_one_pair_at_a_time(engine: Engine) -> None:
    """Rows of different lengths in one run: padding must not change any row's answer."""
    model = engine.registry.get(profile_of())
    task = model.scheduler.task
    batch = task.tokenize([(QUERY, doc) for doc in DOCS])
    assert len({len(tokens) for tokens in batch}) > 2
    np.testing.assert_allclose(np.stack(task.run(batch)), reference_logits(DOCS), atol=1e-5, rtol=0)
    # loaded with the answer-position edit: logits at one position per row, not for the whole prompt
    session = task.scorer.session
    assert "onnx_local_answer_positions" in [i.name for i in session.get_inputs()]
    assert next(o.shape for o in session.get_outputs() if o.name == "logits")[1] == 1


def test_without_the_edit_the_answers_are_gathered_from_every_positions_logits() -> None:
    """A graph whose head the edit does not recognise still scores right (full logits, gathered per row)."""
    session = ort.InferenceSession(str(RERANKER / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(RERANKER / "tokenizer.json"))
    task = LlmRerankTask(DecoderScorer(session, 0, answer_ids(tok)), tok, 512, RerankSettings("logit"))
    assert not task.scorer.gathers
    rows = task.run(task.tokenize([(QUERY, doc) for doc in DOCS]))
    np.testing.assert_allclose(np.stack(rows), reference_logits(DOCS), atol=1e-5, rtol=0)


def test_a_graph_embedding_its_weights_is_edited_once_into_the_cache(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above CACHE_EMBEDDED_BYTES the edited graph is saved in the cache with external data and loaded by path;
    the next load finds it there."""
    monkeypatch.setattr(graph_edit, "CACHE_EMBEDDED_BYTES", 1)
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    edited = answer_position_graph(RERANKER / "model.onnx")
    assert edited is not None and edited.path is not None and edited.model_bytes is None
    assert (
        edited.path.is_relative_to(tmp_path / "cache") and (edited.path.parent / f"{edited.path.name}.data").is_file()
    )
    assert answer_position_graph(RERANKER / "model.onnx") == edited  # found, not rebuilt
    hits = engine.rerank(profile_of(), QUERY, DOCS)
    expected = p_yes(reference_logits(DOCS))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_the_instruction_setting_is_written_into_the_prompt(engine: Engine) -> None:
    instruction = "Given a code question, retrieve snippets that answer it"
    hits = engine.rerank(profile_of(rerank_instruction=instruction), QUERY, DOCS)
    expected = p_yes(reference_logits(DOCS, instruction))
    assert not np.allclose(expected, p_yes(reference_logits(DOCS)), atol=1e-4)
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_only_the_document_end_is_truncated(engine: Engine) -> None:
    profile = profile_of(context_size="192")  # the tiny tokenizer spends 79 tokens on the system prefix
    model = engine.registry.get(profile)
    (pair,) = model.scheduler.task.tokenize([(QUERY, DOCS[3])])
    assert len(pair) == 192 and list(pair.ids) == qwen3_rerank_ids(
        RERANKER, QUERY, DOCS[3], QWEN3_RERANK_INSTRUCTION, 192
    )
    hits = engine.rerank(profile, QUERY, DOCS)
    expected = p_yes(reference_logits(DOCS, context=192))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_a_query_that_leaves_no_room_for_the_document_is_a_clear_error(engine: Engine) -> None:
    profile = profile_of(context_size="192")
    with pytest.raises(BadRequestError, match="query is too long.*192 tokens"):
        engine.rerank(profile, "a very long query " * 30, DOCS[:2])
    assert engine.rerank(profile, "short", DOCS[:2])  # the model keeps serving


def test_a_context_too_small_for_the_prompt_names_context_size(engine: Engine) -> None:
    with pytest.raises(SettingError, match="^context_size: 64 is not valid; allowed: at least"):
        engine.rerank(profile_of(context_size="64"), QUERY, DOCS)


def test_the_transformers_js_layout_is_detected_too(engine: Engine, tmp_path: Path) -> None:
    hub = tmp_path / "qwen3-reranker-hub-layout"
    shutil.copytree(RERANKER, hub, ignore=shutil.ignore_patterns("model.onnx"))
    (hub / "onnx").mkdir()
    shutil.copyfile(RERANKER / "model.onnx", hub / "onnx" / "model.onnx")
    hits = engine.rerank(profile_of(hub.name, roots=(tmp_path.resolve(),)), QUERY, DOCS)
    expected = p_yes(reference_logits(DOCS))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-5)


def test_a_tokenizer_without_single_yes_and_no_tokens_is_refused(engine: Engine, tmp_path: Path) -> None:
    broken = tmp_path / "no-answers"
    shutil.copytree(RERANKER, broken)
    shutil.copyfile(FIXTURES / "tiny-xlmr-cross-encoder" / "tokenizer.json", broken / "tokenizer.json")  # no "yes"
    with pytest.raises(ModelLoadError, match='model_path: .*single tokens "yes" and "no"'):
        engine.rerank(profile_of(broken.name, roots=(tmp_path.resolve(),)), QUERY, DOCS)


def test_a_decoder_is_not_an_embedding_model(engine: Engine) -> None:
    profile = parse_profile(settings("tiny-qwen3-reranker"), "text-embedding", roots=ROOTS)
    with pytest.raises(ModelLoadError, match="past_key_values inputs"):
        engine.embed(profile, ["hello"])
