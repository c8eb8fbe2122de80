"""Helpers for the fidelity tests: sentences, a session, mean pooling, chat prompts and teacher forcing.

Independent of the engine's code on purpose: the fidelity tests check the model files, not the engine. The greedy
decoding loop is reference.ort_greedy.greedy.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from reference import ort_greedy
from reference.corpus import stdlib_docstrings


def stdlib_sentences(count: int = 300) -> list[str]:
    """First sentences of stdlib docstrings (real English, no network), deterministic."""
    found: list[str] = []
    seen: set[str] = set()
    for doc in stdlib_docstrings(nodes=(ast.FunctionDef, ast.ClassDef, ast.Module)):
        sentence = doc.split(". ")[0].strip()
        if 30 <= len(sentence) <= 300 and sentence not in seen:
            seen.add(sentence)
            found.append(sentence)
    step = max(1, len(found) // count)
    return found[::step][:count]


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """The tests' sessions: 2 intra-op threads, ORT warnings off."""
    return ort_greedy.session(path, threads, log_severity=3)


def mean_pooled(sess: ort.InferenceSession, tokenizer: Tokenizer, texts: list[str], batch: int = 32) -> np.ndarray:
    """sentence-transformers all-MiniLM-L6-v2: mean over real tokens, then L2 normalisation."""
    tokenizer.no_padding()  # the shipped tokenizer.json pads to 128: pad tokens would enter the mean
    tokenizer.enable_truncation(256)
    names = {i.name for i in sess.get_inputs()}
    rows = []
    for start in range(0, len(texts), batch):
        encodings = tokenizer.encode_batch(texts[start : start + batch])
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = sess.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        rows.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(rows)


def chat_prompt(directory: Path, user: str) -> str:
    """ChatML as the Qwen template renders it without a system message (default system prompt)."""
    from jinja2 import Environment

    template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=[{"role": "user", "content": user}], add_generation_prompt=True)


def eos_ids(directory: Path) -> set[int]:
    config = json.loads((directory / "generation_config.json").read_text())
    eos = config.get("eos_token_id", [])
    return set(eos if isinstance(eos, list) else [eos])


def teacher_forced_agreement(sess: ort.InferenceSession, prompt: list[int], reference: list[int]) -> float:
    """Share of positions where the model's top-1 next token equals the reference continuation when it is fed the
    reference (one forward over prompt + reference): fidelity without greedy divergence cascades."""
    if not reference:
        return 1.0
    inputs = {i.name: i for i in sess.get_inputs()}
    _, kv_heads, _, head_dim = inputs["past_key_values.0.key"].shape
    ids = np.array([prompt + reference[:-1]], np.int64)
    feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "position_ids" in inputs:
        feeds["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
    for name in inputs:
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    logits = sess.run(["logits"], feeds)[0][0, len(prompt) - 1 :]
    return float((logits.argmax(-1) == np.array(reference)).mean())
