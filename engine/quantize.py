"""Quantize-on-load: turn an fp32 ONNX file into an int8 or int4 one once, cache it, and load the cached file.

* int8: `quantize_dynamic` of MatMul and Gather: QInt8 weights per output channel, dynamic uint8 activations.
  Encoders keep their FFN down-projections fp32: their input (after GELU) has outliers that a per-tensor uint8
  activation scale flattens (all-MiniLM-L6-v2 on 300 sentences, cosine to fp32: per-tensor min 0.922,
  per-channel 0.982, per-channel without down-projections 0.991).
* int4: `MatMulNBitsQuantizer`, `block_size`, `accuracy_level` (4 = int8 compute, the fast CPU kernel).
  Decoders: RTN, symmetric, embedding Gather 4-bit too (GatherBlockQuantized). Encoders keep the embedding fp32 (small,
  feeds every token directly), put the attention projections in 8-bit MatMulNBits (a tenth of a 0.5B decoder's
  weights but a third of a 384-wide encoder's, where 4-bit attention costs most) and quantize the FFN 4-bit
  asymmetric with per-block scales chosen by least squares instead of min/max. all-MiniLM-L6-v2, 300 sentences,
  cosine to fp32 mean/min: RTN block 32 0.970/0.952, this recipe block 32 0.988/0.976, block 16 0.992/0.987.
  The same search on Qwen2.5-0.5B (a dequantized 5-bit GGUF) raised teacher-forced agreement 0.921 → 0.944 but took
  150 s, and 8-bit attention / Q4_K_M-style 8-bit v/down projections did not help there: decoders keep plain RTN.

The result is cached by the source's content hash, the settings and the onnxruntime/onnx versions
(engine/quantize_cache.py). The tools (tools/convert.py, tools/build_models.py) call `quantize_file` so the
files they ship and the files the plugin builds on load come from the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engine.errors import ModelLoadError, SettingError
from engine.model_files import ModelFiles, external_data_files, graph_kind, is_quantized
from engine.quantize_cache import build_entry, cache_root, cached_file_hash
from engine.settings.profile import QuantizationSettings

log = logging.getLogger(__name__)

METHODS = ("int8", "int4")
# Bump when the quantization recipe changes: old cache entries then stop matching.
RECIPE_VERSION = 3
# Protobuf cannot hold more than 2 GB; keep a margin for the graph itself.
_SINGLE_FILE_LIMIT = 1_800_000_000


class _DropQuantizerChatter(logging.Filter):
    """onnxruntime.quantization logs one INFO line per node, partly on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime/quantization" not in record.pathname.replace("\\", "/"):
            return True
        # The "consider pre-processing" warning is about static calibration, which quantize-on-load never uses.
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    guard = None
    if not root.handlers:
        # matmul_nbits_quantizer calls logging.basicConfig(level=INFO) at import, which would configure the
        # root logger of the whole plugin process; basicConfig is a no-op when the root has a handler.
        guard = logging.NullHandler()
        root.addHandler(guard)
    chatter = _DropQuantizerChatter()
    root.addFilter(chatter)
    logging.getLogger("onnxruntime.quantization").addFilter(chatter)
    try:
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401  (import under the guard)

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
        yield
    finally:
        root.removeFilter(chatter)
        logging.getLogger("onnxruntime.quantization").removeFilter(chatter)
        if guard is not None:
            root.removeHandler(guard)


# onnx's loader refuses external data that is hard-linked (its hardlink-attack check), a symlink leaving the model
# directory, or a path outside it; copying the files instead of linking them fixes it.
_HINTS = {
    "ValidationError": "; onnx refused the file or its external data (hard-linked or symlinked weights are refused: "
    "copy them instead)"
}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def quantize_int8(src: Path, dst: Path, external_data: bool = False, decoder: bool = True) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,  # the machines we target have VNNI; reduce_range lowered MiniLM's cosine here
        op_types_to_quantize=["MatMul", "Gather"],
        nodes_to_exclude=[] if decoder else down_projections(src),
        use_external_data_format=external_data,
    )


