"""The LLM-reranker path on a real Optimum decoder (the Qwen2.5-Coder q4 export, a stand-in: not trained as a
reranker, so its scores mean nothing): batched engine scores equal the plain ONNX Runtime reference, one pair at
a time with the full graph (reference/encoders.py), to 1e-4. Tiny fixtures cannot show how a real export
treats padding; this does."""

from __future__ import annotations

import pytest

from engine.api import Engine
from engine.settings.profile import parse_profile
from reference.encoders import QWEN3_RERANK_INSTRUCTION, p_yes, yes_no_logits
from tests.real.conftest import MODELS, model_dir

QUERY = "how to reverse a list in python"
DOCS = [
    "Use list.reverse() or slicing with [::-1] to reverse a Python list.",
    "Paris is the capital of France.",
    "def add(a, b): return a + b",
    "",
]
CONTEXT = 256


def test_batched_scores_equal_the_reference(tmp_path, monkeypatch) -> None:
    directory = model_dir("qwen2.5-coder-0.5b-instruct-optimum")
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path))  # the edited graph is cached there
    settings = {"model_path": directory.name, "cpu_affinity": "none", "context_size": str(CONTEXT)}
    profile = parse_profile(settings, "rerank", roots=(MODELS,))
    engine = Engine()
    try:
        hits = engine.rerank(profile, QUERY, DOCS)
        onnx_file = directory / engine.model_info(profile).onnx_file
    finally:
        engine.close()
    expected = p_yes(yes_no_logits(onnx_file, directory, QUERY, DOCS, QWEN3_RERANK_INSTRUCTION, CONTEXT))
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.index], abs=1e-4)
