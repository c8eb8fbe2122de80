"""Find the ONNX file to load in a model directory and recognise its layout.

Hugging Face model directories keep ONNX files at the root (Optimum export) or under `onnx/` (transformers.js
hub layout) with one file per quantization variant (`model.onnx`, `model_int8.onnx`, `model_quantized.onnx`,
`model_q4.onnx`, `model_fp16.onnx`, …, external data beside them); onnxruntime-genai builder folders are
recognised by `genai_config.json` or by their fused `GroupQueryAttention` graph.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import onnx
from onnx.external_data_helper import uses_external_data

from engine.errors import ModelLoadError, SettingError
from engine.model_config import read_json
from engine.paths import confined, metadata_path

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
        if confined(folder, directory).is_dir():  # an `onnx` link leading out is refused, not listed
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
    locations: tuple[str, ...]  # external-data file names, relative to the graph's folder, each once
    quantized: bool = False


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    """Tensors held by node attributes (Constant values, subgraphs of If/Loop/Scan): ONNX Runtime loads their
    external data too."""
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for graph in attribute.graphs:
                yield from _graph_tensors(graph)


def external_locations_of(model: onnx.ModelProto) -> tuple[str, ...]:
    """The external-data file names a graph (subgraphs and functions included) references, each once."""
    locations: list[str] = []
    tensors = [*_graph_tensors(model.graph), *(t for f in model.functions for t in _node_tensors(f.node))]
    for tensor in tensors:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location not in locations:
                locations.append(location)
    return tuple(locations)


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
    kind = "decoder" if decoder else "encoder" if "input_ids" in inputs else "unknown"
    return _GraphFacts(kind, fused, external_locations_of(model), bool(ops & QUANTIZED_OPS))


def _facts(path: Path) -> _GraphFacts:
    stat = path.stat()
    return _inspect(path, stat.st_size, stat.st_mtime_ns)


def external_data_files(onnx_path: Path, directory: Path | None = None) -> tuple[Path, ...]:
    """The external-data files an ONNX graph references (each listed once), resolved and confined to `directory`
    (default: the graph's folder). Checked here, before any session exists, because ONNX Runtime opens them
    itself when it loads the graph. Resolved on every call: a symlink may change without the graph changing."""
    directory = onnx_path.parent if directory is None else directory
    source = onnx_path.relative_to(directory).as_posix() if onnx_path.is_relative_to(directory) else onnx_path.name
    files = tuple(
        metadata_path(directory, location, source, "external data location", base=onnx_path.parent)
        for location in _facts(onnx_path).locations
    )
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise ModelLoadError(
            "model_path", f"{onnx_path.name} needs external data file(s) {', '.join(missing)} beside it"
        )
    return files


def graph_kind(onnx_path: Path) -> str:
    """ "decoder" (KV-cache inputs), "encoder" (input_ids, no cache) or "unknown"."""
    return _facts(onnx_path).kind


def is_quantized(onnx_path: Path) -> bool:
    """True when the graph already has quantized weights (MatMulNBits, MatMulInteger, …)."""
    return _facts(onnx_path).quantized


def _genai_file(directory: Path) -> Path | None:
    config_path = confined(directory / "genai_config.json", directory)
    if not config_path.is_file():
        return None
    try:
        filename = read_json(config_path)["model"]["decoder"]["filename"]
    except (KeyError, TypeError):
        raise ModelLoadError("model_path", f"genai_config.json in {directory} is not a valid genai config") from None
    return metadata_path(directory, filename, "genai_config.json", "model.decoder.filename")


def _check_model_file(model_file: str) -> None:
    """A form value: a file name or a path relative to the model directory, never leading out of it."""
    path = PurePosixPath(model_file)
    if path.is_absolute() or ".." in path.parts or "\0" in model_file:
        raise SettingError("model_file", model_file, "auto or a path relative to the model directory, without '..'")


def _auto_choice(candidates: list[Path], directory: Path) -> Path:
    if any(p.stem.startswith("decoder_model_merged") for p in candidates):
        candidates = [p for p in candidates if not _UNMERGED.match(p.stem)]
    return min(candidates, key=lambda p: (variant_rank(p.name), p.parent != directory, len(p.name), p.name))


def find_model_files(directory: Path, model_file: str = "auto") -> ModelFiles:
    """The ONNX file `auto` (best for CPU) or `model_file` (a file name or path relative to the directory) selects.
    Every path in the result is resolved and inside `directory`."""
    genai_path = _genai_file(directory)
    candidates = _onnx_candidates(directory)
    if model_file != "auto":
        _check_model_file(model_file)
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
    chosen = confined(chosen, directory)
    if not chosen.is_file():
        raise ModelLoadError("model_path", f"{chosen.name} named in genai_config.json does not exist")
    facts = _facts(chosen)
    external = external_data_files(chosen, directory)
    genai = (genai_path is not None and chosen == genai_path) or facts.fused_attention
    size = chosen.stat().st_size + sum(p.stat().st_size for p in external)
    files = ModelFiles(directory, chosen, "genai" if genai else "optimum", size, facts.kind, external)
    _log_choice(files)
    return files


@functools.lru_cache(maxsize=64)
def _log_once(path: str, size: int, layout: str, kind: str) -> None:
    log.info("model file %s: %.1f MB, %s layout, %s", path, size / 1e6, layout, kind)


def _log_choice(files: ModelFiles) -> None:
    _log_once(str(files.onnx_path), files.size_bytes, files.layout, files.kind)
