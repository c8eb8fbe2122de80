"""Quantize-on-load and its cache, on tiny ONNX graphs and the tiny fixture models, with real ORT sessions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import ModelLoadError
from engine.model_files import ModelFiles, find_model_files
from engine.quantize import cache_entry, prepare_onnx_file
from engine.quantize_cache import MANIFEST, entry_lock
from engine.settings.profile import QuantizationSettings, parse_profile
from engine.settings.table import BY_NAME

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "models"
VOCAB, HIDDEN = 96, 64


def tiny_graph(path: Path, decoder: bool = True, seed: int = 0) -> Path:
    """Embedding Gather → 2 MatMuls → logits; `decoder` adds a past_key_values input/present output pair."""
    rng = np.random.default_rng(seed)
    weights = {
        "embed": rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float32),
        "w1": rng.normal(0, 0.2, (HIDDEN, HIDDEN)).astype(np.float32),
        "w2": rng.normal(0, 0.2, (HIDDEN, VOCAB)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h0"]),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    if decoder:
        shape = ["batch", 2, "past", 16]
        nodes.append(helper.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]))
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, shape))
        outputs.append(helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "tiny", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def run_logits(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {"input_ids": np.array([[1, 5, 9, 42]], np.int64)}
    if any(i.name == "past_key_values.0.key" for i in session.get_inputs()):
        feeds["past_key_values.0.key"] = np.zeros((1, 2, 0, 16), np.float32)
    return session.run(["logits"], feeds)[0]


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(root))
    monkeypatch.setenv("ONNX_LOCAL_MODEL_ROOTS", str(tmp_path / "models"))
    return root


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models" / "tiny"
    tiny_graph(directory / "onnx" / "model.onnx")
    return directory


def quant(method: str, **kwargs: object) -> QuantizationSettings:
    return QuantizationSettings(method=method, **kwargs)  # type: ignore[arg-type]


def builds(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith("quantizing "))


def test_none_returns_the_source(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    assert prepare_onnx_file(files, quant("none")) == files.onnx_path
    assert not cache.exists()


def test_int8_quantizes_matmul_and_gather(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    path = prepare_onnx_file(files, quant("int8"))
    assert path.is_relative_to(cache)
    ops = op_types(path)
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert "MatMul" not in ops
    graph = onnx.load(str(path)).graph
    embed = {i.name: i.data_type for i in graph.initializer if i.name.startswith("embed")}
    assert "embed" not in embed  # the fp32 table is gone …
    assert embed["embed_quantized"] in (TensorProto.INT8, TensorProto.UINT8)  # … replaced by 8-bit codes
    reference, quantized = run_logits(files.onnx_path), run_logits(path)
    assert quantized.shape == reference.shape
    assert np.corrcoef(reference.ravel(), quantized.ravel())[0, 1] > 0.98


def test_int4_uses_matmulnbits_with_block_and_accuracy(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    path = prepare_onnx_file(files, quant("int4", block_size=16, accuracy_level=4))
    model = onnx.load(str(path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["block_size"] == 16 and attrs["accuracy_level"] == 4 and attrs["bits"] == 4
    assert "GatherBlockQuantized" in op_types(path)  # decoders get a 4-bit embedding too
    assert np.corrcoef(run_logits(files.onnx_path).ravel(), run_logits(path).ravel())[0, 1] > 0.95


def test_int4_encoder_keeps_fp32_embedding(tmp_path: Path, cache: Path) -> None:
    directory = tmp_path / "models" / "enc"
    tiny_graph(directory / "model.onnx", decoder=False)
    path = prepare_onnx_file(find_model_files(directory), quant("int4"))
    assert {"MatMulNBits", "Gather"} <= op_types(path)
    assert "GatherBlockQuantized" not in op_types(path)


def test_cache_hit_reuses_the_entry_without_rehashing(
    model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    files = find_model_files(model_dir)
    first = prepare_onnx_file(files, quant("int4"))
    stamp = first.stat().st_mtime_ns
    second = prepare_onnx_file(find_model_files(model_dir), quant("int4"))
    assert second == first and second.stat().st_mtime_ns == stamp
    assert builds(caplog) == 1
    assert (
        sum("hashing" in r.getMessage() for r in caplog.records) == 1
    )  # source hash remembered by (path, size, mtime)
    manifest = json.loads((first.parent / MANIFEST).read_text())
    assert manifest["method"] == "int4" and manifest["files"]["model.onnx"]["size"] == first.stat().st_size
    assert manifest["onnxruntime"] == ort.__version__


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "bad_manifest"])
def test_corrupt_entry_is_rebuilt(model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    files = find_model_files(model_dir)
    path = prepare_onnx_file(files, quant("int8"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    elif damage == "no_manifest":
        (path.parent / MANIFEST).unlink()
    else:
        (path.parent / MANIFEST).write_text("{not json")
    again = prepare_onnx_file(files, quant("int8"))
    assert again == path and again.read_bytes() == data
    assert builds(caplog) == 2
    run_logits(again)


def test_concurrent_loads_in_threads_quantize_once(
    model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    files = find_model_files(model_dir)
    barrier = threading.Barrier(4)
    results: list[Path] = []

    def load() -> None:
        barrier.wait()
        results.append(prepare_onnx_file(files, quant("int4")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and len(set(results)) == 1
    assert builds(caplog) == 1


CHILD = """
import logging, sys
from pathlib import Path
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
from engine.model_files import find_model_files
from engine.settings.profile import QuantizationSettings, parse_profile
from engine.settings.table import BY_NAME
from engine.quantize import cache_entry, prepare_onnx_file
path = prepare_onnx_file(find_model_files(Path(sys.argv[1])), QuantizationSettings("int4"))
sys.stderr.write("RESULT " + str(path) + "\\n")
"""


def test_concurrent_processes_quantize_once(model_dir: Path, cache: Path, tmp_path: Path) -> None:
    """Both processes block on the entry's flock (held here), then exactly one of them builds."""
    files = find_model_files(model_dir)
    root, name, _ = cache_entry(files, quant("int4"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    logs = [tmp_path / f"child{i}.log" for i in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    with entry_lock(root, name):
        for log_path in logs:
            with log_path.open("wb") as handle:
                procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(model_dir)], stderr=handle, env=env))
        _wait_for(lambda: all("waiting for another process" in p.read_text() for p in logs), procs)
    for proc in procs:
        assert proc.wait(60) == 0
    texts = [p.read_text() for p in logs]
    assert sum(t.count("quantizing ") for t in texts) == 1, texts
    results = {line for t in texts for line in t.splitlines() if line.startswith("RESULT ")}
    assert results == {f"RESULT {root / name / 'model.onnx'}"}


