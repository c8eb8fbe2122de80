"""Plain onnxruntime + numpy greedy decoding with the KV cache: what a torch-free runtime does, without the engine.

The reference the fixture builder checks its ONNX exports against and the real-model tests check the model files
with. (The LLM benchmark's bare runner, bench/bare_runner.py, has a faster IOBinding variant of this loop.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(
    path: Path, threads: int = 1, *, inter_op_threads: int | None = None, log_severity: int | None = None
) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads; inter-op threads and log severity stay ORT's defaults unless
    given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    if log_severity is not None:
        options.log_severity_level = log_severity
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def greedy(
    sess: ort.InferenceSession,
    prompt: list[int],
    max_new: int,
    eos: set[int],
    *,
    max_length: int = 0,
    kv_heads: int | None = None,
    head_dim: int | None = None,
) -> list[int]:
    """Greedy decoding: the whole prompt in one pass, then one token a step, `present.*` fed back as
    `past_key_values.*`, until `max_new` tokens or an id in `eos` (which is returned too).

    max_length=0: the past starts zero-length and grows (Optimum graphs; genai graphs without the shared buffer).
    max_length>0: onnxruntime-genai's past_present_share_buffer mode (GroupQueryAttention): the past is preallocated
    to [1, kv_heads, max_length, head_dim], present (same shape) is fed back, and attention_mask (past + current
    length) tells GQA how many slots are valid.
    kv_heads/head_dim: used where the graph leaves that axis of the past symbolic (genai graphs name the head_dim
    axis "kv_cache_dim": take it from genai_config.json or config.json).
    position_ids are fed when the graph has that input (Optimum); genai graphs derive them. The past is float16 when
    the graph's past is, else float32.
    """
    inputs = {i.name: i for i in sess.get_inputs()}
    out_names = [o.name for o in sess.get_outputs()]
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    first = inputs["past_key_values.0.key"]
    _, graph_kv_heads, _, graph_head_dim = first.shape
    heads = _axis(graph_kv_heads, kv_heads, "kv_heads")
    dim = _axis(graph_head_dim, head_dim, "head_dim")
    dtype = np.float16 if first.type == "tensor(float16)" else np.float32
    past = {n: np.zeros((1, heads, max_length, dim), dtype) for n in past_names}
    step = np.array([prompt], np.int64)
    done, new = 0, []
    for _ in range(max_new):
        total = done + step.shape[1]
        feeds = {"input_ids": step, "attention_mask": np.ones((1, total), np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(done, total, dtype=np.int64)[None, :]
        result = dict(zip(out_names, sess.run(None, feeds)))
        token = int(result["logits"][0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        past = {n: result[n.replace("past_key_values.", "present.")] for n in past_names}
        done, step = total, np.array([[token]], np.int64)
    return new


def _axis(graph_value: object, given: int | None, name: str) -> int:
    """The graph's size of an axis when it is fixed, else the given one."""
    if isinstance(graph_value, int):
        return graph_value
    if given is None:
        raise ValueError(f"the graph's past has a symbolic {name} axis ({graph_value!r}): pass {name}=")
    return int(given)
