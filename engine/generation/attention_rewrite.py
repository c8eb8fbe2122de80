"""Load-time graph edit: an Optimum / transformers.js decoder's attention onto GroupQueryAttention.

The exported graph concatenates each layer's whole past with the new positions into a fresh `present` tensor on
every step (memory traffic that grows with the context) and rebuilds a [sequence × total] mask. The
onnxruntime-genai builder's graphs instead run one fused `GroupQueryAttention` (com.microsoft) per layer whose past
and present are the same preallocated buffer, written in place, with rotary embedding and the causal mask inside
the kernel. This module rewrites an Optimum graph into that form, so it runs under `GenaiRunner` (same inputs:
input_ids, attention_mask, past_key_values.N.key/value bound to the same buffers as present.N.key/value) and joins
batched decode.

Per layer, the block from the q/k/v projections (their bias Add included) to the input of o_proj is matched
structurally — rotate-half RoPE on q and k from one shared cos/sin pair, the Concat of past and new key/value
that produces present.N.key/value, repeat-kv, the scaled q·kᵀ, the mask Add, Softmax (optionally NaN-guarded),
the product with v and the head merge — and replaced by one GroupQueryAttention (do_rotary=1). Its cos/sin caches
are computed from the graph's own inverse frequencies and attention scaling (so every static rope_scaling variant
reproduces the graph exactly), its scale is the product of the graph's two q/k scaling constants; the mask and
position subgraphs give way to the genai graphs' seqlens_k (mask sum − 1) and total_sequence_length (mask width).
Anything else (sliding windows, float16 graphs, a mask not computed from the inputs, another attention shape, an
If-merged decoder) raises `Unrewritable` with the reason, and the graph loads as exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from engine.generation.last_logits import last_position_graph, slice_last_position
from engine.graph_edit import CACHE_EMBEDDED_BYTES, MAX_EMBEDDED_BYTES, cached_with_external_data
from engine.paths import metadata_path
from engine.quantize_cache import cache_root, cached_file_hash, read_entry
from engine.session_builder import EditedGraph

log = logging.getLogger(__name__)

REWRITE_VERSION = 1
_PREFIX = "onnx_local_gqa"
_MS_DOMAIN = "com.microsoft"
# Ops between a tensor and the value it carries unchanged for matching purposes (type and rank plumbing).
_PASS_THROUGH = {"Cast", "Unsqueeze", "Identity"}
_REPEAT_KV = {"Unsqueeze", "Expand", "Reshape"}
# Constants the matcher reads (scales, rotary frequencies) are small; larger external tensors are never loaded.
_MAX_CONSTANT_BYTES = 1 << 20


class Unrewritable(Exception):
    """The graph's attention is not the recognised pattern; the message says what differs."""


@dataclass(frozen=True)
class _Layer:
    index: int
    query: str  # [batch, sequence, heads × head_dim]: q_proj output
    key: str
    value: str
    output: str  # [batch, sequence, heads × head_dim]: o_proj input
    scale: float
    replaced: tuple[str, str, str]  # output, present key, present value: their producers give way to one GQA


