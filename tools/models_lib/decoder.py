"""Decoder conversion: GGUF → HF fp32 checkpoint, HF → Optimum ONNX (+ int8/int4), HF → onnxruntime-genai int4.

Runs in the Optimum tools env (transformers 4.57.6); the tokenizer conversion and the genai builder run in the
transformers-5 env (.venv-tools-tf5) as subprocesses.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
from pathlib import Path

from models_lib.architectures import builder_config
from models_lib.common import run, step, write_json
from models_lib.export import export_to, quantize_variants, remove_fp32
from models_lib.hf_meta import DECODER_META, copy_meta

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # engine.quantize: the plugin's own quantization code

TOKENIZER_SCRIPT = Path(__file__).with_name("tf5_tokenizer.py")
BUILDER_SHIM = REPO / "tools" / "fixtures_lib" / "genai_builder_shim.py"
_TOKENIZER_JUNK = ("is_local", "local_files_only")
CHATML_BOS_IS_EOS = ("qwen2", "qwen3")


def gguf_to_hf(gguf: Path, out: Path, tf5_python: str, expect_tokens: list[str], log_path: Path) -> None:
    """fp32 safetensors + config from transformers 4.57.6; tokenizer files from transformers 5 (lossless)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    with step("GGUF → HF fp32 (dequantize)"):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.save_pretrained(str(out), safe_serialization=True)
        generation = model.generation_config if model.generation_config is not None else GenerationConfig()
        model_type = model.config.model_type
        del model
        gc.collect()
    generation.do_sample = False  # greedy by default; users set sampling per request
    # Qwen's ChatML models end a turn with <|im_end|> but may also emit <|endoftext|>, which its GGUF names as BOS
    # (the upstream config stops on both). Other families' BOS starts a text and must never end one.
    eos, bos = generation.eos_token_id, generation.bos_token_id
    if model_type in CHATML_BOS_IS_EOS and isinstance(eos, int) and isinstance(bos, int) and bos != eos:
        generation.eos_token_id = [eos, bos]
    generation.save_pretrained(str(out))
    with step("tokenizer (transformers 5 conversion)"):
        cmd = [tf5_python, str(TOKENIZER_SCRIPT), str(gguf), str(out)]
        for token in expect_tokens:
            cmd += ["--expect", token]
        run(cmd, log_path)
    config = json.loads((out / "config.json").read_text())
    tok_config_path = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    for key in _TOKENIZER_JUNK:
        tok_config.pop(key, None)
    tok_config["model_max_length"] = int(config.get("max_position_embeddings", 32768))
    write_json(tok_config_path, tok_config)


def export_optimum(
    hf_dir: Path,
    out: Path,
    variants: tuple[str, ...] = ("int8", "int4"),
    block_size: int = 32,
    accuracy_level: int = 4,
    keep_fp32: bool = True,
) -> None:
    """transformers.js layout: onnx/model.onnx (+ model.onnx_data), onnx/model_int8.onnx, onnx/model_q4.onnx."""
    onnx_dir = out / "onnx"
    with step("HF → ONNX fp32 (optimum, text-generation-with-past)"):
        export_to(hf_dir, "text-generation-with-past", onnx_dir)
    quantize_variants(onnx_dir, variants, block_size, accuracy_level, decoder=True)
    if not keep_fp32:
        remove_fp32(onnx_dir)
    copy_meta(hf_dir, out, DECODER_META)


def genai_input(hf_dir: Path, work: Path) -> Path:
    """A view of the checkpoint for the genai 0.18 builder, with the config it needs (architectures.builder_config).
    Weights are symlinked."""
    view = work / "genai-input"
    view.mkdir(parents=True)
    for item in hf_dir.iterdir():
        if item.name != "config.json":
            (view / item.name).symlink_to(item.resolve())
    write_json(view / "config.json", builder_config(json.loads((hf_dir / "config.json").read_text())))
    return view


def build_genai(
    hf_dir: Path,
    out: Path,
    tf5_python: str,
    log_path: Path,
    precision: str = "int4",
    block_size: int = 32,
    accuracy_level: int = 4,
    shim: bool = False,
) -> None:
    """onnxruntime-genai builder: GroupQueryAttention graph + genai_config.json. `shim`: `python` is the
    transformers-4.57 tools env, which runs the builder through the fixtures' import shim."""
    with tempfile.TemporaryDirectory(prefix="genai-", dir=out.parent) as tmp:
        work = Path(tmp)
        view = genai_input(hf_dir, work)
        # Gather too: the fp32 embedding would otherwise be 545 of the 870 MB (the same choice as model_q4.onnx).
        extra = (
            [
                "--extra_options",
                f"accuracy_level={accuracy_level}",
                f"block_size={block_size}",
                "op_types_to_quantize=MatMul/Gather",
            ]
            if precision in ("int4", "int8")
            else []
        )
        with step(f"HF → onnxruntime-genai {precision} (cpu, block {block_size}, accuracy_level {accuracy_level})"):
            run(
                [
                    tf5_python,
                    *([str(BUILDER_SHIM)] if shim else ["-m", "onnxruntime_genai.models.builder"]),
                    "-i",
                    str(view),
                    "-o",
                    str(out),
                    "-p",
                    precision,
                    "-e",
                    "cpu",
                    "-c",
                    str(work / "cache"),
                    *extra,
                ],
                log_path,
                # Without a repository the builder stamps producer_version with its wheel's commit, not with the
                # commit of whatever checkout the venv lives in.
                env={"GIT_DIR": os.devnull},
            )
    copy_meta(hf_dir, out, DECODER_META)  # our tokenizer (tf5, lossless) and the original config
    if not (out / "genai_config.json").is_file():
        raise RuntimeError("the genai builder wrote no genai_config.json")
