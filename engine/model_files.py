"""Find the ONNX file to load in a model directory and recognise its layout.

Hugging Face model directories keep ONNX files at the root (Optimum export) or under `onnx/` (transformers.js
hub layout) with one file per quantization variant; onnxruntime-genai builder folders are recognised by
`genai_config.json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelLoadError, SettingError

# Preference of `auto` on CPU: 4-bit, then 8-bit, then fp32; fp16 only when nothing else exists (no fp16
# kernels on most CPUs, so it would run slower than fp32).
_RANKS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"(q4f16|fp16|float16|f16)"), 9),
    (re.compile(r"(q4|int4|bnb4|4bit)"), 0),
    (re.compile(r"(int8|uint8|quantized|q8|qint8|8bit)"), 1),
)
_FP32_RANK = 2


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    onnx_path: Path
    layout: str  # "optimum" | "genai"
    size_bytes: int  # graph plus external data beside it

    @property
    def fingerprint(self) -> tuple[str, int, int]:
        stat = self.onnx_path.stat()
        return (str(self.onnx_path), stat.st_size, stat.st_mtime_ns)


def variant_rank(name: str) -> int:
    stem = name.lower().removesuffix(".onnx")
    for pattern, rank in _RANKS:
        if pattern.search(stem):
            return rank
    return _FP32_RANK


def _onnx_candidates(directory: Path) -> list[Path]:
    found: list[Path] = []
    for folder in (directory, directory / "onnx"):
        if folder.is_dir():
            found.extend(sorted(p for p in folder.glob("*.onnx") if p.is_file()))
    return found


def _external_data_size(onnx_path: Path) -> int:
    stem = onnx_path.name
    total = 0
    for suffix in ("_data", ".data", ".onnx_data"):
        extra = onnx_path.with_name(stem + suffix)
        if extra.is_file():
            total += extra.stat().st_size
    return total


def _genai_file(directory: Path) -> Path | None:
    config_path = directory / "genai_config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
        filename = config["model"]["decoder"]["filename"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError("model_path", f"genai_config.json in {directory} is not a valid genai config") from None
    return directory / str(filename)


def find_model_files(directory: Path, model_file: str = "auto") -> ModelFiles:
    genai_path = _genai_file(directory)
    candidates = _onnx_candidates(directory)
    if model_file != "auto":
        chosen = next((p for p in candidates if p.name == model_file or str(p.relative_to(directory)) == model_file), None)
        if chosen is None:
            names = ", ".join(str(p.relative_to(directory)) for p in candidates) or "none"
            raise SettingError("model_file", model_file, f"auto or one of the ONNX files in the directory ({names})")
    elif genai_path is not None:
        chosen = genai_path
    elif candidates:
        chosen = min(candidates, key=lambda p: (variant_rank(p.name), p.parent != directory, p.name))
    else:
        raise ModelLoadError("model_path", f"no .onnx file in {directory} or {directory / 'onnx'}")
    if not chosen.is_file():
        raise ModelLoadError("model_path", f"{chosen.name} named in genai_config.json does not exist")
    layout = "genai" if genai_path is not None and chosen == genai_path else "optimum"
    return ModelFiles(directory, chosen, layout, chosen.stat().st_size + _external_data_size(chosen))
