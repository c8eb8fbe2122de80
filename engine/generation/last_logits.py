"""Load-time graph edit: compute the vocabulary projection for the last positions only.

Exported decoders return logits for every input position ([batch, sequence, vocab]); generation reads only the
last one. During prefill the lm_head then runs on every prompt token — for Qwen2.5-0.5B (151,936-token vocabulary,
tied 136 M-parameter head) that is about a quarter of the prompt's compute plus a [sequence × vocab] float output
(78 MB per 128 tokens). Slicing the hidden state to its last position before the head removes both; decode steps
(one position) are unchanged. How many last positions get logits is an input of the edited graph,
`LOGITS_COUNT` (int64 [1]), which every run of an edited graph feeds: 1, or the number of draft positions a
speculative-decoding verification checks. (An initializer default would spare the feed, but ONNX Runtime's
IOBinding cannot bind an input that has one.)

The edit happens in memory on the graph only: weights stay in their external-data file (ONNX Runtime reads them
from the model's folder, `session.model_external_initializers_file_folder_path`). A graph that embeds its
weights (Optimum / transformers.js files under 2 GB) is edited once and kept in the quantization cache with its
weights as external data, then loaded by path: re-serializing it in memory for every load would hold a second
copy of the weights (Optimum Qwen q4: 1,133 MB added per load in memory, 478 MB by path against 715 MB for a
bare session of the original file). A graph whose head is not the recognised pattern is loaded unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import uses_external_data

from engine.graph_edit import CACHE_EMBEDDED_BYTES, MAX_EMBEDDED_BYTES, cached_with_external_data
from engine.quantize_cache import cache_root, cached_file_hash, read_entry
from engine.session_builder import EditedGraph

log = logging.getLogger(__name__)

LOGITS = "logits"
# Operators that project [batch, sequence, hidden] to [batch, sequence, vocab] with a constant weight.
_PROJECTIONS = {"MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
EDIT_VERSION = 2
_SLICE_NAME = "onnx_local_last_position"
# The edited graph's input: how many last positions get logits (int64 [1]; 1 outside speculative verification).
LOGITS_COUNT = "onnx_local_logits_count"


def _cache_slot(path: Path) -> tuple[Path, str, dict[str, object]]:
    root = cache_root()
    info: dict[str, object] = {
        "source": str(path),
        "source_sha256": cached_file_hash(path, root),
        "edit": f"last-position-logits-{EDIT_VERSION}",
        "onnx": onnx.__version__,
    }
    key = hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != "source"}, sort_keys=True).encode())
    return root, f"{path.parent.name[:48]}-{path.stem[:32]}-lastpos-{key.hexdigest()[:20]}", info


def takes_logits_count(session: object) -> bool:
    """True when `session` runs an edited graph (its runs feed LOGITS_COUNT)."""
    return any(arg.name == LOGITS_COUNT for arg in session.get_inputs())  # type: ignore[attr-defined]


def last_position_graph(path: Path) -> EditedGraph | None:
    """The decoder at `path` with logits for the last position only, or None when the edit does not apply
    (the head is not a recognised projection, or the graph is too big to re-serialize)."""
    slot = _cache_slot(path) if path.stat().st_size > CACHE_EMBEDDED_BYTES else None
    if slot is not None:
        found = read_entry(slot[0] / slot[1], path.name)
        if found is not None:
            return EditedGraph(None, found.parent, found)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf errors may quote the file's bytes; the plain load reports the problem
        return None
    graph = model.graph
    embedded = sum(t.ByteSize() for t in graph.initializer if not uses_external_data(t))
    if embedded > MAX_EMBEDDED_BYTES:
        log.info("%s embeds %.0f MB of weights; logits stay computed for every position", path.name, embedded / 1e6)
        return None
    if not slice_last_position(model, path.name):
        return None
    if slot is None or embedded <= CACHE_EMBEDDED_BYTES:
        return EditedGraph(model.SerializeToString(), path.parent)
    root, name, info = slot
    edited = cached_with_external_data(model, root, name, path.name, info)
    log.info("%s: edited graph kept in the cache (%s) with its weights as external data", path.name, edited.folder)
    return edited


def slice_last_position(model: onnx.ModelProto, label: str) -> bool:
    """Edit `model` in place so its head projects the last position only; False (model untouched) when the
    head is not a recognised projection."""
    graph = model.graph
    producers = [node for node in graph.node if LOGITS in node.output]
    outputs = [output for output in graph.output if output.name == LOGITS]
    if len(producers) != 1 or len(outputs) != 1 or any(n.name == _SLICE_NAME for n in graph.node):
        return False
    head = producers[0]
    dims = outputs[0].type.tensor_type.shape.dim
    if head.op_type not in _PROJECTIONS or len(dims) != 3:
        log.info("%s: the logits come from %s; logits stay computed for every position", label, head.op_type)
        return False
    hidden = head.input[0]
    graph.input.append(helper.make_tensor_value_info(LOGITS_COUNT, TensorProto.INT64, [1]))
    constants = [
        helper.make_tensor(f"{_SLICE_NAME}_{name}", TensorProto.INT64, [1], [value])
        for name, value in (("ends", 1 << 62), ("axes", 1))
    ]
    graph.initializer.extend(constants)
    starts = helper.make_node("Neg", [LOGITS_COUNT], [f"{_SLICE_NAME}_starts"], name=f"{_SLICE_NAME}_neg")
    last = helper.make_node(
        "Slice",
        [hidden, starts.output[0], constants[0].name, constants[1].name],
        [f"{_SLICE_NAME}_hidden"],
        name=_SLICE_NAME,
    )
    at = list(graph.node).index(head)
    graph.node.insert(at, last)
    graph.node.insert(at, starts)
    head.input[0] = last.output[0]
    dims[1].Clear()
    dims[1].dim_param = "logits_positions"
    return True
