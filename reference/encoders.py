"""Plain ONNX Runtime + numpy references for multilingual encoders and LLM-style rerankers, one input at a time
(no padding, no batching): what the engine's batched results must equal.

- XLM-RoBERTa (bge-m3, multilingual-e5, bge-reranker): ids `<s> A </s>` / `<s> A </s></s> B </s>` assembled
  here from the tokenizer's pieces, inputs input_ids + attention_mask only; CLS or mean pooling, L2 norm.
- LLM-style rerankers (Qwen3-Reranker model card): the prompt below, an empty KV cache, the last position's
  "no" and "yes" logits; the score is P(yes) = their softmax's second column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

XLMR_BOS, XLMR_EOS = 0, 2  # <s>, </s>
QWEN3_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def _pieces(directory: Path, text: str) -> list[int]:
    return Tokenizer.from_file(str(directory / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_encoder(session: ort.InferenceSession, output: str, ids: list[int]) -> np.ndarray:
    batch = np.array([ids], dtype=np.int64)
    return session.run([output], {"input_ids": batch, "attention_mask": np.ones_like(batch)})[0][0]


def xlmr_vectors(onnx_path: Path, texts: list[str], pooling: str, context: int) -> np.ndarray:
    """Normalized sentence vectors ("cls" or "mean" pooling), texts truncated to `context` tokens."""
    session = _session(onnx_path)
    directory = onnx_path.parent.parent if onnx_path.parent.name == "onnx" else onnx_path.parent
    vectors = []
    for text in texts:
        ids = [XLMR_BOS, *_pieces(directory, text)[: context - 2], XLMR_EOS]
        states = _run_encoder(session, "last_hidden_state", ids)
        vector = states[0] if pooling == "cls" else states.mean(axis=0)
        vectors.append(vector / np.linalg.norm(vector))
    return np.stack(vectors)


def xlmr_pair_ids(directory: Path, query: str, doc: str, context: int) -> list[int]:
    """`<s> query </s></s> doc </s>`, only the document cut to fit `context`."""
    query_ids = _pieces(directory, query)
    doc_ids = _pieces(directory, doc)[: context - len(query_ids) - 4]
    return [XLMR_BOS, *query_ids, XLMR_EOS, XLMR_EOS, *doc_ids, XLMR_EOS]


def xlmr_pair_logits(onnx_path: Path, directory: Path, query: str, docs: list[str], context: int) -> np.ndarray:
    """[docs, labels] relevance logits of a cross-encoder."""
    session = _session(onnx_path)
    rows = [_run_encoder(session, "logits", xlmr_pair_ids(directory, query, doc, context)) for doc in docs]
    return np.array(rows, dtype=np.float64)


def qwen3_rerank_ids(directory: Path, query: str, doc: str, instruction: str, context: int) -> list[int]:
    """The model card's prompt for one pair; the pair text's end (the document) cut to fit `context`."""
    prefix = _pieces(directory, QWEN3_RERANK_PREFIX)
    suffix = _pieces(directory, QWEN3_RERANK_SUFFIX)
    body = _pieces(directory, f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}")
    return prefix + body[: context - len(prefix) - len(suffix)] + suffix


def yes_no_logits(
    onnx_path: Path, directory: Path, query: str, docs: list[str], instruction: str, context: int
) -> np.ndarray:
    """[docs, 2]: the "no" and "yes" logits after each pair's prompt (Optimum decoder, empty cache)."""
    session = _session(onnx_path)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    answers = [tokenizer.token_to_id("no"), tokenizer.token_to_id("yes")]
    rows = []
    for doc in docs:
        ids = np.array([qwen3_rerank_ids(directory, query, doc, instruction, context)], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
        for spec in session.get_inputs():
            if spec.name.startswith("past_key_values"):
                feeds[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype=np.float32)
        rows.append(session.run(["logits"], feeds)[0][0, -1, answers])
    return np.array(rows, dtype=np.float64)


def p_yes(logits: np.ndarray) -> np.ndarray:
    """softmax over ("no", "yes") → P(yes), per row."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp[:, 1] / exp.sum(axis=1)
