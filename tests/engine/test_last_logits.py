"""The load-time edit that computes logits for the last position only, on the tiny decoders of both layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine.generation import last_logits
from engine.generation.kv_layout import read_kv_layout
from engine.generation.last_logits import last_position_graph
from engine.generation.loader import build_generator
from engine.generation.runners import GenaiRunner, OptimumRunner
from engine.model_files import find_model_files
from engine.placement import Placement
from engine.settings.profile import parse_profile

ROOT = (Path(__file__).resolve().parents[1] / "fixtures" / "models").resolve()
PROMPT = [5, 17, 42, 99, 3, 250, 7, 64, 8]


def _session(source: str | bytes, folder: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _runner(session: ort.InferenceSession, directory: Path, layout: str) -> OptimumRunner | GenaiRunner:
    kv = read_kv_layout(session, directory, layout)
    return GenaiRunner(session, kv) if layout == "genai" else OptimumRunner(session, kv)


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("tiny-qwen2-decoder", "model.onnx"),  # Optimum layout, weights embedded
        ("tiny-qwen2-decoder-genai", "model.onnx"),  # genai layout, external data
        ("tiny-qwen2-decoder-genai", "model_int4.onnx"),  # genai layout, MatMulNBits head
    ],
)
def test_edited_graph_gives_the_last_rows_logits_for_prompt_and_decode(name: str, file: str) -> None:
    directory = ROOT / name
    layout = find_model_files(directory).layout
    edited = last_position_graph(directory / file)
    assert edited is not None and edited.folder == directory
    original = _session(str(directory / file))
    sliced = _session(edited.model_bytes, edited.folder)
    vocab = original.get_outputs()[0].shape[2]
    assert sliced.get_outputs()[0].shape == [original.get_outputs()[0].shape[0], "logits_positions", vocab]
    reference, candidate = _runner(original, directory, layout), _runner(sliced, directory, layout)
    caches = reference.new_cache(32), candidate.new_cache(32)
    for step in (PROMPT[:6], PROMPT[6:], [11], [12]):  # two prompt chunks, then two decode steps
        expected = reference.forward(caches[0], step)
        got = candidate.forward(caches[1], step)
        assert got.shape == (vocab,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The graph's own output really is one position wide (not sliced afterwards by the runner).
    binding = caches[1].binding if layout == "genai" else None
    if binding is not None:
        assert binding.get_outputs()[0].shape()[1] == 1
    # Asked for more positions (a speculative verification), it returns exactly those rows of the full logits.
    verify = [13, 14, 15]
    expected_rows = np.stack([reference.forward(caches[0], [token]) for token in verify])
    got_rows = candidate.score(caches[1], verify)
    assert got_rows.shape == (3, vocab)
    np.testing.assert_allclose(got_rows, expected_rows, rtol=1e-4, atol=1e-4)


def test_generator_loads_the_edited_graph_for_both_layouts() -> None:
    for name in ("tiny-qwen2-decoder", "tiny-qwen2-decoder-genai"):
        profile = parse_profile({"model_path": name, "intra_op_threads": "1"}, "llm", roots=(ROOT,))
        scheduler, info = build_generator(profile, find_model_files(profile.model_dir), Placement(None, 1, False), id)
        assert info.details["logits"] == "last position", name
        assert scheduler.runner.has_logits_count, name


def test_a_head_that_is_not_a_projection_is_left_alone(tmp_path: Path) -> None:
    hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["hidden"], ["logits"])], "g", [hidden], [logits])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert last_position_graph(path) is None


def test_a_graph_without_logits_or_already_edited_is_left_alone(tmp_path: Path) -> None:
    edited = last_position_graph(ROOT / "tiny-qwen2-decoder" / "model.onnx")
    assert edited is not None
    again = tmp_path / "edited.onnx"
    again.write_bytes(edited.model_bytes)
    assert last_position_graph(again) is None
    assert last_position_graph(ROOT / "tiny-bert-embedder" / "model.onnx") is None


def test_large_embedded_weights_are_not_reserialized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(last_logits, "MAX_EMBEDDED_BYTES", 1000)
    assert last_position_graph(ROOT / "tiny-qwen2-decoder" / "model.onnx") is None
    # External weights do not count: the genai graph is still edited.
    assert last_position_graph(ROOT / "tiny-qwen2-decoder-genai" / "model.onnx") is not None


def test_a_graph_with_embedded_weights_is_edited_once_into_the_cache_and_loaded_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big embedded graphs (Optimum) are edited into the cache with external data, so a load holds one copy of the
    weights; the logits are those of the original graph."""
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(last_logits, "CACHE_EMBEDDED_BYTES", 1024)
    directory = ROOT / "tiny-qwen2-decoder"
    edited = last_position_graph(directory / "model.onnx")
    assert edited is not None and edited.model_bytes is None and edited.path is not None
    assert edited.path.is_relative_to(tmp_path / "cache") and (edited.path.parent / "model.onnx.data").is_file()
    again = last_position_graph(directory / "model.onnx")
    assert again is not None and again.path == edited.path  # found in the cache, not rebuilt
    original, sliced = _session(str(directory / "model.onnx")), _session(str(edited.path))
    reference, candidate = _runner(original, directory, "optimum"), _runner(sliced, directory, "optimum")
    caches = reference.new_cache(32), candidate.new_cache(32)
    for step in (PROMPT[:6], PROMPT[6:], [11], [12]):
        np.testing.assert_allclose(candidate.forward(caches[1], step), reference.forward(caches[0], step), atol=1e-5)
