"""Tiny random-weight BERT embedder and cross-encoders (WordPiece tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast, PreTrainedModel

from .common import copy_files, write_json
from .export import export_onnx

TOKENIZER_FILES = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
CHECK_PAIRS = [
    ("how do i bake bread?", "Mix flour, water and yeast, then bake."),
    ("weather in Paris", "The quick brown fox jumps over the lazy dog; 42 times!"),
]


def bert_config(vocab_size: int, **extra: object) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
        # Wider than the 0.02 default so that different inputs give clearly different outputs.
        initializer_range=0.2,
        **extra,
    )


def save_tokenizer(tok: Tokenizer, dst: Path) -> BertTokenizerFast:
    hf_tok = BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=True,
        model_max_length=512,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    hf_tok.save_pretrained(dst)
    return hf_tok


def save_checkpoint(model: PreTrainedModel, tok: Tokenizer, hf_dir: Path) -> BertTokenizerFast:
    model.save_pretrained(hf_dir, safe_serialization=True)
    return save_tokenizer(tok, hf_dir)


def check_onnx(model: PreTrainedModel, hf_tok: BertTokenizerFast, onnx_path: Path, output: str) -> None:
    """ONNX output must match torch on a padded pair batch (token_type_ids exercised)."""
    enc = hf_tok([q for q, _ in CHECK_PAIRS], [d for _, d in CHECK_PAIRS], padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    got = sess.run([output], feeds)[0]
    with torch.no_grad():
        want = getattr(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}), output).numpy()
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise SystemExit(f"{onnx_path}: ONNX vs torch max diff {diff}")


def build_embedder(tok: Tokenizer, work: Path, out: Path) -> None:
    torch.manual_seed(0)
    model = BertModel(bert_config(tok.get_vocab_size()), add_pooling_layer=False).eval()
    hf_dir = work / "bert-embedder"
    hf_tok = save_checkpoint(model, tok, hf_dir)
    export_onnx(hf_dir, "feature-extraction", out / "model.onnx")
    check_onnx(model, hf_tok, out / "model.onnx", "last_hidden_state")
    copy_files(hf_dir, out, ["config.json", *TOKENIZER_FILES])
    write_sentence_transformers_files(out, hidden=64)


def write_sentence_transformers_files(out: Path, hidden: int) -> None:
    """The sentence-transformers module layout of all-MiniLM-L6-v2 (mean pooling + normalize)."""
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(out / "sentence_bert_config.json", {"do_lower_case": False, "max_seq_length": 128})
    write_json(
        out / "1_Pooling" / "config.json",
        {
            "include_prompt": True,
            "pooling_mode_cls_token": False,
            "pooling_mode_lasttoken": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_weightedmean_tokens": False,
            "word_embedding_dimension": hidden,
        },
    )


def build_cross_encoder(tok: Tokenizer, work: Path, out: Path, num_labels: int) -> None:
    torch.manual_seed(0)
    config = bert_config(tok.get_vocab_size(), num_labels=num_labels, architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    hf_dir = work / f"bert-cross-encoder-{num_labels}"
    hf_tok = save_checkpoint(model, tok, hf_dir)
    # transformers.js hub layout: the graph lives in onnx/, config and tokenizer at the root.
    export_onnx(hf_dir, "text-classification", out / "onnx" / "model.onnx")
    check_onnx(model, hf_tok, out / "onnx" / "model.onnx", "logits")
    copy_files(hf_dir, out, ["config.json", *TOKENIZER_FILES])