def down_projections(path: Path) -> list[str]:
    """MatMul nodes with a constant weight [K, N], K > N: the FFN down-projections of a transformer."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            found.append(node.name)
    return found


def quantize_int4(
    src: Path,
    dst: Path,
    block_size: int = 32,
    accuracy_level: int = 4,
    gather: bool = True,
    external_data: bool = False,
) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))  # pulls external data
    ops: tuple[str, ...] = ("MatMul", "Gather") if gather else ("MatMul",)
    weights: dict[str, np.ndarray] = {}
    if not gather:  # encoder recipe (module docstring)
        matmuls = _constant_matmuls(model)
        attention = {name for name in matmuls if "attention" in name.lower() or "attn" in name.lower()}
        if attention:
            eight = DefaultWeightOnlyQuantConfig(
                block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level or None, bits=8
            )
            first = MatMulNBitsQuantizer(model, algo_config=eight, nodes_to_exclude=sorted(set(matmuls) - attention))
            first.process()
            model = first.model.model
        weights = {f"{name}_Q4": weight for name, weight in matmuls.items() if name not in attention}
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=gather,
        accuracy_level=accuracy_level or None,  # 0/None: fp32 compute
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero blocks: scale 0, handled by the quantizer
        quantizer.process()
    if weights:
        _refit_asymmetric_4bit(quantizer.model.model, weights)
    if external_data:
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=True)
    else:
        onnx.save_model(quantizer.model.model, str(dst))


def _constant_matmuls(model: object) -> dict[str, np.ndarray]:
    """MatMul node name -> its constant 2-D weight [K, N]."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inits = {init.name: init for init in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
            if weight.ndim == 2 and weight.dtype == np.float32:
                found[node.name] = weight
    return found


