"""Tiny random-weight LLM-style reranker: a Qwen3ForCausalLM scored on P("yes") (the Qwen3-Reranker recipe).

Byte-level BPE tokenizer with single tokens for "yes" and "no" (and Qwen3's `<think>` / `</think>`), exported by
Optimum as a merged decoder with past_key_values inputs (Optimum has no Qwen3 entry: Qwen2's export config
describes the same inputs and outputs). The build checks ONNX against torch, one pair at a time and as a
right-padded batch (what the engine runs).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from optimum.exporters.onnx import main_export
from optimum.exporters.onnx.model_configs import Qwen2OnnxConfig
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from reference.encoders import QWEN3_RERANK_INSTRUCTION, QWEN3_RERANK_PREFIX, QWEN3_RERANK_SUFFIX

from .common import copy_files
from .corpus import synthetic_sentences
from .tokenizers_build import ENDOFTEXT, IM_END, train_byte_bpe

VOCAB_SIZE = 1024
MAX_POSITIONS = 512
THINK_TOKENS = ["<think>", "</think>"]
HF_FILES = ["config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]

CHECK_PAIRS = [
    ("how do i bake bread?", "Mix flour, water and yeast, then bake."),
    ("weather in Paris", "The quick brown fox jumps over the lazy dog; 42 times!"),
    ("yes or no", "こんにちは世界"),
]


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE on the synthetic corpus plus yes/no answers, so both are single tokens."""
    answers = [f"{line}\n{'yes' if i % 2 else 'no'}" for i, line in enumerate(synthetic_sentences(3000, seed=1))]
    tok = train_byte_bpe(synthetic_sentences(5000) + answers, VOCAB_SIZE - len(THINK_TOKENS))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    for word in ("yes", "no", *THINK_TOKENS):
        if len(tok.encode(word, add_special_tokens=False).ids) != 1:
            raise SystemExit(f"{word!r} is not a single token")
    return tok


def qwen3_config(hf_tok: PreTrainedTokenizerFast) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,  # as Qwen3-Reranker-0.6B
        initializer_range=0.1,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=hf_tok.convert_tokens_to_ids(IM_END),
        pad_token_id=hf_tok.pad_token_id,
        architectures=["Qwen3ForCausalLM"],
        dtype="float32",
    )


def export_decoder(hf_dir: Path, config: Qwen3Config, dst: Path) -> None:
    onnx_config = Qwen2OnnxConfig(config, task="text-generation", use_past=True, use_past_in_inputs=True)
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        main_export(
            str(hf_dir),
            output=tmp,
            task="text-generation-with-past",
            custom_onnx_configs={"model": onnx_config},
            device="cpu",
            local_files_only=True,
            do_validation=False,
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "model.onnx", dst)


def prompt_ids(hf_tok: PreTrainedTokenizerFast, query: str, document: str) -> list[int]:
    body = f"<Instruct>: {QWEN3_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"
    return hf_tok(QWEN3_RERANK_PREFIX + body + QWEN3_RERANK_SUFFIX, add_special_tokens=False)["input_ids"]


def ort_last_logits(sess: ort.InferenceSession, rows: list[list[int]], pad_id: int) -> np.ndarray:
    """Right-padded batch, empty past: each row's logits after its last token."""
    longest = max(len(row) for row in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    positions = np.broadcast_to(np.arange(longest), ids.shape).copy()
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for inp in sess.get_inputs():
        if inp.name.startswith("past_key_values"):
            feeds[inp.name] = np.zeros((len(rows), inp.shape[1], 0, inp.shape[3]), dtype=np.float32)
    logits = sess.run(["logits"], feeds)[0]
    return logits[np.arange(len(rows)), [len(row) - 1 for row in rows]]


def check_onnx(model: Qwen3ForCausalLM, hf_tok: PreTrainedTokenizerFast, onnx_path: Path) -> None:
    yes, no = hf_tok.convert_tokens_to_ids("yes"), hf_tok.convert_tokens_to_ids("no")
    rows = [prompt_ids(hf_tok, q, d) for q, d in CHECK_PAIRS]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    single = np.concatenate([ort_last_logits(sess, [row], hf_tok.pad_token_id) for row in rows])
    batched = ort_last_logits(sess, rows, hf_tok.pad_token_id)
    with torch.no_grad():
        want = np.stack([model(torch.tensor([row])).logits[0, -1].numpy() for row in rows])
    for name, got in (("single", single), ("right-padded batch", batched)):
        diff = float(np.abs(got[:, [no, yes]] - want[:, [no, yes]]).max())
        if diff > 1e-4:
            raise SystemExit(f"{onnx_path}: {name} ONNX vs torch max diff {diff}")
    spread = want[:, yes] - want[:, no]
    if float(spread.max() - spread.min()) < 0.05:
        raise SystemExit(f"{onnx_path}: yes/no log-odds barely differ between pairs: {spread}")


def build_llm_reranker(work: Path, out: Path) -> None:
    tok = train_tokenizer()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,  # as Qwen3's tokenizer
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    torch.manual_seed(0)
    config = qwen3_config(hf_tok)
    model = Qwen3ForCausalLM(config).eval()
    hf_dir = work / "qwen3-reranker"
    model.save_pretrained(hf_dir, safe_serialization=True)
    hf_tok.save_pretrained(hf_dir, save_jinja_files=False)
    export_decoder(hf_dir, config, out / "model.onnx")
    check_onnx(model, hf_tok, out / "model.onnx")
    copy_files(hf_dir, out, HF_FILES)
