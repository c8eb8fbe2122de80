"""Every file the engine opens stays inside the model directory: links and names in model metadata that lead out
of it (outside the model roots here) are refused with a message naming the file and field, never its contents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from engine.api import Engine
from engine.errors import ModelLoadError, SettingError
from engine.model_config import read_optional_json
from engine.model_files import find_model_files
from engine.paths import confined, metadata_path
from engine.settings.profile import RuntimeProfile, parse_profile
from engine.text.chat_template import ChatTemplate
from tests.conftest import FIXTURES, settings

SECRET = "SECRET-MARKER-0451"
OUTSIDE = "points outside the model directory"


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, ...]:
    """One model root; `tmp_path / "outside"` is not under it."""
    root = (tmp_path / "models").resolve()
    root.mkdir()
    (tmp_path / "outside").mkdir()
    return (root,)


def copy_model(roots: tuple[Path, ...], name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, roots[0] / name))


def link_outside(directory: Path, name: str, secret: bool = True) -> Path:
    """Move `directory / name` outside the roots (with a secret added to a JSON config) and leave a symlink."""
    target = directory.parent.parent / "outside" / name.replace("/", "_")
    source = directory / name
    if secret and source.suffix == ".json" and isinstance(data := json.loads(source.read_text()), dict):
        data[SECRET] = SECRET
        target.write_text(json.dumps(data))
        source.unlink()
    else:
        shutil.move(source, target)
    source.symlink_to(target)
    return target


def profile(roots: tuple[Path, ...], name: str, model_type: str, **values: str) -> RuntimeProfile:
    return parse_profile(settings(name, **values), model_type, roots=roots)


def refused(engine: Engine, prof: RuntimeProfile, *fragments: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        engine.model_info(prof)
    message = str(info.value)
    assert info.value.field == "model_path" and SECRET not in message
    for fragment in fragments:
        assert fragment in message
    return info.value


@pytest.mark.parametrize("filename", ["../../outside/model.onnx", "/ABSOLUTE/model.onnx"])
def test_genai_filename_leading_out_is_refused(engine: Engine, roots: tuple[Path, ...], filename: str) -> None:
    directory = copy_model(roots, "tiny-qwen2-decoder-genai")
    outside = roots[0].parent / "outside"
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(directory / name, outside / name)
    filename = filename.replace("/ABSOLUTE", str(outside))
    config = json.loads((directory / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = filename
    (directory / "genai_config.json").write_text(json.dumps(config))
    error = refused(engine, profile(roots, directory.name, "llm"), "model_path: genai_config.json")
    shown = repr(filename) if len(filename) <= 80 else repr(filename[:80] + "…")  # long values are cut at 80
    assert str(error) == f"model_path: genai_config.json: model.decoder.filename {shown} {OUTSIDE}"


def test_model_onnx_symlink_outside_is_refused(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-bert-embedder")
    link_outside(directory, "model.onnx")
    refused(engine, profile(roots, directory.name, "text-embedding"), "model.onnx is a link outside")


def test_onnx_folder_symlink_outside_is_refused(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-cross-encoder")
    link_outside(directory, "onnx")
    refused(engine, profile(roots, directory.name, "rerank"), "model_path: onnx is a link outside the model directory")


def test_tokenizer_symlink_outside_is_refused(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-bert-embedder")
    link_outside(directory, "tokenizer.json", secret=False)  # still a valid tokenizer: only confinement refuses it
    refused(engine, profile(roots, directory.name, "text-embedding"), "tokenizer.json is a link outside")


@pytest.mark.parametrize(
    ("model", "model_type", "name"),
    [
        ("tiny-bert-embedder", "text-embedding", "config.json"),
        ("tiny-bert-embedder", "text-embedding", "tokenizer_config.json"),
        ("tiny-bert-embedder", "text-embedding", "sentence_bert_config.json"),
        ("tiny-bert-embedder", "text-embedding", "modules.json"),
        ("tiny-bert-embedder", "text-embedding", "1_Pooling/config.json"),
        ("tiny-qwen2-decoder", "llm", "generation_config.json"),
        ("tiny-qwen2-decoder", "llm", "config.json"),
        ("tiny-qwen2-decoder", "llm", "tokenizer_config.json"),
        ("tiny-qwen2-decoder-genai", "llm", "genai_config.json"),
    ],
)
def test_config_symlink_outside_is_refused(
    engine: Engine, roots: tuple[Path, ...], model: str, model_type: str, name: str
) -> None:
    directory = copy_model(roots, model)
    link_outside(directory, name)
    refused(engine, profile(roots, directory.name, model_type), f"{name} is a link outside")


def test_symlink_inside_the_model_directory_loads(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-bert-embedder")
    (directory / "model.onnx").rename(directory / "weights.bin")
    (directory / "model.onnx").symlink_to("weights.bin")
    assert engine.model_info(profile(roots, directory.name, "text-embedding")).details["dimension"] > 0


def test_chat_template_symlink_outside_is_refused(roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-qwen2-decoder")
    link_outside(directory, "chat_template.jinja")
    with pytest.raises(ModelLoadError, match="chat_template.jinja is a link outside"):
        ChatTemplate.load(directory)


def test_tokenizer_config_symlink_outside_is_refused_by_the_template(roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-qwen2-decoder")
    link_outside(directory, "tokenizer_config.json")
    with pytest.raises(ModelLoadError, match="tokenizer_config.json is a link outside") as info:
        ChatTemplate.load(directory)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("pooling_path", ["../..", "../../outside/1_Pooling", "/ABSOLUTE"])
def test_modules_json_pooling_path_leading_out_is_refused(
    engine: Engine, roots: tuple[Path, ...], pooling_path: str
) -> None:
    directory = copy_model(roots, "tiny-bert-embedder")
    outside = roots[0].parent / "outside"
    shutil.copytree(directory / "1_Pooling", outside / "1_Pooling")
    pooling_path = pooling_path.replace("/ABSOLUTE", str(outside / "1_Pooling"))
    modules = json.loads((directory / "modules.json").read_text())
    modules[1]["path"] = pooling_path
    (directory / "modules.json").write_text(json.dumps(modules))
    error = refused(engine, profile(roots, directory.name, "text-embedding"))
    assert str(error) == f"model_path: modules.json: Pooling path {pooling_path!r} {OUTSIDE}"


def test_pooling_folder_symlink_outside_is_refused(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-bert-embedder")
    link_outside(directory, "1_Pooling")
    refused(
        engine, profile(roots, directory.name, "text-embedding"), f"modules.json: Pooling path '1_Pooling' {OUTSIDE}"
    )


def set_external_location(onnx_path: Path, location: str) -> None:
    model = onnx.load(str(onnx_path), load_external_data=False)
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save_model(model, str(onnx_path))


@pytest.mark.parametrize("location", ["ABSOLUTE", "../../outside/model.onnx.data", "./../../outside/model.onnx.data"])
def test_external_data_leading_out_is_refused(roots: tuple[Path, ...], location: str) -> None:
    directory = copy_model(roots, "tiny-qwen2-decoder-genai")
    outside = shutil.copy(directory / "model.onnx.data", roots[0].parent / "outside" / "model.onnx.data")
    location = str(outside) if location == "ABSOLUTE" else location
    set_external_location(directory / "model.onnx", location)
    with pytest.raises(ModelLoadError) as info:
        find_model_files(directory)
    message = str(info.value)
    assert message.startswith("model_path: model.onnx: external data location '") and message.endswith(OUTSIDE)
    assert location in message or len(location) > 80  # long values are shortened


def test_external_data_symlink_outside_is_refused(engine: Engine, roots: tuple[Path, ...]) -> None:
    directory = copy_model(roots, "tiny-qwen2-decoder-genai")
    link_outside(directory, "model.onnx.data")
    refused(engine, profile(roots, directory.name, "llm"), "external data location 'model.onnx.data'", OUTSIDE)


def test_external_data_in_a_subgraph_is_checked(tmp_path: Path) -> None:
    """Initializers of an If branch hold external data too, and ONNX Runtime loads them."""
    weight = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    branch = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    node = helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, size_threshold=0, location="d")
    assert find_model_files(tmp_path).external_data == (tmp_path.resolve() / "d",)
    loaded = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    for attribute in loaded.graph.node[0].attribute:
        for entry in attribute.g.initializer[0].external_data:
            if entry.key == "location":
                entry.value = "../d"
    onnx.save_model(loaded, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelLoadError, match=f"external data location '../d' {OUTSIDE}"):
        find_model_files(tmp_path)


@pytest.mark.parametrize("value", ["../tiny-bert-embedder/model.onnx", "/etc/passwd", "onnx/../../x.onnx"])
def test_model_file_leading_out_is_refused(roots: tuple[Path, ...], value: str) -> None:
    directory = copy_model(roots, "tiny-cross-encoder")
    with pytest.raises(SettingError, match="without '..'") as info:
        find_model_files(directory, value)
    assert info.value.field == "model_file"


def test_read_optional_json_confines_even_a_missing_target(tmp_path: Path) -> None:
    (tmp_path / "config.json").symlink_to(tmp_path.parent / "does-not-exist.json")
    with pytest.raises(ModelLoadError, match="config.json is a link outside"):
        read_optional_json(tmp_path / "config.json")
    assert read_optional_json(tmp_path / "absent.json") == {}


def test_helpers(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert confined(tmp_path / "sub" / "x", tmp_path) == tmp_path.resolve() / "sub" / "x"
    assert metadata_path(tmp_path, "sub/x", "f.json", "k") == tmp_path.resolve() / "sub" / "x"
    with pytest.raises(ModelLoadError, match="cannot be resolved"):
        confined(tmp_path / "loop", tmp_path)
    for bad in (5, "", "a\0b"):
        with pytest.raises(ModelLoadError, match="f.json: k is not a file name"):
            metadata_path(tmp_path, bad, "f.json", "k")
    with pytest.raises(ModelLoadError) as info:
        metadata_path(tmp_path, "../" + "x" * 500, "f.json", "k")
    assert len(str(info.value)) < 200  # long values are shortened