def _least_squares_4bit(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit codes of `blocks` [..., block]: w ≈ scale * (q - zero_point), q and zero_point in 0..15.
    Tries scales around (max - min) / 15, refits each by least squares for its codes and keeps the smallest squared
    error per block (min/max RTN spends levels on a block's outliers)."""
    low = np.minimum(blocks.min(-1, keepdims=True), 0)
    high = np.maximum(blocks.max(-1, keepdims=True), 0)
    best_err = best_q = best_scale = best_zero = None
    for levels in np.linspace(14.5, 15.5, 11):
        scale = (high - low) / levels
        scale = np.where(scale == 0, 1.0, scale)
        zero = np.clip(np.rint(-low / scale), 0, 15)
        codes = np.clip(np.rint(blocks / scale) + zero, 0, 15)
        centred = codes - zero
        power = (centred * centred).sum(-1, keepdims=True)
        fitted = np.where(power > 0, (blocks * centred).sum(-1, keepdims=True) / np.maximum(power, 1e-30), scale)
        err = ((centred * fitted - blocks) ** 2).sum(-1, keepdims=True)
        if best_err is None:
            best_err, best_q, best_scale, best_zero = err, codes, fitted, zero
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better, codes, best_q)
        best_scale = np.where(better, fitted, best_scale)
        best_zero = np.where(better, zero, best_zero)
    assert best_q is not None and best_scale is not None and best_zero is not None
    return best_q.astype(np.uint8), best_scale[..., 0].astype(np.float32), best_zero[..., 0].astype(np.uint8)


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis, the first in the low nibble (MatMulNBits layout)."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _refit_asymmetric_4bit(model: object, weights: dict[str, np.ndarray]) -> None:
    """Rewrite B / scales / zero_points of the asymmetric 4-bit MatMulNBits nodes named in `weights` (node name ->
    original fp32 weight [K, N]) with `_least_squares_4bit` codes."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inits = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.name not in weights or len(node.input) < 4:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if attrs.get("bits") != 4:
            continue
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        count = -(-k // block)
        padded = np.zeros((n, count * block), np.float32)
        padded[:, :k] = weights[node.name].T
        codes, scales, zeros = _least_squares_4bit(padded.reshape(n, count, block))
        for index, value in ((1, _pack_nibbles(codes)), (2, scales), (3, _pack_nibbles(zeros))):
            tensor = inits[node.input[index]]
            old = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(old.dtype).reshape(old.shape), tensor.name))


def quantize_file(
    src: Path, dst: Path, method: str, block_size: int = 32, accuracy_level: int = 4, decoder: bool | None = None
) -> None:
    """Quantize `src` into `dst` (external data beside `dst` only when the result would exceed protobuf's 2 GB)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}")
    total = src.stat().st_size + sum(p.stat().st_size for p in external_data_files(src))
    if decoder is None:
        decoder = graph_kind(src) == "decoder"
    with _quiet_quantizer():
        _quantize(src, dst, method, block_size, accuracy_level, decoder, total)


def _quantize(
    src: Path, dst: Path, method: str, block_size: int, accuracy_level: int, decoder: bool, total: int
) -> None:
    if method == "int8":
        quantize_int8(src, dst, external_data=total / 3.5 > _SINGLE_FILE_LIMIT, decoder=decoder)
    else:
        quantize_int4(
            src, dst, block_size, accuracy_level, gather=decoder, external_data=total / 6 > _SINGLE_FILE_LIMIT
        )


def _source_hash(files: ModelFiles, root: Path) -> str:
    digest = hashlib.sha256()
    for path in (files.onnx_path, *files.external_data):
        digest.update(f"{path.name}\0{cached_file_hash(path, root)}\0".encode())
    return digest.hexdigest()


def cache_entry(files: ModelFiles, settings: QuantizationSettings) -> tuple[Path, str, dict[str, object]]:
    """(cache root, entry name, manifest info) of a source file and settings: the name is derived from the source's
    content hash, the settings that matter for the method and the onnxruntime/onnx versions."""
    method = settings.method
    root = cache_root()
    source = files.onnx_path
    info: dict[str, object] = {
        "source": str(source),
        "source_sha256": _source_hash(files, root),
        "method": method,
        "block_size": settings.block_size if method == "int4" else 0,
        "accuracy_level": settings.accuracy_level if method == "int4" else 0,
        "recipe": RECIPE_VERSION,
        **_versions(),
    }
    key = hashlib.sha256(
        json.dumps({k: v for k, v in info.items() if k != "source"}, sort_keys=True).encode()
    ).hexdigest()
    return root, f"{files.directory.name[:48]}-{source.stem[:32]}-{method}-{key[:20]}", info


def prepare_onnx_file(files: ModelFiles, settings: QuantizationSettings) -> Path:
    """The file to load for `settings`: the source itself (method none, or already quantized) or a verified
    cached quantized copy, built now if needed. Runs on the model's worker thread; may take tens of seconds."""
    method = settings.method
    if method == "none":
        return files.onnx_path
    if method not in METHODS:
        raise SettingError("quantization", method, "none, int8, int4")
    source = files.onnx_path
    try:
        already = is_quantized(source)
    except ModelLoadError:
        raise ModelLoadError("quantization", f"{source.name} could not be read as an ONNX model") from None
    if already:
        log.info("%s is already quantized; loading it as is (quantization=%s ignored)", source.name, method)
        return source
    root, name, info = cache_entry(files, settings)
    block_size, accuracy = int(str(info["block_size"])), int(str(info["accuracy_level"]))

    def build(output: Path) -> None:
        started = time.monotonic()
        log.info(
            "quantizing %s (%.1f MB) to %s%s; this runs once per file and settings",
            source.name,
            files.size_bytes / 1e6,
            method,
            f" (block {block_size}, accuracy level {accuracy})" if method == "int4" else "",
        )
        try:
            quantize_file(source, output, method, block_size, accuracy)
        except MemoryError:
            raise ModelLoadError("quantization", f"not enough memory to quantize {source.name} to {method}") from None
        except Exception as error:  # onnx/ORT raise many types; their text may quote the model's bytes
            log.debug("quantizing %s failed: %s", source.name, type(error).__name__)
            kind = type(error).__name__
            hint = _HINTS.get(kind, "")
            raise ModelLoadError(
                "quantization", f"{source.name} could not be quantized to {method} ({kind}){hint}"
            ) from None
        log.info(
            "quantized %s to %s in %.1fs (%.1f MB)",
            source.name,
            method,
            time.monotonic() - started,
            output.stat().st_size / 1e6,
        )

    try:
        path, built = build_entry(root, name, "model.onnx", build, info)
    except OSError as error:
        raise ModelLoadError(
            "quantization", f"the quantization cache in {root} is not usable ({error.strerror or error})"
        ) from None
    if not built:
        log.info("using cached %s copy of %s: %s (%.1f MB)", method, source.name, path, path.stat().st_size / 1e6)
    return path
