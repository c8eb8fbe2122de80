"""Variant choice and layout detection of model directories (real ONNX graphs written with onnx.helper)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import ModelLoadError, SettingError
from engine.model_files import external_data_files, find_model_files, variant_rank

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "models"


def graph_file(path: Path, decoder: bool = False, gqa: bool = False, external: bool = False) -> Path:
    """A small valid graph: input_ids → Gather → MatMul; optional KV-cache inputs or a GroupQueryAttention node."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(32, 16)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "w"),
    ]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["out"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 16])]
    if decoder:
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["b", 2, "p", 8]))
        outputs.append(helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["b", 2, "t", 8]))
        nodes.append(helper.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]))
    if gqa:  # only parsed, never run
        nodes.append(helper.make_node("GroupQueryAttention", ["out"], ["gqa_out"], domain="com.microsoft"))
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, inits),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + "_data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def rel(files_path: Path, directory: Path) -> str:
    return files_path.relative_to(directory).as_posix()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["model.onnx", "model_int8.onnx", "model_q4.onnx", "model_fp16.onnx", "model_q4f16.onnx"], "model_q4.onnx"),
        (["model.onnx", "model_quantized.onnx", "model_fp16.onnx"], "model_quantized.onnx"),
        (["model.onnx", "model_uint8.onnx", "model_bnb4.onnx"], "model_bnb4.onnx"),
        (["model.onnx", "model_fp16.onnx"], "model.onnx"),
        (["model_fp16.onnx"], "model_fp16.onnx"),  # fp16 only when nothing else exists
        (["model_fp16.onnx", "model_q4f16.onnx"], "model_q4f16.onnx"),
    ],
)
def test_auto_prefers_4bit_then_8bit_then_fp32(tmp_path: Path, names: list[str], expected: str) -> None:
    for name in names:
        graph_file(tmp_path / "onnx" / name)
    files = find_model_files(tmp_path)
    assert rel(files.onnx_path, tmp_path) == f"onnx/{expected}"
    assert files.layout == "optimum" and files.kind == "encoder"
    assert files.size_bytes == files.onnx_path.stat().st_size


def test_variant_rank_order() -> None:
    assert variant_rank("model_q4.onnx") < variant_rank("model_int8.onnx") < variant_rank("model.onnx")
    assert variant_rank("model.onnx") < variant_rank("model_q4f16.onnx") < variant_rank("model_fp16.onnx")


def test_root_file_wins_a_tie_with_onnx_folder(tmp_path: Path) -> None:
    graph_file(tmp_path / "model.onnx")
    graph_file(tmp_path / "onnx" / "model.onnx")
    assert find_model_files(tmp_path).onnx_path == tmp_path / "model.onnx"


def test_named_file_by_name_or_relative_path(tmp_path: Path) -> None:
    for name in ("model.onnx", "model_int8.onnx", "model_q4.onnx"):
        graph_file(tmp_path / "onnx" / name)
    assert find_model_files(tmp_path, "model_int8.onnx").onnx_path.name == "model_int8.onnx"
    assert find_model_files(tmp_path, "onnx/model.onnx").onnx_path.name == "model.onnx"
    with pytest.raises(SettingError) as info:
        find_model_files(tmp_path, "model_q8.onnx")
    assert info.value.field == "model_file"
    assert "onnx/model_q4.onnx" in str(info.value)


def test_merged_decoder_beats_the_unmerged_pair(tmp_path: Path) -> None:
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx", "decoder_model_merged.onnx"):
        graph_file(tmp_path / name, decoder=True)
    files = find_model_files(tmp_path)
    assert files.onnx_path.name == "decoder_model_merged.onnx"
    assert files.kind == "decoder" and files.layout == "optimum"


def test_genai_layout_from_config(tmp_path: Path) -> None:
    graph_file(tmp_path / "model.onnx", decoder=True)
    graph_file(tmp_path / "other.onnx")
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    files = find_model_files(tmp_path)
    assert files.onnx_path.name == "model.onnx" and files.layout == "genai"
    assert find_model_files(tmp_path, "other.onnx").layout == "optimum"


def test_genai_layout_from_graph(tmp_path: Path) -> None:
    graph_file(tmp_path / "model.onnx", decoder=True, gqa=True)
    assert find_model_files(tmp_path).layout == "genai"


def test_bad_genai_config_names_model_path(tmp_path: Path) -> None:
    graph_file(tmp_path / "model.onnx")
    (tmp_path / "genai_config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as info:
        find_model_files(tmp_path)
    assert info.value.field == "model_path"


def test_external_data_counted_and_loadable(tmp_path: Path) -> None:
    path = graph_file(tmp_path / "onnx" / "model.onnx", external=True)
    files = find_model_files(tmp_path)
    data = tmp_path / "onnx" / "model.onnx_data"
    assert files.external_data == (data,) and external_data_files(path) == (data,)
    assert files.size_bytes == path.stat().st_size + data.stat().st_size
    session = ort.InferenceSession(str(files.onnx_path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input_ids": np.array([[1, 2]], np.int64)})[0].shape == (1, 2, 16)


def test_missing_external_data_is_reported(tmp_path: Path) -> None:
    graph_file(tmp_path / "model.onnx", external=True)
    (tmp_path / "model.onnx_data").unlink()
    with pytest.raises(ModelLoadError) as info:
        find_model_files(tmp_path)
    assert info.value.field == "model_path" and "model.onnx_data" in str(info.value)


def test_empty_directory_and_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        find_model_files(tmp_path)
    assert info.value.field == "model_path"
    (tmp_path / "model.onnx").write_bytes(b"\x00garbage-bytes" * 10)
    with pytest.raises(ModelLoadError) as info:
        find_model_files(tmp_path)
    assert "garbage" not in str(info.value)


@pytest.mark.skipif(not (FIXTURES / "tiny-qwen2-decoder-genai").is_dir(), reason="tiny fixture models not generated")
def test_fixture_layouts() -> None:
    genai = find_model_files(FIXTURES / "tiny-qwen2-decoder-genai")
    assert genai.layout == "genai" and genai.kind == "decoder"
    optimum = find_model_files(FIXTURES / "tiny-qwen2-decoder")
    assert optimum.layout == "optimum" and optimum.kind == "decoder"
    embedder = find_model_files(FIXTURES / "tiny-bert-embedder")
    assert embedder.kind == "encoder"
