"""Find the ONNX file to load in a model directory and recognise its layout.

Hugging Face model directories keep ONNX files at the root (Optimum export) or under `onnx/` (transformers.js
hub layout) with one file per quantization variant (`model.onnx`, `model_int8.onnx`, `model_quantized.onnx`,
`model_q4.onnx`, `model_fp16.onnx`, …, external data beside them); onnxruntime-genai builder folders are
recognised by `genai_config.json` or by their fused `GroupQueryAttention` graph.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from engine.errors import ModelLoadError, SettingError

log = logging.getLogger(__name__)

# Preference of `auto` on CPU: 4-bit (MatMulNBits), bnb4, 8-bit, fp32; fp16 only when nothing else exists (no
# fp16 kernels on most CPUs, so it runs slower than fp32). Checked in order: q4f16 must match before q4.
_RANKS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"q4f16"), 8),
    (re.compile(r"(fp16|float16|f16|half)"), 9),
    (re.compile(r"bnb4"), 1),
    (re.compile(r"(q4|int4|4bit|nbits)"), 0),
    (re.compile(r"(int8|uint8|quantized|q8|qint8|quint8|8bit)"), 2),
)
_FP32_RANK = 3
# Legacy Optimum decoders: the merged file replaces the pair without/with past.
_UNMERGED = re.compile(r"^decoder_(with_past_)?model(?!_merged)")


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    onnx_path: Path
    layout: str  # "optimum" | "genai"
    size_bytes: int  # graph plus its external data
    kind: str = "unknown"  # "decoder" (has a KV cache) | "encoder" | "unknown" (graph not inspected)
    external_data: tuple[Path, ...] = field(default=())


def directory_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of the files that decide what loads: cheap (stat only), so the
    registry can key models on it per request and leave reading graphs to the model's worker thread."""
    entries = []
    for folder in (directory, directory / "onnx"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix == ".onnx" or path.name == "genai_config.json":
                stat = path.stat()
                entries.append((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


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


# Ops that mean a graph's weights are already quantized.
QUANTIZED_OPS = frozenset(
    {
        "MatMulNBits",
        "MatMulBnb4",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "GatherBlockQuantized",
        "QLinearMatMul",
    }
)


@dataclass(frozen=True)
class _GraphFacts:
    kind: str
    fused_attention: bool
    external: tuple[Path, ...]
    quantized: bool = False


@functools.lru_cache(maxsize=64)
def _inspect(path: Path, size: int, mtime_ns: int) -> _GraphFacts:
    """Graph facts without loading the weights; cached per (path, size, mtime) because the registry looks the
    files up on every request."""
    del size, mtime_ns  # only part of the cache key
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf errors may quote the file's bytes
        raise ModelLoadError("model_path", f"{path.name} is not a valid ONNX model") from None
    inputs = [i.name for i in model.graph.input]
    decoder = any(name.startswith("past_key_values") or name.startswith("past_key") for name in inputs)
    ops = {node.op_type for node in model.graph.node}
    fused = "GroupQueryAttention" in ops
    locations: list[str] = []
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location and location not in locations:
                locations.append(location)
    external = tuple(path.parent / loc for loc in locations)
    missing = [p.name for p in external if not p.is_file()]
    if missing:
        raise ModelLoadError("model_path", f"{path.name} needs external data file(s) {', '.join(missing)} beside it")
    kind = "decoder" if decoder else "encoder" if "input_ids" in inputs else "unknown"
    return _GraphFacts(kind, fused, external, bool(ops & QUANTIZED_OPS))


def _facts(path: Path) -> _GraphFacts:
    stat = path.stat()
    return _inspect(path, stat.st_size, stat.st_mtime_ns)


def external_data_files(onnx_path: Path) -> tuple[Path, ...]:
    """The external-data files an ONNX graph references (each listed once)."""
    return _facts(onnx_path).external


def graph_kind(onnx_path: Path) -> str:
    """ "decoder" (KV-cache inputs), "encoder" (input_ids, no cache) or "unknown"."""
    return _facts(onnx_path).kind


def is_quantized(onnx_path: Path) -> bool:
    """True when the graph already has quantized weights (MatMulNBits, MatMulInteger, …)."""
    return _facts(onnx_path).quantized


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


def _auto_choice(candidates: list[Path], directory: Path) -> Path:
    if any(p.stem.startswith("decoder_model_merged") for p in candidates):
        candidates = [p for p in candidates if not _UNMERGED.match(p.stem)]
    return min(candidates, key=lambda p: (variant_rank(p.name), p.parent != directory, len(p.name), p.name))


def find_model_files(directory: Path, model_file: str = "auto") -> ModelFiles:
    """The ONNX file `auto` (best for CPU) or `model_file` (a file name or path relative to the directory) selects."""
    genai_path = _genai_file(directory)
    candidates = _onnx_candidates(directory)
    if model_file != "auto":
        chosen = next(
            (p for p in candidates if p.name == model_file or str(p.relative_to(directory)) == model_file), None
        )
        if chosen is None:
            names = ", ".join(str(p.relative_to(directory)) for p in candidates) or "none"
            raise SettingError("model_file", model_file, f"auto or one of the ONNX files in the directory ({names})")
    elif genai_path is not None:
        chosen = genai_path
    elif candidates:
        chosen = _auto_choice(candidates, directory)
    else:
        raise ModelLoadError("model_path", f"no .onnx file in {directory} or {directory / 'onnx'}")
    if not chosen.is_file():
        raise ModelLoadError("model_path", f"{chosen.name} named in genai_config.json does not exist")
    facts = _facts(chosen)
    genai = (genai_path is not None and chosen == genai_path) or facts.fused_attention
    size = chosen.stat().st_size + sum(p.stat().st_size for p in facts.external)
    files = ModelFiles(directory, chosen, "genai" if genai else "optimum", size, facts.kind, facts.external)
    _log_choice(files)
    return files


@functools.lru_cache(maxsize=64)
def _log_once(path: str, size: int, layout: str, kind: str) -> None:
    log.info("model file %s: %.1f MB, %s layout, %s", path, size / 1e6, layout, kind)


def _log_choice(files: ModelFiles) -> None:
    _log_once(str(files.onnx_path), files.size_bytes, files.layout, files.kind)
