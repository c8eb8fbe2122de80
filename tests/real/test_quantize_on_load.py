"""Quantize-on-load of the real Qwen fp32 export: first load quantizes (tens of seconds), the next loads read the
verified cache entry (seconds), also from a fresh process; the quantized model still answers correctly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.model_files import find_model_files
from engine.quantize import prepare_onnx_file
from engine.session_builder import create_session
from engine.settings.profile import QuantizationSettings
from reference.ort_greedy import greedy
from tests.real.conftest import REPO, model_dir
from tests.real.helpers import eos_ids
from tests.real.test_qwen_fidelity import OPTIMUM, decode, encode

SETTINGS = QuantizationSettings("int4", block_size=32, accuracy_level=4)
META = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

SECOND_LOAD = """
import json, sys, time
from pathlib import Path
started = time.monotonic()
from engine.session_builder import create_session
from engine.model_files import find_model_files
from engine.settings.profile import QuantizationSettings
from engine.quantize import prepare_onnx_file
import onnxruntime as ort
imported = time.monotonic()
path = prepare_onnx_file(find_model_files(Path(sys.argv[1])), QuantizationSettings("int4"))
prepared = time.monotonic()
options = ort.SessionOptions(); options.intra_op_num_threads = 2
create_session(path, options)
done = time.monotonic()
sys.stderr.write(json.dumps({"prepare": prepared - imported, "session": done - prepared, "path": str(path)}) + "\\n")
"""


@pytest.fixture(scope="module")
def fp32_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory with only the fp32 export and the metadata files. A copy, not hard links: onnx refuses to
    read external data that has several hard links (its hardlink-attack check)."""
    source = model_dir(OPTIMUM)
    target = tmp_path_factory.mktemp("qwen-fp32-only")
    (target / "onnx").mkdir()
    for name in ("onnx/model.onnx", "onnx/model.onnx_data", *META):
        shutil.copyfile(source / name, target / name)
    yield target
    shutil.rmtree(target)  # 2.5 GB


def options() -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return opts


def test_first_load_quantizes_then_cache_is_fast(
    fp32_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(cache))
    files = find_model_files(fp32_only)
    assert files.onnx_path.name == "model.onnx" and files.kind == "decoder" and files.size_bytes > 2e9

    started = time.monotonic()
    path = prepare_onnx_file(files, SETTINGS)
    quantized = time.monotonic()
    session = create_session(path, options())  # type: ignore[arg-type]
    first = (quantized - started, time.monotonic() - quantized)

    started = time.monotonic()
    again = prepare_onnx_file(find_model_files(fp32_only), SETTINGS)
    prepared = time.monotonic()
    create_session(again, options())  # type: ignore[arg-type]
    second = (prepared - started, time.monotonic() - prepared)
    assert again == path

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", SECOND_LOAD, str(fp32_only)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    fresh = json.loads(child.stderr.strip().splitlines()[-1])
    assert fresh["path"] == str(path)

    print(f"\nfp32 source {files.size_bytes / 1e9:.2f} GB → int4 {path.stat().st_size / 1e6:.0f} MB")
    print(f"first load:  quantize {first[0]:.1f}s + session {first[1]:.1f}s = {sum(first):.1f}s")
    print(f"second load (same process): cache {second[0]:.2f}s + session {second[1]:.1f}s = {sum(second):.1f}s")
    print(
        f"second load (new process):  cache {fresh['prepare']:.2f}s + session {fresh['session']:.1f}s = "
        f"{fresh['prepare'] + fresh['session']:.1f}s"
    )
    assert sum(second) < sum(first) / 3
    assert fresh["prepare"] + fresh["session"] < sum(first) / 2

    ids = encode(fp32_only, "What is the capital of France?")
    text = decode(fp32_only, greedy(session, ids, 24, eos_ids(fp32_only)))
    print(f"answer: {text!r}")
    assert "Paris" in text
