"""ONNX export through Optimum (optimum-onnx), copied out as a single self-contained file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from optimum.exporters.onnx import main_export


def export_onnx(hf_dir: Path, task: str, dst: Path) -> None:
    """Exports hf_dir for `task` and copies only model.onnx to dst.

    Optimum also writes config/tokenizer copies next to the model; we write those
    ourselves so that the fixture layout is explicit. Validation is done by the
    caller against torch with its own tolerance.
    """
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        main_export(
            str(hf_dir),
            output=tmp,
            task=task,
            device="cpu",
            local_files_only=True,
            do_validation=False,
        )
        produced = sorted(p.name for p in Path(tmp).iterdir())
        if "model.onnx" not in produced or any(n.startswith("model.onnx_data") for n in produced):
            raise SystemExit(f"unexpected export output for {task}: {produced}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "model.onnx", dst)
