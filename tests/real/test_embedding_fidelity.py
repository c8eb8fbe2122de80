"""all-MiniLM-L6-v2: int8 (shipped file) and int4 (quantized on load) embeddings through the engine vs fp32 ORT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from engine.api import Engine
from engine.profile import parse_profile
from tests.real.conftest import MODELS, model_dir
from tests.real.helpers import mean_pooled, session, stdlib_sentences

MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def minilm() -> Path:
    return model_dir("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    texts = stdlib_sentences(300)
    assert len(texts) >= 250
    return texts


@pytest.fixture(scope="module")
def reference(minilm: Path, sentences: list[str]) -> np.ndarray:
    return mean_pooled(
        session(minilm / "onnx" / "model.onnx"), Tokenizer.from_file(str(minilm / "tokenizer.json")), sentences
    )


@pytest.fixture()
def engine() -> Iterator[Engine]:
    instance = Engine()
    yield instance
    instance.close()


def embed(engine: Engine, minilm: Path, sentences: list[str], **values: str) -> np.ndarray:
    form = {"model_path": str(minilm), "intra_op_threads": "2", "cpu_affinity": "none", **values}
    profile = parse_profile(form, "text-embedding", roots=(MODELS,))
    vectors = []
    for start in range(0, len(sentences), 64):
        vectors.extend(engine.embed(profile, sentences[start : start + 64]).vectors)
    return np.asarray(vectors)


def check(name: str, got: np.ndarray, reference: np.ndarray) -> None:
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    print(f"\n{name}: {len(cosine)} sentences, cosine to fp32 min {cosine.min():.4f} mean {cosine.mean():.4f}")
    assert cosine.min() >= MIN_COSINE


def test_engine_fp32_matches_plain_ort(
    engine: Engine, minilm: Path, sentences: list[str], reference: np.ndarray
) -> None:
    got = embed(engine, minilm, sentences[:64], model_file="onnx/model.onnx")
    assert np.abs(got - reference[:64]).max() < 1e-4


def test_int8_file_close_to_fp32(engine: Engine, minilm: Path, sentences: list[str], reference: np.ndarray) -> None:
    info = engine.load(
        parse_profile(
            {"model_path": str(minilm), "intra_op_threads": "2", "cpu_affinity": "none"},
            "text-embedding",
            roots=(MODELS,),
        )
    )
    assert info.onnx_file == "onnx/model_int8.onnx"  # auto picks the 8-bit file over fp32
    check("int8 (model_int8.onnx)", embed(engine, minilm, sentences), reference)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_on_load_close_to_fp32(
    engine: Engine,
    minilm: Path,
    sentences: list[str],
    reference: np.ndarray,
    method: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    got = embed(engine, minilm, sentences, model_file="onnx/model.onnx", quantization=method)
    check(f"{method} quantized on load", got, reference)
    assert any((tmp_path / "cache").rglob("manifest.json"))