class _Graph:
    """Producers, consumers and constant values of a graph's tensors."""

    def __init__(self, graph: onnx.GraphProto, folder: Path | None) -> None:
        self.graph = graph
        self.folder = folder  # where the graph's external data lives (locations were confined by model_files)
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.input_names = {i.name for i in graph.input}

    def producer(self, name: str, op: str, what: str) -> onnx.NodeProto:
        node = self.producers.get(name)
        if node is None or node.op_type != op:
            found = "a graph input or weight" if node is None else node.op_type
            raise Unrewritable(f"{what}: expected {op}, found {found}")
        return node

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.initializers.get(name)
        node = self.producers.get(name)
        if tensor is None and node is not None and node.op_type == "Constant":
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
        if tensor is None or not uses_external_data(tensor):
            return None if tensor is None else numpy_helper.to_array(tensor)
        info = ExternalDataInfo(tensor)
        if self.folder is None or not 0 < info.length <= _MAX_CONSTANT_BYTES:
            return None
        metadata_path(self.folder, info.location, "the decoder graph", "external data location")
        copy = TensorProto()
        copy.CopyFrom(tensor)
        load_external_data_for_tensor(copy, str(self.folder))
        return numpy_helper.to_array(copy)

    def inputs_behind(self, name: str) -> set[str]:
        """The graph inputs `name` is computed from."""
        found: set[str] = set()
        seen: set[str] = set()
        stack = [name]
        while stack:
            tensor = stack.pop()
            if tensor in seen or not tensor:
                continue
            seen.add(tensor)
            node = self.producers.get(tensor)
            if node is None:
                if tensor in self.input_names:
                    found.add(tensor)
            else:
                stack.extend(node.input)
        return found

    def through(self, name: str, ops: Iterable[str] = _PASS_THROUGH) -> str:
        """The tensor `name` is computed from, skipping nodes of `ops`."""
        allowed = set(ops)
        node = self.producers.get(name)
        while node is not None and node.op_type in allowed:
            name = node.input[0]
            node = self.producers.get(name)
        return name

    def scalar(self, name: str, what: str) -> float:
        value = self.constant(name)
        if value is None or value.size != 1:
            raise Unrewritable(f"{what}: not a constant scalar")
        return float(value.reshape(()))


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _split_heads(g: _Graph, name: str, what: str) -> str:
    """x in Transpose(Reshape(x, [batch, sequence, heads, head_dim]), perm 0,2,1,3)."""
    transpose = g.producer(name, "Transpose", what)
    if list(_attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
        raise Unrewritable(f"{what}: the head split transposes {_attribute(transpose, 'perm')}")
    return g.producer(transpose.input[0], "Reshape", what).input[0]


def _rotate_half(g: _Graph, name: str) -> str | None:
    """x when `name` is Concat(-x[..., d/2:], x[..., :d/2]) on the last axis, else None."""
    concat = g.producers.get(name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2 or _attribute(concat, "axis") != -1:
        return None
    neg = g.producers.get(concat.input[0])
    lower = g.producers.get(concat.input[1])
    if neg is None or neg.op_type != "Neg" or lower is None or lower.op_type != "Slice":
        return None
    upper = g.producers.get(neg.input[0])
    if upper is None or upper.op_type != "Slice" or upper.input[0] != lower.input[0]:
        return None
    for node in (upper, lower):
        axes = g.constant(node.input[3]) if len(node.input) > 3 else None
        if axes is None or axes.reshape(-1).tolist() not in ([-1], [3]):
            return None
    start = g.constant(lower.input[1])
    if start is None or start.reshape(-1).tolist() != [0]:
        return None
    return lower.input[0]


def _rope(g: _Graph, name: str, what: str) -> tuple[str, str, str]:
    """(x, cos, sin) for `name` = x·cos + rotate_half(x)·sin (Hugging Face's non-interleaved rotary)."""
    add = g.producer(name, "Add", what)
    first, second = (g.producer(term, "Mul", what) for term in add.input)
    for plain, rotated in ((first, second), (second, first)):
        for side in (0, 1):
            x = _rotate_half(g, rotated.input[side])
            if x is not None and x in plain.input:
                cos = plain.input[1] if plain.input[0] == x else plain.input[0]
                return x, cos, rotated.input[1 - side]
    raise Unrewritable(f"{what}: not the rotate-half rotary embedding")


def _scaled(g: _Graph, name: str, trig: str) -> tuple[onnx.NodeProto, float]:
    """(the Cos/Sin node, its attention scaling) for a rotary table tensor."""
    node = g.producers.get(g.through(name))
    scaling = 1.0
    if node is not None and node.op_type == "Mul":
        source = next((i for i in node.input if (p := g.producers.get(i)) is not None and p.op_type == trig), None)
        if source is None:
            raise Unrewritable(f"the rotary {trig.lower()} table is not {trig}(angles) · scaling")
        scaling = g.scalar(node.input[1] if node.input[0] == source else node.input[0], "rotary scaling")
        node = g.producers[source]
    if node is None or node.op_type != trig:
        raise Unrewritable(f"the rotary {trig.lower()} table does not come from a {trig} node")
    return node, scaling


def _inverse_frequencies(g: _Graph, cos: str, sin: str) -> tuple[np.ndarray, float]:
    """The graph's rotary inverse frequencies and attention scaling: cos = cos(position ⊗ inv_freq) · scaling."""
    cos_node, cos_scaling = _scaled(g, cos, "Cos")
    sin_node, sin_scaling = _scaled(g, sin, "Sin")
    if cos_node.input[0] != sin_node.input[0] or cos_scaling != sin_scaling:
        raise Unrewritable("the rotary cos and sin tables use different angles")
    doubled = g.producer(cos_node.input[0], "Concat", "rotary angles")
    if len(doubled.input) != 2 or doubled.input[0] != doubled.input[1]:
        raise Unrewritable("rotary angles: not the frequencies repeated twice (rotate-half layout)")
    transpose = g.producer(doubled.input[0], "Transpose", "rotary angles")
    product = g.producer(transpose.input[0], "MatMul", "rotary angles")
    if g.through(product.input[1]) != "position_ids":
        raise Unrewritable("rotary angles: the positions do not come from the position_ids input")
    expand = g.producer(g.through(product.input[0]), "Expand", "rotary frequencies")
    frequencies = g.constant(expand.input[0])
    if frequencies is None or frequencies.ndim != 3 or frequencies.shape[0] != 1 or frequencies.shape[2] != 1:
        raise Unrewritable("rotary frequencies: not a constant [1, head_dim/2, 1] tensor (dynamic rope scaling?)")
    return frequencies.reshape(-1).astype(np.float32), cos_scaling


def _repeated_kv(g: _Graph, name: str, present: str, what: str) -> None:
    if g.through(name, _REPEAT_KV) != present:
        raise Unrewritable(f"{what}: does not read {present} (through repeat-kv)")


def _scale_factor(g: _Graph, name: str) -> tuple[str, float]:
    node = g.producers.get(name)
    if node is not None and node.op_type == "Mul":
        for side in (0, 1):
            value = g.constant(node.input[1 - side])
            if value is not None and value.size == 1:
                return node.input[side], float(value.reshape(()))
    return name, 1.0


def _match_layer(g: _Graph, softmax: onnx.NodeProto, layers: int) -> tuple[_Layer, tuple[str, str]]:
    """The attention around `softmax`; also returns the rotary (cos, sin) tensors it reads."""
    if _attribute(softmax, "axis", -1) not in (-1, 3):
        raise Unrewritable("Softmax is not over the key axis")
    # Scores: (q · s1) @ (Transpose(k) · s2) + mask.
    masked = g.producer(softmax.input[0], "Add", "attention scores")
    products = [g.producers[i] for i in masked.input if i in g.producers and g.producers[i].op_type == "MatMul"]
    scores = products[0] if len(products) == 1 else None
    if scores is None:
        raise Unrewritable("attention scores: no q·kᵀ MatMul before the mask Add")
    # The mask must be the causal/padding mask of the inputs (GroupQueryAttention's own), nothing else.
    mask = masked.input[1] if masked.input[0] == scores.output[0] else masked.input[0]
    behind = g.inputs_behind(mask)
    if "attention_mask" not in behind or not behind <= {"attention_mask", "input_ids", "position_ids"} | {
        name for name in behind if name.startswith("past_key_values.")
    }:
        raise Unrewritable(f"attention mask: computed from {', '.join(sorted(behind)) or 'constants'}")
    query_rotated, query_scale = _scale_factor(g, scores.input[0])
    key_transposed, key_scale = _scale_factor(g, scores.input[1])
    transpose = g.producer(key_transposed, "Transpose", "kᵀ")
    if list(_attribute(transpose, "perm", [])) != [0, 1, 3, 2]:
        raise Unrewritable("kᵀ: unexpected transpose")
    present_key = g.through(transpose.input[0], _REPEAT_KV)
    if not present_key.startswith("present.") or not present_key.endswith(".key"):
        raise Unrewritable("attention scores: the keys are not a present.N.key output")
    index = int(present_key.split(".")[1])
    if not 0 <= index < layers:
        raise Unrewritable(f"{present_key}: no such layer")
    # Probabilities (optionally NaN-guarded) @ repeated values, heads merged back.
    probabilities = softmax.output[0]
    users = g.consumers.get(probabilities, [])
    guard = next((n for n in users if n.op_type == "Where"), None)
    if guard is not None:
        if not any(n.op_type == "IsNaN" for n in users) or len(users) != 2:
            raise Unrewritable("attention probabilities: unexpected consumers")
        probabilities = guard.output[0]
        users = g.consumers.get(probabilities, [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != probabilities:
        raise Unrewritable("attention probabilities: not multiplied by the values")
    weighted = users[0]
    present_value = f"present.{index}.value"
    _repeated_kv(g, weighted.input[1], present_value, "attention values")
    merge = g.consumers.get(weighted.output[0], [])
    if len(merge) != 1 or merge[0].op_type != "Transpose" or list(_attribute(merge[0], "perm", [])) != [0, 2, 1, 3]:
        raise Unrewritable("attention output: heads are not merged back by a transpose")
    flatten = g.consumers.get(merge[0].output[0], [])
    if len(flatten) != 1 or flatten[0].op_type != "Reshape":
        raise Unrewritable("attention output: heads are not merged back by a reshape")
    output = flatten[0].output[0]
    # Present key/value: Concat(past, new) on the sequence axis; the new key rotated like the query.
    key_concat = g.producer(present_key, "Concat", present_key)
    value_concat = g.producer(present_value, "Concat", present_value)
    for concat, kind in ((key_concat, "key"), (value_concat, "value")):
        if _attribute(concat, "axis") not in (2, -2) or list(concat.input[:1]) != [f"past_key_values.{index}.{kind}"]:
            raise Unrewritable(f"present.{index}.{kind}: not Concat(past_key_values.{index}.{kind}, new) on axis 2")
        if len(concat.input) != 2:
            raise Unrewritable(f"present.{index}.{kind}: the Concat has {len(concat.input)} inputs")
    key_x, key_cos, key_sin = _rope(g, key_concat.input[1], f"layer {index} key rotary")
    query_x, query_cos, query_sin = _rope(g, query_rotated, f"layer {index} query rotary")
    if (key_cos, key_sin) != (query_cos, query_sin):
        raise Unrewritable(f"layer {index}: query and key use different rotary tables")
    layer = _Layer(
        index=index,
        query=_split_heads(g, query_x, f"layer {index} query"),
        key=_split_heads(g, key_x, f"layer {index} key"),
        value=_split_heads(g, value_concat.input[1], f"layer {index} value"),
        output=output,
        scale=query_scale * key_scale,
        replaced=(output, present_key, present_value),
    )
    return layer, (query_cos, query_sin)


def _config_int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _check_config(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(heads, kv heads, positions) from config.json; refuses what GroupQueryAttention here would not reproduce."""
    heads = _config_int(config, "num_attention_heads")
    positions = _config_int(config, "max_position_embeddings")
    if heads is None or positions is None:
        raise Unrewritable("config.json lacks num_attention_heads or max_position_embeddings")
    # Qwen2 says whether its window applies (use_sliding_window); Mistral-style configs apply any window given.
    window = config.get("sliding_window")
    windowed = config.get("use_sliding_window", window is not None)
    if windowed and (not isinstance(window, int) or window < positions):
        raise Unrewritable("the model uses sliding-window attention")
    if any(kind != "full_attention" for kind in config.get("layer_types") or []):
        raise Unrewritable("the model uses sliding-window attention")
    return heads, _config_int(config, "num_key_value_heads") or heads, positions


def _kv_input(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    found = next((i for i in graph.input if i.name == name), None)
    if found is None:
        raise Unrewritable(f"the graph has no {name} input")
    return found


def rewrite_attention(model: onnx.ModelProto, config: Mapping[str, Any], folder: Path | None = None) -> int:
    """Rewrite `model` in place (see the module's doc); returns the number of layers rewritten. Raises
    `Unrewritable` before changing anything when the graph is not the recognised pattern. `folder` holds the
    graph's external data, if any."""
    heads, kv_heads, positions = _check_config(config)
    graph = model.graph
    g = _Graph(graph, folder)
    inputs = {i.name for i in graph.input}
    if "attention_mask" not in inputs or "position_ids" not in inputs:
        raise Unrewritable("the graph lacks the attention_mask or position_ids input")
    layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
    first_past = _kv_input(graph, "past_key_values.0.key").type.tensor_type
    dims = first_past.shape.dim
    head_dim = dims[3].dim_value if len(dims) == 4 else 0
    if first_past.elem_type == TensorProto.FLOAT16:
        # They run, but matched the exported float16 graph only to float16 precision on the fixture, not id for id.
        raise Unrewritable("float16 graphs are not rewritten (checked to float16 precision only)")
    if first_past.elem_type != TensorProto.FLOAT or not head_dim or dims[1].dim_value not in (0, kv_heads):
        raise Unrewritable("the past_key_values inputs are not [batch, kv_heads, sequence, head_dim] float32 tensors")
    softmaxes = [node for node in graph.node if node.op_type == "Softmax"]
    if len(softmaxes) != layers:
        raise Unrewritable(f"{len(softmaxes)} Softmax nodes at the top level for {layers} layers")
    matched = [_match_layer(g, softmax, layers) for softmax in softmaxes]
    if sorted(layer.index for layer, _ in matched) != list(range(layers)):
        raise Unrewritable("the attention blocks do not map one to one onto the layers")
    tables = {table for _, table in matched}
    if len(tables) != 1:
        raise Unrewritable("the layers use different rotary tables")
    frequencies, scaling = _inverse_frequencies(g, *tables.pop())
    if 2 * frequencies.size != head_dim:
        raise Unrewritable(f"partial rotary ({2 * frequencies.size} of {head_dim} dimensions)")
    _apply(model, [layer for layer, _ in matched], heads, kv_heads, frequencies, scaling, positions)
    return layers


def _apply(
    model: onnx.ModelProto,
    layers: list[_Layer],
    heads: int,
    kv_heads: int,
    frequencies: np.ndarray,
    scaling: float,
    positions: int,
) -> None:
    graph = model.graph
    # The graph's own angle arithmetic, in float32: positions ⊗ inverse frequencies, then cos/sin · scaling.
    angles = np.arange(positions, dtype=np.float32)[:, None] * frequencies[None, :]
    cos_name, sin_name = f"{_PREFIX}_cos_cache", f"{_PREFIX}_sin_cache"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.cos(angles) * np.float32(scaling), cos_name),
            numpy_helper.from_array(np.sin(angles) * np.float32(scaling), sin_name),
        ]
    )
    # The genai graphs' lengths: seqlens_k = valid positions − 1 per row, total = the mask's width.
    one = f"{_PREFIX}_one"
    gather_index = f"{_PREFIX}_index_1"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), one),
            numpy_helper.from_array(np.array(1, dtype=np.int64), gather_index),
        ]
    )
    seqlens, total = f"{_PREFIX}_seqlens_k", f"{_PREFIX}_total_sequence_length"
    lengths = [
        helper.make_node("ReduceSum", ["attention_mask", one], [f"{_PREFIX}_sum"], keepdims=0),
        helper.make_node("Sub", [f"{_PREFIX}_sum", one], [f"{_PREFIX}_sum_1"]),
        helper.make_node("Cast", [f"{_PREFIX}_sum_1"], [seqlens], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], [f"{_PREFIX}_mask_shape"]),
        helper.make_node("Gather", [f"{_PREFIX}_mask_shape", gather_index], [f"{_PREFIX}_width"], axis=0),
        helper.make_node("Cast", [f"{_PREFIX}_width"], [total], to=TensorProto.INT32),
    ]
    replaced = {name for layer in layers for name in layer.replaced}
    attention = {layer.output: layer for layer in layers}
    nodes: list[onnx.NodeProto] = list(lengths)
    for node in graph.node:
        if not replaced.intersection(node.output):
            nodes.append(node)
            continue
        layer = attention.get(node.output[0])
        if layer is None:
            continue
        i = layer.index
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    layer.query,
                    layer.key,
                    layer.value,
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    seqlens,
                    total,
                    cos_name,
                    sin_name,
                ],
                [layer.output, f"present.{i}.key", f"present.{i}.value"],
                name=f"{_PREFIX}_layer_{i}",
                domain=_MS_DOMAIN,
                num_heads=heads,
                kv_num_heads=kv_heads,
                scale=layer.scale,
                do_rotary=1,
                rotary_interleaved=0,
                local_window_size=-1,
            )
        )
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_inputs = [i for i in graph.input if i.name in used]
    del graph.input[:]
    graph.input.extend(kept_inputs)  # position_ids: the kernel derives positions from the lengths
    # Past and present are one buffer of the sequence's capacity.
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dim = value.type.tensor_type.shape.dim[2]
            dim.Clear()
            dim.dim_param = "kv_capacity"
    del graph.value_info[:]  # intermediate shapes of removed nodes
    if not any(o.domain == _MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    _check_rewritten(graph, len(layers))


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` (topologically ordered) without those no graph output depends on."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def _check_rewritten(graph: onnx.GraphProto, layers: int) -> None:
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            continue
        for name in node.input:
            if name.startswith("past_key_values.") or name == "position_ids":
                raise Unrewritable(f"{node.op_type} {node.name} still reads {name}")
            if name == "attention_mask" and not node.output[0].startswith(_PREFIX):
                raise Unrewritable(f"{node.op_type} {node.name} still reads the attention mask")
    if sum(node.op_type == "GroupQueryAttention" for node in graph.node) != layers:
        raise Unrewritable("not every layer was rewritten")


@dataclass
class AttentionRewrite:
    """A `session_for` graph edit for an Optimum decoder: the GroupQueryAttention rewrite plus the last-position
    logits edit, or the latter alone when the rewrite does not apply. After the edit ran, `applied` says which,
    and `reason` why the rewrite did not apply."""

    config: Mapping[str, Any]
    applied: bool = False
    reason: str | None = None
    from_cache: bool = False

    def __call__(self, path: Path) -> EditedGraph | None:
        slot = self._cache_slot(path) if path.stat().st_size > CACHE_EMBEDDED_BYTES else None
        if slot is not None:
            found = read_entry(slot[0] / slot[1], path.name)
            if found is not None:
                self.applied = self.from_cache = True
                return EditedGraph(None, found.parent, found)
        try:
            edited = self._rewrite(path, slot)
        except Unrewritable as error:
            self.reason = str(error)
            log.info("%s: kept Optimum layout: %s", path.name, self.reason)
            return last_position_graph(path)
        self.applied = True
        return edited

    def _rewrite(self, path: Path, slot: tuple[Path, str, dict[str, object]] | None) -> EditedGraph:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # protobuf errors may quote the file's bytes; the plain load reports the problem
            raise Unrewritable("the graph could not be parsed") from None
        embedded = sum(t.ByteSize() for t in model.graph.initializer if not uses_external_data(t))
        if embedded > MAX_EMBEDDED_BYTES:
            raise Unrewritable(f"the graph embeds {embedded / 1e6:.0f} MB of weights (too big to re-serialize)")
        layers = rewrite_attention(model, self.config, path.parent)
        slice_last_position(model, path.name)
        log.info("%s: attention of %d layers rewritten onto GroupQueryAttention (in-place KV cache)", path.name, layers)
        if slot is None or embedded <= CACHE_EMBEDDED_BYTES:
            return EditedGraph(model.SerializeToString(), path.parent)
        root, name, info = slot
        return cached_with_external_data(model, root, name, path.name, info)

    def _cache_slot(self, path: Path) -> tuple[Path, str, dict[str, object]]:
        root = cache_root()
        info: dict[str, object] = {
            "source": str(path),
            "source_sha256": cached_file_hash(path, root),
            "config_sha256": hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest(),
            "edit": f"gqa-rewrite-{REWRITE_VERSION}+last-position-logits",
            "onnx": onnx.__version__,
        }
        key = hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != "source"}, sort_keys=True).encode())
        model = path.parent.parent if path.parent.name == "onnx" else path.parent  # transformers.js: onnx/
        return root, f"{model.name[:48]}-{path.stem[:32]}-gqa-{key.hexdigest()[:20]}", info

    def describe(self) -> str:
        if self.applied:
            return "KV cache in place (attention rewritten onto GroupQueryAttention)"
        return f"kept Optimum layout: {self.reason or 'the graph was not edited'}"