def _wait_for(condition: Callable[[], bool], procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    raise AssertionError("child processes did not reach the cache lock")


def test_key_changes_with_settings_and_source(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    paths = {
        prepare_onnx_file(files, quant("int4", block_size=32, accuracy_level=4)),
        prepare_onnx_file(files, quant("int4", block_size=16, accuracy_level=4)),
        prepare_onnx_file(files, quant("int4", block_size=32, accuracy_level=0)),
        prepare_onnx_file(files, quant("int8")),
    }
    assert len(paths) == 4
    # int8 ignores int4-only settings: same entry.
    assert prepare_onnx_file(files, quant("int8", block_size=64)) in paths
    tiny_graph(files.onnx_path, seed=1)  # new weights, same path
    changed = prepare_onnx_file(find_model_files(model_dir), quant("int8"))
    assert changed not in paths


def test_already_quantized_source_is_loaded_as_is(model_dir: Path, cache: Path) -> None:
    q4 = prepare_onnx_file(find_model_files(model_dir), quant("int4"))
    target = model_dir / "onnx" / "model_q4.onnx"
    target.write_bytes(q4.read_bytes())
    files = find_model_files(model_dir)  # auto prefers the 4-bit file
    assert files.onnx_path == target
    assert prepare_onnx_file(files, quant("int8")) == target


def test_cache_root_is_the_administrators(
    model_dir: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No form value aims the cache: only ONNX_LOCAL_CACHE_DIR (or the default), and a bad one names it."""
    assert "quant_cache_dir" not in BY_NAME and not hasattr(QuantizationSettings("int8"), "cache_dir")
    form = {"model_path": str(model_dir), "quantization": "int8", "quant_cache_dir": "/etc"}
    stale = parse_profile(form, "text-embedding", (tmp_path,))
    files = find_model_files(model_dir)
    assert prepare_onnx_file(files, stale.quantization).is_relative_to(cache)  # a saved old value is ignored
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ModelLoadError) as info:
        prepare_onnx_file(files, quant("int4"))
    assert info.value.field == "quantization" and "ONNX_LOCAL_CACHE_DIR" in str(info.value)


def orphan(root: Path, name: str, pid: int = 999999, tid: int = 7) -> Path:
    """A build folder as a killed build leaves it: a partial file, no manifest."""
    folder = root / f".tmp-{name}-{pid}-{tid}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"partial" * 1000)
    return folder


def test_orphaned_temp_dir_is_removed_before_building(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    root, name, _ = cache_entry(files, quant("int8"))
    left = orphan(root, name)
    neighbour = orphan(root, name + "-other")  # another entry's build folder is not this entry's business
    path = prepare_onnx_file(files, quant("int8"))
    assert path == root / name / "model.onnx" and not left.exists() and neighbour.exists()
    run_logits(path)


def test_orphaned_temp_dir_is_removed_when_the_entry_is_found(model_dir: Path, cache: Path) -> None:
    files = find_model_files(model_dir)
    path = prepare_onnx_file(files, quant("int8"))
    left = orphan(path.parent.parent, path.parent.name)  # e.g. a process killed while rebuilding
    assert prepare_onnx_file(files, quant("int8")) == path
    assert not left.exists()


HOLDER = """
import sys
from pathlib import Path
from engine.quantize_cache import entry_lock
with entry_lock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_live_build_temp_dir_is_kept(model_dir: Path, cache: Path) -> None:
    """A build folder whose entry lock is held (another process, or another thread of this one) is a live build."""
    files = find_model_files(model_dir)
    path = prepare_onnx_file(files, quant("int8"))
    root, name = path.parent.parent, path.parent.name
    live = orphan(root, name, pid=os.getpid())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert prepare_onnx_file(files, quant("int8")) == path
        assert live.exists()
    finally:
        holder.communicate(timeout=30)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with entry_lock(root, name):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        assert prepare_onnx_file(files, quant("int8")) == path  # does not wait for the lock either
        assert live.exists()
    finally:
        release.set()
        thread.join(30)
    prepare_onnx_file(files, quant("int8"))  # nobody holds the lock now: the folder is an orphan
    assert not live.exists()


def test_unquantizable_file_names_the_field_without_echoing_content(tmp_path: Path, cache: Path) -> None:
    secret = b"TOP-SECRET-CONTENT " * 50
    bogus = tmp_path / "models" / "bad" / "model.onnx"
    bogus.parent.mkdir(parents=True)
    bogus.write_bytes(secret)
    files = ModelFiles(bogus.parent, bogus, "optimum", len(secret))
    with pytest.raises(ModelLoadError) as info:
        prepare_onnx_file(files, quant("int4"))
    assert info.value.field == "quantization"
    assert "TOP-SECRET" not in str(info.value)


def test_quantizer_failure_is_a_model_load_error(tmp_path: Path, cache: Path) -> None:
    """A graph ONNX can parse but the quantizer cannot process (a MatMul weight of the wrong rank)."""
    path = tmp_path / "models" / "broken" / "model.onnx"
    weight = numpy_helper.from_array(np.ones((2, 3, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    path.parent.mkdir(parents=True)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelLoadError) as info:
        prepare_onnx_file(ModelFiles(path.parent, path, "optimum", path.stat().st_size), quant("int8"))
    assert info.value.field == "quantization"
    assert not any(p.name.startswith(".tmp-") for p in cache.iterdir())


@pytest.mark.skipif(not (FIXTURES / "tiny-qwen2-decoder").is_dir(), reason="tiny fixture models not generated")
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_fixture_decoder_quantizes_and_runs(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    files = find_model_files(FIXTURES / "tiny-qwen2-decoder", "model.onnx")
    assert files.kind == "decoder" and files.layout == "optimum"
    path = prepare_onnx_file(files, quant(method))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    _, kv_heads, _, head_dim = inputs["past_key_values.0.key"].shape
    feeds = {
        "input_ids": np.array([[1, 2, 3]], np.int64),
        "attention_mask": np.ones((1, 3), np.int64),
        "position_ids": np.arange(3, dtype=np.int64)[None, :],
    }
    for name in inputs:
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    logits = session.run(["logits"], {k: v for k, v in feeds.items() if k in inputs})[0]
    assert logits.shape[:2] == (1, 3) and np.isfinite(logits).all()


def ffn_graph(path: Path, decoder: bool) -> Path:
    """Embedding → up-projection [64, 128] → Relu → down-projection [128, 64]."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.normal(0, 0.2, (HIDDEN, 2 * HIDDEN)).astype(np.float32), "up"),
        numpy_helper.from_array(rng.normal(0, 0.2, (2 * HIDDEN, HIDDEN)).astype(np.float32), "down"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h0"]),
        helper.make_node("MatMul", ["h0", "up"], ["h1"], name="up_proj"),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "down"], ["out"], name="down_proj"),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    if decoder:
        shape = ["batch", 2, "past", 16]
        nodes.append(helper.make_node("Identity", ["past_key_values.0.key"], ["present.0.key"]))
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, shape))
        outputs.append(helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, shape))
    model = helper.make_model(
        helper.make_graph(nodes, "ffn", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("decoder", [False, True])
def test_int8_keeps_encoder_down_projection_fp32(tmp_path: Path, cache: Path, decoder: bool) -> None:
    directory = tmp_path / "models" / f"ffn-{decoder}"
    ffn_graph(directory / "model.onnx", decoder)
    path = prepare_onnx_file(find_model_files(directory), quant("int8"))
    plain = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}
    assert plain == (set() if decoder else {"down_proj"})


def encoder_graph(path: Path) -> Path:
    """Embedding → attention-named projection [64, 64] → Relu → FFN up [64, 128] → Relu → FFN down [128, 64]."""
    rng = np.random.default_rng(5)
    shapes = {
        "embed": (VOCAB, HIDDEN),
        "wq": (HIDDEN, HIDDEN),
        "up": (HIDDEN, 2 * HIDDEN),
        "down": (2 * HIDDEN, HIDDEN),
    }
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), k) for k, s in shapes.items()]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["h0"]),
        helper.make_node("MatMul", ["h0", "wq"], ["h1"], name="/layer.0/attention/self/query/MatMul"),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "up"], ["h3"], name="/layer.0/intermediate/dense/MatMul"),
        helper.make_node("Relu", ["h3"], ["h4"]),
        helper.make_node("MatMul", ["h4", "down"], ["logits"], name="/layer.0/output/dense/MatMul"),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    model = helper.make_model(
        helper.make_graph(nodes, "enc", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def test_int4_encoder_attention_8bit_ffn_asymmetric_4bit(tmp_path: Path, cache: Path) -> None:
    directory = tmp_path / "models" / "enc-attn"
    source = encoder_graph(directory / "model.onnx")
    path = prepare_onnx_file(find_model_files(directory), quant("int4", block_size=16))
    nodes = {n.name: n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"}
    bits = {
        name: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits")) for name, n in nodes.items()
    }
    assert bits == {
        "/layer.0/attention/self/query/MatMul_Q8": 8,
        "/layer.0/intermediate/dense/MatMul_Q4": 4,
        "/layer.0/output/dense/MatMul_Q4": 4,
    }
    assert len(nodes["/layer.0/output/dense/MatMul_Q4"].input) == 4  # asymmetric: zero points
    reference, quantized = run_logits(source), run_logits(path)
    assert np.corrcoef(reference.ravel(), quantized.ravel())[0, 1] > 0.99


def test_least_squares_4bit_beats_min_max_rounding() -> None:
    from engine.quantize import _least_squares_4bit

    blocks = np.random.default_rng(7).standard_t(4, (256, 32)).astype(np.float32)  # heavy tails, like weights
    codes, scales, zeros = _least_squares_4bit(blocks)
    assert codes.max() <= 15 and zeros.max() <= 15
    error = ((codes.astype(np.float32) - zeros[:, None]) * scales[:, None] - blocks) ** 2
    low, high = np.minimum(blocks.min(1, keepdims=True), 0), np.maximum(blocks.max(1, keepdims=True), 0)
    scale = (high - low) / 15
    zero = np.clip(np.rint(-low / scale), 0, 15)
    rtn = ((np.clip(np.rint(blocks / scale) + zero, 0, 15) - zero) * scale - blocks) ** 2
    assert (error.sum(1) <= rtn.sum(1) + 1e-6).all() and error.sum() < 0.95 * rtn.sum()
