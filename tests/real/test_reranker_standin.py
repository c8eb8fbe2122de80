"""The rerank stand-in (NOT a real reranker) through the engine: obvious relevance ordering, int8 ≈ fp32."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.api import Engine
from engine.settings.profile import parse_profile
from tests.real.conftest import MODELS, model_dir

DOCS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "Use sorted(iterable) or list.sort() to sort a list in Python.",
    "Stock markets fell sharply today after the announcement.",
    "A recipe for homemade sourdough bread with a crispy crust.",
]


@pytest.fixture(scope="module")
def standin() -> Path:
    directory = model_dir("minilm-reranker-standin")
    config = json.loads((directory / "config.json").read_text())
    assert config["onnx_local_standin"] is True and "NOT a real reranker" in config["onnx_local_note"]
    assert "NOT A REAL RERANKER" in (directory / "README.md").read_text()
    return directory


@pytest.fixture()
def engine() -> Iterator[Engine]:
    instance = Engine()
    yield instance
    instance.close()


@pytest.mark.parametrize("model_file", ["onnx/model.onnx", "onnx/model_int8.onnx"])
def test_obvious_queries_rank_the_right_document_first(engine: Engine, standin: Path, model_file: str) -> None:
    profile = parse_profile(
        {"model_path": str(standin), "model_file": model_file, "intra_op_threads": "2", "cpu_affinity": "none"},
        "rerank",
        roots=(MODELS,),
    )
    for query, best in [
        ("what is the capital of France", 0),
        ("sort a list in python", 2),
        ("how to bake bread at home", 4),
    ]:
        hits = engine.rerank(profile, query, DOCS)
        print(f"\n{model_file} {query!r}: " + ", ".join(f"{h.index}:{h.score:.3f}" for h in hits))
        assert hits[0].index == best
