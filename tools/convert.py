#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint directory or a GGUF file into a model directory the plugin loads.

    .venv-tools/bin/python tools/convert.py SOURCE OUT [--layout optimum|genai] [--quantization none|int8|int4]
        [--block-size 32] [--accuracy-level 4] [--task auto|text-generation|feature-extraction|text-classification]
        [--keep-fp32] [--tf5-python .venv-tools-tf5/bin/python]

Runs in the tools env (Python 3.11, torch CPU, transformers 4.57.6 + optimum-onnx); GGUF tokenizers and the genai
layout use the transformers-5 env. Uses the same export and quantization code as `make models` (the plugin's
engine.quantize). OUT is written atomically: it appears only when complete. See tools/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(REPO))

from models_lib.architectures import architecture_of, check_architecture  # noqa: E402
from models_lib.common import atomic_dir, dir_size, human, say, use_offline_env  # noqa: E402
from models_lib.hf_meta import DECODER_META, ENCODER_META, copy_meta  # noqa: E402

TASKS = {
    "text-generation": "text-generation-with-past",
    "feature-extraction": "feature-extraction",
    "text-classification": "text-classification",
}


def detect_task(hf_dir: Path) -> str:
    config = json.loads((hf_dir / "config.json").read_text())
    architectures = " ".join(config.get("architectures") or [])
    if "ForCausalLM" in architectures or "LMHeadModel" in architectures:
        return "text-generation"
    if "ForSequenceClassification" in architectures:
        return "text-classification"
    return "feature-extraction"


def convert(args: argparse.Namespace, hf_dir: Path, out: Path) -> None:
    from models_lib import decoder

    task = detect_task(hf_dir) if args.task == "auto" else args.task
    say(f"  task {task}, layout {args.layout}, quantization {args.quantization}")
    architecture = architecture_of(hf_dir)
    support = check_architecture(architecture, args.layout, decoder=task == "text-generation")
    if support is not None:
        say(f"  architecture {architecture}" + (f" ({support.note})" if support.note else ""))
    if args.layout == "genai":
        if support is None:
            raise SystemExit("--layout genai is for decoders (text-generation) only")
        precision = {"none": "fp32", "int8": "int8", "int4": "int4"}[args.quantization]
        builder_python = sys.executable if support.genai_under_tf4 else args.tf5_python
        decoder.build_genai(
            hf_dir,
            out,
            builder_python,
            out.parent / f".{out.name}.log",
            precision,
            args.block_size,
            args.accuracy_level,
            shim=support.genai_under_tf4,
        )
    else:
        export_optimum(args, hf_dir, out, task)
    if support is not None and not has_chat_template(out):
        say("  no chat template: a base model; load it with mode=completion (chat mode is refused)")


def has_chat_template(out: Path) -> bool:
    tokenizer_config = out / "tokenizer_config.json"
    inline = tokenizer_config.is_file() and json.loads(tokenizer_config.read_text()).get("chat_template")
    return bool(inline) or (out / "chat_template.jinja").is_file()


def export_optimum(args: argparse.Namespace, hf_dir: Path, out: Path, task: str) -> None:
    from models_lib.export import export_to, quantize_variants, remove_fp32

    variants = () if args.quantization == "none" else (args.quantization,)
    onnx_dir = out / "onnx"
    export_to(hf_dir, TASKS[task], onnx_dir)
    quantize_variants(onnx_dir, variants, args.block_size, args.accuracy_level, decoder=task == "text-generation")
    if variants and not args.keep_fp32:
        remove_fp32(onnx_dir)
    copy_meta(hf_dir, out, DECODER_META if task == "text-generation" else ENCODER_META)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="HF checkpoint directory (config.json + weights) or a .gguf file")
    parser.add_argument("out", type=Path, help="model directory to create (must not exist unless --force)")
    parser.add_argument("--layout", choices=("optimum", "genai"), default="optimum")
    parser.add_argument("--quantization", choices=("none", "int8", "int4"), default="int4")
    parser.add_argument("--block-size", type=int, default=32, choices=(16, 32, 64, 128, 256))
    parser.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits compute type: 4 = int8 (fastest on CPU), 1 = fp32, 0 = unset",
    )
    parser.add_argument("--task", choices=("auto", *TASKS), default="auto")
    parser.add_argument("--keep-fp32", action="store_true", help="keep onnx/model.onnx next to the quantized file")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--tf5-python",
        default=str(REPO / ".venv-tools-tf5" / "bin" / "python"),
        help="transformers-5 env interpreter (GGUF tokenizer, genai builder)",
    )
    args = parser.parse_args()
    source, out = args.source.resolve(), args.out.resolve()
    if out.exists() and not args.force:
        parser.error(f"{out} exists (use --force to replace it)")
    if not source.exists():
        parser.error(f"{source} does not exist")
    use_offline_env()
    started = time.monotonic()
    with atomic_dir(out) as tmp:
        if source.is_file() and source.suffix == ".gguf":
            from models_lib import decoder

            with tempfile.TemporaryDirectory(prefix="gguf-hf-", dir=out.parent) as work:
                hf_dir = Path(work)
                decoder.gguf_to_hf(source, hf_dir, args.tf5_python, [], out.parent / f".{out.name}.log")
                convert(args, hf_dir, tmp)
        elif (source / "config.json").is_file():
            convert(args, source, tmp)
        else:
            parser.error(f"{source} is neither a .gguf file nor a directory with config.json")
    say(f"wrote {out} ({human(dir_size(out))}) in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
