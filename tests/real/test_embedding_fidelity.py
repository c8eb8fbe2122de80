"""all-MiniLM-L6-v2: int8 (shipped file, and quantized on load) and int4 (quantized on load) embeddings through the
engine vs plain-ORT fp32, on 300 stdlib docstring sentences.

Measured (2-core x86 with AVX512-VNNI), cosine to fp32 mean / min, nearest-neighbour agreement: int8 0.996 / 0.988
(dynamic activation scales depend on the batch, so the min moves with the engine's batching by ~0.003); int4 with the
encoder recipe of engine/quantize.py (8-bit attention, least-squares asymmetric 4-bit FFN) block 16 0.992 / 0.987 /
0.93, block 32 0.988 / 0.976 / 0.90 (plain RTN block 32 was 0.970 / 0.952 / 0.82). The issue's goal (≥ 0.99) is held
at block 16 (`quant_block_size=16`, +1.5 MB); block 32, the default, is checked against what it achieves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from engine.api import Engine
from engine.settings.profile import parse_profile
from tests.real.conftest import MODELS, model_dir
from tests.real.helpers import mean_pooled, session, stdlib_sentences

# (mean cosine, min cosine, nearest-neighbour agreement) to fp32: the goal (mean ≥ 0.99) for int8 and int4
# block 16; int4 block 32 gets regression floors under its measured 0.988 / 0.976 / 0.90.
THRESHOLDS = {"int8": (0.99, 0.98, 0.9), "int4": (0.99, 0.98, 0.9), "int4-b32": (0.985, 0.97, 0.87)}


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


def check(name: str, method: str, got: np.ndarray, reference: np.ndarray) -> None:
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    agreement = float((nearest(got) == nearest(reference)).mean())
    print(
        f"\n{name}: {len(cosine)} sentences, cosine to fp32 mean {cosine.mean():.4f} min {cosine.min():.4f}; "
        f"nearest-neighbour agreement with fp32 {agreement:.3f}"
    )
    mean_floor, min_floor, agreement_floor = THRESHOLDS[method]
    assert cosine.mean() >= mean_floor and cosine.min() >= min_floor
    assert agreement >= agreement_floor


def nearest(vectors: np.ndarray) -> np.ndarray:
    """Index of each sentence's most similar other sentence (what a retrieval would return first)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def test_engine_fp32_matches_plain_ort(
    engine: Engine, minilm: Path, sentences: list[str], reference: np.ndarray
) -> None:
    got = embed(engine, minilm, sentences[:64], model_file="onnx/model.onnx")
    assert np.abs(got - reference[:64]).max() < 1e-4


def test_int8_file_close_to_fp32(engine: Engine, minilm: Path, sentences: list[str], reference: np.ndarray) -> None:
    info = engine.model_info(
        parse_profile(
            {"model_path": str(minilm), "intra_op_threads": "2", "cpu_affinity": "none"},
            "text-embedding",
            roots=(MODELS,),
        )
    )
    assert info.onnx_file == "onnx/model_int8.onnx"  # auto picks the 8-bit file over fp32
    check("int8 (model_int8.onnx)", "int8", embed(engine, minilm, sentences), reference)


@pytest.mark.parametrize(("method", "block"), [("int8", "32"), ("int4", "16"), ("int4", "32")])
def test_quantized_on_load_close_to_fp32(
    engine: Engine,
    minilm: Path,
    sentences: list[str],
    reference: np.ndarray,
    method: str,
    block: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    got = embed(engine, minilm, sentences, model_file="onnx/model.onnx", quantization=method, quant_block_size=block)
    key = f"{method}-b{block}" if f"{method}-b{block}" in THRESHOLDS else method
    check(f"{method} (block {block}) quantized on load", key, got, reference)
    assert any((tmp_path / "cache").rglob("manifest.json"))
