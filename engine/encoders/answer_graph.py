"""Load-time graph edit for LLM-style rerankers: the vocabulary projection at one given position per row.

A reranker needs each pair's next-token logits at its last prompt token only, but an exported decoder projects
every position onto the vocabulary ([batch, sequence, vocab]: for Qwen3's 151,669-token vocabulary 600 KB per
token, gigabytes per batch). Batches are right-padded — causal attention keeps every real token independent of
the padding after it, whatever the graph does with the attention mask (left padding is not: a real Optimum
export of Qwen2.5 gave other logits for left-padded rows than for the same rows alone) — so each row's answer
sits at its own position. The edit adds an int64 input `onnx_local_answer_positions` [batch, 1] and gathers
those hidden states (GatherND, batch_dims 1) before the head: logits become [batch, 1, vocab].

As for generation's last-position edit, weights stay where they are: in their external-data files (the edited
graph is loaded from memory with ONNX Runtime's external-initializer folder), or, for a graph embedding more
than CACHE_EMBEDDED_BYTES, in an edited copy kept in the quantization cache with its weights as external data.
A graph whose head is not a recognised projection loads unchanged (logits for every position, gathered in numpy).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from onnx.external_data_helper import uses_external_data

from engine.quantize_cache import build_entry, cache_root, cached_file_hash, read_entry
from engine.session_builder import EditedGraph

log = logging.getLogger(__name__)

LOGITS = "logits"
ANSWER_POSITIONS = "onnx_local_answer_positions"
_PROJECTIONS = {"MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Gemm"}
MAX_EMBEDDED_BYTES = 1 << 30  # larger embedded graphs are not re-serialized at all
CACHE_EMBEDDED_BYTES = 32 << 20  # larger embedded graphs are edited once into the cache
EDIT_VERSION = 1
_PREFIX = "onnx_local_answer"


def _cache_slot(path: Path) -> tuple[Path, str, dict[str, object]]:
    root = cache_root()
    info: dict[str, object] = {
        "source": str(path),
        "source_sha256": cached_file_hash(path, root),
        "edit": f"answer-position-logits-{EDIT_VERSION}",
        "onnx": onnx.__version__,
    }
    key = hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != "source"}, sort_keys=True).encode())
    return root, f"{path.parent.name[:48]}-{path.stem[:32]}-answer-{key.hexdigest()[:20]}", info


def _edit(model: onnx.ModelProto, name: str) -> bool:
    """Insert the gather before the head in place; False when the graph is not a recognised decoder head."""
    graph = model.graph
    producers = [node for node in graph.node if LOGITS in node.output]
    outputs = [output for output in graph.output if output.name == LOGITS]
    if len(producers) != 1 or len(outputs) != 1 or any(i.name == ANSWER_POSITIONS for i in graph.input):
        return False
    head, dims = producers[0], outputs[0].type.tensor_type.shape.dim
    if head.op_type not in _PROJECTIONS or len(dims) != 3:
        log.info("%s: the logits come from %s; every position's logits are computed", name, head.op_type)
        return False
    graph.input.append(helper.make_tensor_value_info(ANSWER_POSITIONS, TensorProto.INT64, ["batch_size", 1]))
    axes = helper.make_tensor(f"{_PREFIX}_axes", TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    gather = helper.make_node(
        "GatherND", [head.input[0], ANSWER_POSITIONS], [f"{_PREFIX}_rows"], name=f"{_PREFIX}_gather", batch_dims=1
    )
    unsqueeze = helper.make_node(
        "Unsqueeze", [gather.output[0], axes.name], [f"{_PREFIX}_hidden"], name=f"{_PREFIX}_unsqueeze"
    )
    position = list(graph.node).index(head)
    graph.node.insert(position, unsqueeze)
    graph.node.insert(position, gather)
    head.input[0] = unsqueeze.output[0]
    dims[1].Clear()
    dims[1].dim_value = 1
    return True


def answer_position_graph(path: Path) -> EditedGraph | None:
    """The decoder at `path` with logits at the positions given in `onnx_local_answer_positions` only, or None
    when the edit does not apply."""
    slot = _cache_slot(path) if path.stat().st_size > CACHE_EMBEDDED_BYTES else None
    if slot is not None and (found := read_entry(slot[0] / slot[1], path.name)) is not None:
        return EditedGraph(None, found.parent, found)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf errors may quote the file's bytes; the plain load reports the problem
        return None
    embedded = sum(t.ByteSize() for t in model.graph.initializer if not uses_external_data(t))
    if embedded > MAX_EMBEDDED_BYTES or not _edit(model, path.name):
        return None
    if slot is None or embedded <= CACHE_EMBEDDED_BYTES:
        return EditedGraph(model.SerializeToString(), path.parent)
    root, name, info = slot

    def save(output: Path) -> None:
        onnx.save_model(
            model,
            str(output),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=output.name + ".data",
            size_threshold=1024,
        )

    saved, _ = build_entry(root, name, path.name, save, info)
    log.info("%s: edited graph kept in the cache (%s) with its weights as external data", path.name, saved.parent)
    return EditedGraph(None, saved.parent, saved)
