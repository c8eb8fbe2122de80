"""The tiny Qwen2 checkpoint converted by the onnxruntime-genai model builder (GQA layout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
from models_lib.architectures import builder_config

from reference.ort_greedy import greedy, session

from .common import copy_files
from .qwen_decoder import HF_FILES, check_greedy

SHIM = Path(__file__).with_name("genai_builder_shim.py")
BUILDER_FILES = ["genai_config.json", "model.onnx", "model.onnx.data"]


def builder_input(hf_dir: Path, work: Path) -> Path:
    """Copy of the checkpoint with the config the 0.18 builder needs (models_lib.architectures.builder_config)."""
    dst = work / "genai-input"
    shutil.copytree(hf_dir, dst)
    config = builder_config(json.loads((dst / "config.json").read_text(encoding="utf-8")))
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return dst


def run_builder(src: Path, dst: Path, precision: str, cache: Path, tf5_python: str | None = None) -> None:
    """The builder under this env's transformers 4.57 through the shim, or under `tf5_python`'s transformers 5."""
    builder = [tf5_python, "-m", "onnxruntime_genai.models.builder"] if tf5_python else [sys.executable, str(SHIM)]
    cmd = [*builder, "-i", str(src), "-o", str(dst), "-p", precision, "-e", "cpu", "-c", str(cache)]
    # The builder stamps producer_version with `git rev-parse HEAD` run beside its own files: inside a checkout (a
    # venv symlinked into one) that is whatever commit the checkout is at. Without a repository it falls back to
    # the wheel's own commit, which keeps the bytes stable.
    env = {**os.environ, "GIT_DIR": os.devnull}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"genai builder ({precision}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def decoder_shape(genai_config: Path) -> dict[str, int]:
    cfg = json.loads(genai_config.read_text(encoding="utf-8"))
    dec = cfg["model"]["decoder"]
    return {
        "kv_heads": dec["num_key_value_heads"],
        "head_dim": dec["head_size"],
        "max_length": cfg["search"]["max_length"],
    }


def save_single_file(src: Path, dst: Path) -> None:
    """Inlines the external weights: the int4 model is small enough for one file."""
    model = onnx.load(str(src), load_external_data=True)
    onnx.save_model(model, str(dst), save_as_external_data=False)


def build_genai(
    hf_dir: Path, work: Path, out: Path, expected: dict[str, Any], int4: bool = True, tf5_python: str | None = None
) -> None:
    """`work` is this build's scratch directory (one per checkpoint); `int4` adds model_int4.onnx; `tf5_python`
    runs the builder under transformers 5 (see run_builder)."""
    src = builder_input(hf_dir, work)
    fp32, int4_dir = work / "genai-fp32", work / "genai-int4"
    run_builder(src, fp32, "fp32", work / "genai-cache", tf5_python)
    copy_files(fp32, out, BUILDER_FILES)
    # The original (transformers 4.57) config and our tokenizer files, not the builder's copies.
    copy_files(hf_dir, out, [*HF_FILES, "chat_template.jinja"])
    shape = decoder_shape(out / "genai_config.json")
    # genai's shared-buffer mode (past preallocated to max_length), then a past that grows like Optimum's (not
    # with a sliding window: its layers' KV buffers must hold at least the window from the start).
    decoder = json.loads((out / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    windowed = "sliding_window" in decoder
    for max_length in (shape["max_length"],) if windowed else (shape["max_length"], 0):
        check_greedy(out / "model.onnx", expected, **{**shape, "max_length": max_length})
    check_genai_runtime(out, expected)
    if not int4:
        return

    # int4 (MatMulNBits, RTN block 32): only checked to run; its tokens may differ from fp32.
    run_builder(src, int4_dir, "int4", work / "genai-cache", tf5_python)
    save_single_file(int4_dir / "model.onnx", out / "model_int4.onnx")
    check_runs(out / "model_int4.onnx", expected, shape)


def check_runs(onnx_path: Path, expected: dict[str, Any], shape: dict[str, int]) -> None:
    case = expected["cases"][0]
    got = greedy(session(onnx_path, inter_op_threads=1), case["input_ids"], 4, set(expected["eos_token_ids"]), **shape)
    if not got:
        raise SystemExit(f"{onnx_path}: produced no tokens")


def check_genai_runtime(model_dir: Path, expected: dict[str, Any]) -> None:
    """The folder must also work as-is with the onnxruntime-genai runtime (config + tokenizer)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    for case in expected["cases"]:
        # Chat prompts carry their special tokens as text; a completion prompt's BOS comes from the post-processor.
        chat = case.get("mode", "chat") == "chat"
        if chat and tokenizer.encode(case["prompt"]).tolist() != case["input_ids"]:
            raise SystemExit(f"onnxruntime-genai tokenizer disagrees on {case['name']}")
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(case["input_ids"]) + len(case["output_ids"]))
        generator = og.Generator(model, params)
        generator.append_tokens(case["input_ids"])
        while not generator.is_done():
            generator.generate_next_token()
        got = [int(t) for t in generator.get_sequence(0)[len(case["input_ids"]) :]]
        # The genai runtime does not append the EOS id that ended the search.
        want = case["output_ids"][:-1] if case["stopped_at_eos"] else case["output_ids"]
        if got != want:
            raise SystemExit(f"onnxruntime-genai greedy mismatch on {case['name']}: {got} != {case['output_ids']}")
