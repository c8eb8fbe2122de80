"""Plain onnxruntime + numpy greedy decoding (what a torch-free runtime does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def greedy_optimum(sess: ort.InferenceSession, prompt: list[int], max_new: int, eos: set[int]) -> list[int]:
    """Optimum merged decoder: zero-length past first, then feed present.* back as past_key_values.*."""
    inputs = {i.name: i for i in sess.get_inputs()}
    out_names = [o.name for o in sess.get_outputs()]
    past_names = [n for n in inputs if n.startswith("past_key_values.")]
    _, kv_heads, _, head_dim = inputs["past_key_values.0.key"].shape
    past = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in past_names}
    step = np.array([prompt], np.int64)
    done, new = 0, []
    for _ in range(max_new):
        total = done + step.shape[1]
        feeds = {"input_ids": step, "attention_mask": np.ones((1, total), np.int64), **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(done, total, dtype=np.int64)[None, :]
        res = dict(zip(out_names, sess.run(None, feeds)))
        token = int(res["logits"][0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        past = {n: res[n.replace("past_key_values.", "present.")] for n in past_names}
        done, step = total, np.array([[token]], np.int64)
    return new


def greedy_genai(
    sess: ort.InferenceSession,
    prompt: list[int],
    max_new: int,
    eos: set[int],
    *,
    kv_heads: int,
    head_dim: int,
    max_length: int,
    shared_buffer: bool = True,
) -> list[int]:
    """onnxruntime-genai graph (GroupQueryAttention; no position_ids input, GQA derives them).

    shared_buffer=True is the genai runtime's past_present_share_buffer mode: KV buffers
    preallocated to [1, kv_heads, max_length, head_dim], present.* (same shape) fed back
    as past; attention_mask (length past + current) tells GQA how many slots are valid.
    shared_buffer=False grows the past like the Optimum layout (zero-length first).
    The head_dim axis is symbolic ("kv_cache_dim") in the graph: take it from genai_config.
    """
    out_names = [o.name for o in sess.get_outputs()]
    past_names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    capacity = max_length if shared_buffer else 0
    past = {n: np.zeros((1, kv_heads, capacity, head_dim), np.float32) for n in past_names}
    step = np.array([prompt], np.int64)
    done, new = 0, []
    for _ in range(max_new):
        total = done + step.shape[1]
        feeds = {"input_ids": step, "attention_mask": np.ones((1, total), np.int64), **past}
        res = dict(zip(out_names, sess.run(None, feeds)))
        token = int(res["logits"][0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        past = {n: res[n.replace("past_key_values.", "present.")] for n in past_names}
        done, step = total, np.array([[token]], np.int64)
    return new
