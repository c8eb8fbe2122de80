"""The KV-cache geometry of a decoder graph: layers, KV heads, head size, element type, input/output names.

Read from config.json (Optimum) or genai_config.json (onnxruntime-genai builder) and checked against the
graph's own inputs, so a mismatched config fails at load with a clear message instead of at the first step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engine.errors import ModelLoadError
from engine.model_config import read_optional_json

_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_PAST_PATTERN = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


@dataclass(frozen=True)
class KvLayout:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: Any  # numpy float type of the cache
    past_names: tuple[tuple[str, str], ...]  # (key, value) input names per layer
    present_names: tuple[tuple[str, str], ...]  # (key, value) output names per layer
    vocab_size: int
    max_positions: int | None  # the model's own limit (config), before the profile's context_size
    # Fewest positions a genai KV buffer may have: GroupQueryAttention's sliding-window layers (Gemma 3, Mistral)
    # refuse a cache smaller than their window.
    min_cache_positions: int = 0


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _graph_past(session: ort.InferenceSession) -> dict[int, dict[str, ort.NodeArg]]:
    layers: dict[int, dict[str, ort.NodeArg]] = {}
    for arg in session.get_inputs():
        match = _PAST_PATTERN.match(arg.name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = arg
    return layers


def _check_dim(arg: ort.NodeArg, axis: int, expected: int, what: str, source: str) -> None:
    dim = arg.shape[axis] if len(arg.shape) == 4 else None
    if isinstance(dim, int) and dim != expected:
        raise ModelLoadError("model_path", f"{source} gives {what} {expected} but the graph's {arg.name} has {dim}")


def read_kv_layout(session: ort.InferenceSession, directory: Path, layout: str) -> KvLayout:
    past = _graph_past(session)
    if not past:
        raise ModelLoadError(
            "model_path",
            "the ONNX graph has no past_key_values.N.key/value inputs: not a decoder exported with a KV cache",
        )
    count = max(past) + 1
    if sorted(past) != list(range(count)) or any(set(p) != {"key", "value"} for p in past.values()):
        raise ModelLoadError(
            "model_path", "the graph's past_key_values inputs are incomplete (a layer lacks key or value)"
        )
    first = past[0]["key"]
    dtype = _ORT_FLOAT_TYPES.get(first.type)
    if dtype is None:
        raise ModelLoadError("model_path", f"the KV cache type {first.type} is not supported (float32 or float16)")
    config = read_optional_json(directory / "config.json")
    if layout == "genai":
        genai = read_optional_json(directory / "genai_config.json").get("model", {})
        decoder = genai.get("decoder", {}) if isinstance(genai, dict) else {}
        source = "genai_config.json"
        layers = _int(decoder, "num_hidden_layers")
        kv_heads = _int(decoder, "num_key_value_heads")
        head_dim = _int(decoder, "head_size")
        vocab = _int(genai, "vocab_size") or _int(config, "vocab_size")
        max_positions = _int(genai, "context_length") or _int(config, "max_position_embeddings")
        window = decoder.get("sliding_window")
        min_cache = (_int(window, "window_size") or 0) if isinstance(window, dict) else 0
    else:
        source = "config.json"
        layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _int(config, "num_attention_heads", "n_head")
        kv_heads = _int(config, "num_key_value_heads") or heads
        hidden = _int(config, "hidden_size", "n_embd")
        head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
        vocab = _int(config, "vocab_size")
        max_positions = _int(config, "max_position_embeddings", "n_positions", "max_sequence_length")
        min_cache = 0  # Optimum graphs mask the window themselves over a past that grows
    # Graph shapes fill in what the config lacks; where both exist they must agree.
    kv_heads = kv_heads or _static(first, 1)
    head_dim = head_dim or _static(first, 3)
    if layers is not None and layers != count:
        raise ModelLoadError("model_path", f"{source} gives {layers} layers but the graph has KV inputs for {count}")
    if kv_heads is None or head_dim is None:
        raise ModelLoadError(
            "model_path", f"the KV-cache shape is unknown: neither {source} nor the graph give heads/head size"
        )
    for pair in past.values():
        for arg in pair.values():
            _check_dim(arg, 1, kv_heads, "num_key_value_heads", source)
            _check_dim(arg, 3, head_dim, "head size", source)
    outputs = {o.name for o in session.get_outputs()}
    present = tuple((f"present.{i}.key", f"present.{i}.value") for i in range(count))
    missing = [name for pair in present for name in pair if name not in outputs]
    if missing or "logits" not in outputs:
        raise ModelLoadError("model_path", f"the graph lacks decoder outputs: {', '.join(missing or ['logits'])}")
    logits_dim = next(o for o in session.get_outputs() if o.name == "logits").shape[-1]
    vocab = logits_dim if isinstance(logits_dim, int) else vocab  # the graph is the truth when it is static
    if vocab is None:
        raise ModelLoadError("model_path", "the vocabulary size is unknown (no vocab_size in the config)")
    return KvLayout(
        layers=count,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        past_names=tuple((past[i]["key"].name, past[i]["value"].name) for i in range(count)),
        present_names=present,
        vocab_size=vocab,
        max_positions=max_positions,
        min_cache_positions=min_cache,
    )


def _static(arg: ort.NodeArg, axis: int) -> int | None:
    dim = arg.shape[axis] if len(arg.shape) == 4 else None
    return dim if isinstance(dim, int) and dim > 0 else None
