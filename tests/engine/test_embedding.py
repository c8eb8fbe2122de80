"""Embeddings through the engine equal an independent reference: the ONNX model run directly with ONNX Runtime,
one text at a time, pooled and normalized here in numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from engine.api import Engine
from engine.errors import BadRequestError, ModelLoadError, SettingError
from engine.settings.profile import parse_profile
from tests.conftest import FIXTURES, ROOTS, settings

EMBEDDER = FIXTURES / "tiny-bert-embedder"
TEXTS = [
    "def parse(value): return int(value)",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon " * 6,
    "a",
    "Vectors are compared with cosine similarity.",
    "import os\nimport sys\nprint(sys.argv)",
]


def reference(texts: list[str], pooling: str, normalize: bool, context: int) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(EMBEDDER / "tokenizer.json"))
    session = ort.InferenceSession(str(EMBEDDER / "model.onnx"), providers=["CPUExecutionProvider"])
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    vectors = []
    for text in texts:
        body = tokenizer.encode(text, add_special_tokens=False).ids[: context - 2]
        ids = np.array([[cls_id, *body, sep_id]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        states = session.run(None, feeds)[0][0]
        vector = states[0] if pooling == "cls" else states.mean(axis=0)
        if normalize:
            vector = vector / np.linalg.norm(vector)
        vectors.append(vector)
    return np.stack(vectors)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference(engine: Engine, pooling: str, normalize: bool) -> None:
    context = 32  # shorter than the long text: truncation is exercised
    profile = parse_profile(
        settings("tiny-bert-embedder", pooling=pooling, normalize=str(normalize).lower(), context_size=str(context)),
        "text-embedding",
        roots=ROOTS,
    )
    outcome = engine.embed(profile, TEXTS)
    expected = reference(TEXTS, pooling, normalize, context)
    np.testing.assert_allclose(np.array(outcome.vectors), expected, atol=1e-5, rtol=0)
    assert outcome.tokens == sum(min(context, n) for n in engine.count_tokens(profile, TEXTS))


def test_auto_pooling_reads_sentence_transformers_config(engine: Engine) -> None:
    auto = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    mean = parse_profile(settings("tiny-bert-embedder", pooling="mean"), "text-embedding", roots=ROOTS)
    assert engine.model_info(auto).details["pooling"] == "mean"
    np.testing.assert_allclose(engine.embed(auto, TEXTS).vectors, engine.embed(mean, TEXTS).vectors, atol=1e-6)


def test_query_and_document_prefixes(engine: Engine) -> None:
    prefixed = parse_profile(
        settings("tiny-bert-embedder", query_prefix="query: ", document_prefix="passage: "),
        "text-embedding",
        roots=ROOTS,
    )
    plain = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    query = engine.embed(prefixed, ["sorting a list"], "query").vectors[0]
    assert np.allclose(query, engine.embed(plain, ["query: sorting a list"]).vectors[0], atol=1e-6)
    document = engine.embed(prefixed, ["sorting a list"], "document").vectors[0]
    assert np.allclose(document, engine.embed(plain, ["passage: sorting a list"]).vectors[0], atol=1e-6)


def test_token_counts_use_the_models_tokenizer(engine: Engine) -> None:
    profile = parse_profile(settings("tiny-bert-embedder", context_size="16"), "text-embedding", roots=ROOTS)
    tokenizer = Tokenizer.from_file(str(EMBEDDER / "tokenizer.json"))
    counts = engine.count_tokens(profile, TEXTS)
    assert counts == [len(tokenizer.encode(text).ids) for text in TEXTS]  # untruncated
    assert max(counts) > 16


def test_empty_call(engine: Engine) -> None:
    profile = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    outcome = engine.embed(profile, [])
    assert outcome.vectors == [] and outcome.tokens == 0


def test_one_instance_per_profile(engine: Engine) -> None:
    first = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    again = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    other = parse_profile(settings("tiny-bert-embedder", pooling="cls"), "text-embedding", roots=ROOTS)
    assert engine.registry.get(first) is engine.registry.get(again)
    assert engine.registry.get(first) is not engine.registry.get(other)
    assert len(engine.registry.loaded()) == 2


def test_per_call_settings_share_the_loaded_instance_and_apply_per_call(engine: Engine) -> None:
    values = {"query_prefix": "query: ", "batch_window_ms": "0", "queue_limit": "7", "idle_unload_minutes": "5"}
    plain = parse_profile(settings("tiny-bert-embedder"), "text-embedding", roots=ROOTS)
    raw = parse_profile(settings("tiny-bert-embedder", normalize="false", **values), "text-embedding", roots=ROOTS)
    normalized = np.asarray(engine.embed(plain, ["a sentence"], "query").vectors[0])
    unnormalized = np.asarray(engine.embed(raw, ["a sentence"], "document").vectors[0])
    assert len(engine.registry.loaded()) == 1  # one loaded instance served both
    assert abs(np.linalg.norm(normalized) - 1.0) < 1e-5 and abs(np.linalg.norm(unnormalized) - 1.0) > 1e-3
    np.testing.assert_allclose(unnormalized / np.linalg.norm(unnormalized), normalized, atol=1e-5)
    prefixed = np.asarray(engine.embed(raw, ["a sentence"], "query").vectors[0])
    assert not np.allclose(prefixed, unnormalized, atol=1e-4)  # the call's query prefix was applied
    with pytest.raises(BadRequestError, match="queue_limit"):
        engine.embed(raw, ["t"] * 8)  # the call's own queue_limit


def test_idle_model_is_unloaded(engine: Engine) -> None:
    profile = parse_profile(settings("tiny-bert-embedder", idle_unload_minutes="0.001"), "text-embedding", roots=ROOTS)
    model = engine.registry.get(profile)
    engine.registry.unload_idle(now=model.last_used + 1.0)
    assert engine.registry.loaded() == []
    assert model.worker.stopped.is_set()
    assert engine.embed(profile, ["loads again"]).vectors  # reloaded on next use


def test_context_larger_than_the_model_supports(engine: Engine) -> None:
    profile = parse_profile(settings("tiny-bert-embedder", context_size="100000"), "text-embedding", roots=ROOTS)
    with pytest.raises(SettingError, match="^context_size:.*auto or 1 to"):
        engine.model_info(profile)


class TestBrokenModelDirectories:
    """Each broken model directory is refused with a message naming the field, never the file's contents."""

    def make(self, tmp_path, files: dict[str, bytes]):
        directory = tmp_path / "broken"
        directory.mkdir()
        for name, content in files.items():
            (directory / name).write_bytes(content)
        return parse_profile(settings("broken"), "text-embedding", roots=(tmp_path.resolve(),))

    def test_no_onnx_file(self, engine: Engine, tmp_path) -> None:
        profile = self.make(tmp_path, {"tokenizer.json": (EMBEDDER / "tokenizer.json").read_bytes()})
        with pytest.raises(ModelLoadError, match="^model_path: no .onnx file"):
            engine.model_info(profile)

    def test_corrupt_onnx(self, engine: Engine, tmp_path) -> None:
        secret = b"SECRET-CONTENT-" * 20
        profile = self.make(
            tmp_path, {"model.onnx": secret, "tokenizer.json": (EMBEDDER / "tokenizer.json").read_bytes()}
        )
        with pytest.raises(
            ModelLoadError, match="^model_path: model.onnx (could not be loaded|is not a valid ONNX model)"
        ) as caught:
            engine.model_info(profile)
        assert "SECRET" not in str(caught.value)

    def test_tokenizer_that_does_not_load(self, engine: Engine, tmp_path) -> None:
        profile = self.make(
            tmp_path,
            {"model.onnx": (EMBEDDER / "model.onnx").read_bytes(), "tokenizer.json": b'{"SECRET": [1, 2'},
        )
        with pytest.raises(ModelLoadError, match="^model_path: tokenizer.json .* not a valid") as caught:
            engine.model_info(profile)
        assert "SECRET" not in str(caught.value)

    def test_missing_tokenizer(self, engine: Engine, tmp_path) -> None:
        profile = self.make(tmp_path, {"model.onnx": (EMBEDDER / "model.onnx").read_bytes()})
        with pytest.raises(ModelLoadError, match="^model_path: no tokenizer.json"):
            engine.model_info(profile)

    def test_corrupt_config_json(self, engine: Engine, tmp_path) -> None:
        profile = self.make(
            tmp_path,
            {
                "model.onnx": (EMBEDDER / "model.onnx").read_bytes(),
                "tokenizer.json": (EMBEDDER / "tokenizer.json").read_bytes(),
                "config.json": b"SECRET not json",
            },
        )
        with pytest.raises(ModelLoadError, match="^model_path: config.json .* not valid JSON") as caught:
            engine.model_info(profile)
        assert "SECRET" not in str(caught.value)

    def test_failed_load_can_be_retried(self, engine: Engine, tmp_path) -> None:
        profile = self.make(tmp_path, {"tokenizer.json": (EMBEDDER / "tokenizer.json").read_bytes()})
        with pytest.raises(ModelLoadError):
            engine.model_info(profile)
        (tmp_path / "broken" / "model.onnx").write_bytes((EMBEDDER / "model.onnx").read_bytes())
        assert engine.model_info(profile).details["dimension"] > 0
