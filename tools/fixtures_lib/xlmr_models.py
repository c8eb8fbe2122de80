"""Tiny random-weight XLM-RoBERTa embedder and cross-encoder with a SentencePiece-style Unigram tokenizer.

The layout of bge-m3 / multilingual-e5 (embedders) and bge-reranker (cross-encoder): `<s>=0 <pad>=1 </s>=2
<unk>=3 … <mask>`, Metaspace pre-tokenizer, the pair template `<s> A </s></s> B </s>`, no token_type_ids input,
and positions that start at padding_idx + 1 inside the exported graph (max_position_embeddings = 512 + 2).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    PreTrainedModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

from .common import copy_files, write_json
from .export import export_onnx

XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MASK = "<mask>"
MAX_LENGTH = 512  # usable positions; the position table has two more (padding_idx = 1)
TOKENIZER_FILES = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
CHECK_PAIRS = [
    ("how do i bake bread?", "Mix flour, water and yeast, then bake."),
    ("Wetter in Paris", "こんにちは世界。The quick brown fox jumps over the lazy dog; 42 times!"),
]
LONGEST_PIECE = 12


def _normalizer() -> normalizers.Normalizer:
    # Real XLM-R files use SentencePiece's precompiled NFKC map; plain NFKC is its open equivalent here.
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])


def _metaspace() -> pre_tokenizers.Metaspace:
    return pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")


def unigram_vocab(corpus: list[str], vocab_size: int) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs, fully deterministic.

    tokenizers' UnigramTrainer gives different vocabularies from run to run (Rust hash-map order), so the
    vocabulary is chosen here: specials, every character, then the substrings of the corpus's words (up to 12
    characters) that cover the most characters, ties broken alphabetically; each piece scores log(count / total).
    """
    norm, pre = _normalizer(), _metaspace()
    words: Counter[str] = Counter()
    for line in corpus:
        words.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars: Counter[str] = Counter()
    substrings: Counter[str] = Counter()
    for word, count in words.items():
        for i, char in enumerate(word):
            chars[char] += count
            for j in range(i + 2, min(len(word), i + LONGEST_PIECE) + 1):
                substrings[word[i:j]] += count
    room = vocab_size - len(XLMR_SPECIALS) - 1 - len(chars)  # 1: <mask>, added last
    ranked = sorted(substrings.items(), key=lambda kv: (-kv[1] * (len(kv[0]) - 1), kv[0]))[: max(room, 0)]
    pieces = sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])) + ranked
    total = sum(count for _, count in pieces)
    return [(special, 0.0) for special in XLMR_SPECIALS] + [
        (piece, round(math.log(count / total), 6)) for piece, count in pieces
    ]


def build_unigram(corpus: list[str], vocab_size: int = 1000) -> Tokenizer:
    tok = Tokenizer(models.Unigram(unigram_vocab(corpus, vocab_size), unk_id=XLMR_SPECIALS.index("<unk>")))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _metaspace()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([*XLMR_SPECIALS, AddedToken(MASK, lstrip=True, special=True)])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    if tok.get_vocab_size() != vocab_size:
        raise SystemExit(f"unigram tokenizer has {tok.get_vocab_size()} ids, expected {vocab_size}")
    return tok


def xlmr_config(vocab_size: int, **extra: object) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MAX_LENGTH + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,  # wide: different inputs give clearly different outputs
        **extra,
    )


def save_checkpoint(model: PreTrainedModel, tok: Tokenizer, hf_dir: Path) -> XLMRobertaTokenizerFast:
    model.save_pretrained(hf_dir, safe_serialization=True)
    hf_tok = XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH)
    hf_tok.save_pretrained(hf_dir)
    return hf_tok


def check_onnx(model: PreTrainedModel, hf_tok: XLMRobertaTokenizerFast, onnx_path: Path, output: str) -> None:
    """ONNX must match torch on a right-padded pair batch (position ids skip the padding inside the graph)."""
    enc = hf_tok([q for q, _ in CHECK_PAIRS], [d for _, d in CHECK_PAIRS], padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names != ["input_ids", "attention_mask"]:
        raise SystemExit(f"{onnx_path}: unexpected inputs {names}")
    feeds = {name: enc[name].astype(np.int64) for name in names}
    got = sess.run([output], feeds)[0]
    with torch.no_grad():
        want = getattr(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}), output).numpy()
    mask = feeds["attention_mask"][:, :, None] if got.ndim == 3 else 1
    diff = float(np.abs((got - want) * mask).max())
    if diff > 1e-4:
        raise SystemExit(f"{onnx_path}: ONNX vs torch max diff {diff}")


def write_sentence_transformers_files(out: Path, hidden: int, pooling: str) -> None:
    """bge-m3's module layout: Transformer → Pooling (CLS) → Normalize."""
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(out / "sentence_bert_config.json", {"do_lower_case": False, "max_seq_length": MAX_LENGTH})
    modes = ("cls_token", "lasttoken", "max_tokens", "mean_sqrt_len_tokens", "mean_tokens", "weightedmean_tokens")
    config: dict[str, object] = {f"pooling_mode_{mode}": mode == pooling for mode in modes}
    write_json(out / "1_Pooling" / "config.json", {**config, "word_embedding_dimension": hidden})


def build_embedder(tok: Tokenizer, work: Path, out: Path) -> None:
    """bge-m3 style: CLS pooling declared by sentence-transformers, graph at the root (Optimum layout)."""
    torch.manual_seed(0)
    model = XLMRobertaModel(xlmr_config(tok.get_vocab_size()), add_pooling_layer=False).eval()
    hf_dir = work / "xlmr-embedder"
    hf_tok = save_checkpoint(model, tok, hf_dir)
    export_onnx(hf_dir, "feature-extraction", out / "model.onnx")
    check_onnx(model, hf_tok, out / "model.onnx", "last_hidden_state")
    copy_files(hf_dir, out, ["config.json", *TOKENIZER_FILES])
    write_sentence_transformers_files(out, hidden=64, pooling="cls_token")


def build_cross_encoder(tok: Tokenizer, work: Path, out: Path) -> None:
    """bge-reranker style: one relevance logit, graph under onnx/ (transformers.js layout)."""
    torch.manual_seed(1)
    config = xlmr_config(tok.get_vocab_size(), num_labels=1, architectures=["XLMRobertaForSequenceClassification"])
    model = XLMRobertaForSequenceClassification(config).eval()
    hf_dir = work / "xlmr-cross-encoder"
    hf_tok = save_checkpoint(model, tok, hf_dir)
    export_onnx(hf_dir, "text-classification", out / "onnx" / "model.onnx")
    check_onnx(model, hf_tok, out / "onnx" / "model.onnx", "logits")
    copy_files(hf_dir, out, ["config.json", *TOKENIZER_FILES])
