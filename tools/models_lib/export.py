"""Optimum ONNX export (optimum-onnx 0.1.0, transformers 4.57.6) into a transformers.js style `onnx/` folder."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path

from models_lib.common import step


def export_to(hf_dir: Path, task: str, onnx_dir: Path) -> None:
    """Export and keep only model.onnx and its external data (metadata files are copied by the caller)."""
    from optimum.exporters.onnx import main_export

    onnx_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=onnx_dir.parent) as tmp:
        main_export(str(hf_dir), output=tmp, task=task, device="cpu", local_files_only=True, do_validation=False)
        for produced in Path(tmp).iterdir():
            if produced.name == "model.onnx" or produced.name.startswith("model.onnx_data"):
                produced.chmod(0o644)  # the exporter writes external data 0600; the plugin may run as another user
                shutil.move(str(produced), onnx_dir / produced.name)
    gc.collect()
    if not (onnx_dir / "model.onnx").is_file():
        raise RuntimeError(f"optimum export of {hf_dir} produced no model.onnx")


VARIANT_FILES = {"int8": "model_int8.onnx", "int4": "model_q4.onnx"}


def quantize_variants(
    onnx_dir: Path, variants: tuple[str, ...], block_size: int, accuracy_level: int, decoder: bool
) -> None:
    from engine.quantize import quantize_file

    fp32 = onnx_dir / "model.onnx"
    for method in variants:
        label = (
            "int8 (quantize_dynamic MatMul+Gather)"
            if method == "int8"
            else f"int4 (MatMulNBits block {block_size}, accuracy_level {accuracy_level}, "
            f"{'MatMul+Gather' if decoder else 'MatMul'})"
        )
        with step(label):
            target = onnx_dir / VARIANT_FILES[method]
            partial = target.with_name(f".tmp-{target.name}")  # --requantize rewrites files in complete dirs
            quantize_file(fp32, partial, method, block_size, accuracy_level, decoder=decoder)
            partial.replace(target)


def remove_fp32(onnx_dir: Path) -> None:
    for path in onnx_dir.iterdir():
        if path.name == "model.onnx" or path.name.startswith("model.onnx_data"):
            path.unlink()
