"""Load-time graph edit for LLM-style rerankers: the vocabulary projection at one given position per row.

A reranker needs each pair's next-token logits at its last prompt token only, but an exported decoder projects
every position onto the vocabulary ([batch, sequence, vocab]: for Qwen3's 151,936-wide projection 608 KB per
token, gigabytes per batch). Batches are right-padded — causal attention keeps every real token independent of
the padding after it, whatever the graph does with the attention mask (left padding is not: a real Optimum
export of Qwen2.5 gave other logits for left-padded rows than for the same rows alone) — so each row's answer
sits at its own position. The edit adds an int64 input `onnx_local_answer_positions` [batch, 1] and gathers
those hidden states (GatherND, batch_dims 1) before the head: logits become [batch, 1, vocab].

The edit runs through `engine/graph_edit.py` (weights stay in their files or go to a cached copy). A graph
whose head is not a recognised projection loads unchanged (logits for every position, gathered in numpy).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from engine.graph_edit import edited_graph
from engine.session_builder import EditedGraph

log = logging.getLogger(__name__)

LOGITS = "logits"
ANSWER_POSITIONS = "onnx_local_answer_positions"
_PROJECTIONS = {"MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
EDIT_ID = "answer-logits-v1"
_PREFIX = "onnx_local_answer"


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
    return edited_graph(path, EDIT_ID, functools.partial(_edit, name=path.name))
