"""Tokenizers trained on the fly (no network): WordPiece for BERT, byte-level BPE for Qwen2."""

from __future__ import annotations

from collections import Counter

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

ENDOFTEXT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"
BPE_SPECIALS = [ENDOFTEXT, IM_START, IM_END, PAD]
# Plain (non-special) added tokens, as in Qwen: kept by decode(skip_special_tokens=True).
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]


def train_wordpiece(corpus: list[str], vocab_size: int = 1000) -> Tokenizer:
    tok = Tokenizer(
        models.WordPiece(wordpiece_vocab(corpus, vocab_size), unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tok.normalizer = bert_normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.add_special_tokens(BERT_SPECIALS)
    return tok


def bert_normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)


def wordpiece_vocab(corpus: list[str], vocab_size: int) -> dict[str, int]:
    """Frequency-based WordPiece vocabulary, fully deterministic.

    tokenizers' WordPieceTrainer assigns the ids of "##x" pieces in hash-map
    order (random per process), which changes the vocabulary from run to run.
    Here: specials, every character (plain and "##"), then the most frequent
    whole words, word prefixes and "##" suffixes; ties broken alphabetically.
    """
    norm, pre = bert_normalizer(), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for line in corpus:
        words.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w})
    tail_chars = sorted({"##" + c for w in words for c in w[1:]})
    candidates: Counter[str] = Counter()
    for word, count in words.items():
        if len(word) > 1:
            candidates[word] += count * len(word)
        for i in range(2, len(word)):
            candidates[word[:i]] += count
        for i in range(1, len(word) - 1):
            candidates["##" + word[i:]] += count
    base = [*BERT_SPECIALS, *chars, *tail_chars]
    room = max(vocab_size - len(base), 0)
    ranked = sorted(candidates.items(), key=lambda kv: (-kv[1], kv[0]))
    known = set(base)
    pieces = base + [piece for piece, _ in ranked if piece not in known][:room]
    return {piece: i for i, piece in enumerate(pieces)}


def train_byte_bpe(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE whose final size (with the tool tokens) is at most vocab_size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),
        min_frequency=2,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    check_byte_bpe(tok, vocab_size)
    return tok


def check_byte_bpe(tok: Tokenizer, vocab_size: int) -> None:
    """Fails loudly if the added tokens split or any Unicode text does not round-trip."""
    if tok.get_vocab_size() > vocab_size:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} ids > model vocab {vocab_size}")
    for token in BPE_SPECIALS + TOOL_TOKENS:
        ids = tok.encode(token, add_special_tokens=False).ids
        if len(ids) != 1:
            raise SystemExit(f"{token!r} encodes to {ids}, expected one id")
    samples = [
        "Hello, world! 👋🌍🚀 ❤️ 👍🏽 👨‍👩‍👧",
        "你好，世界 こんにちは 안녕하세요 Привет ÆØÅ ß ñ",
        "tabs\tand\nnewlines  and  double  spaces \u00a0\u200b\U0001f9ea \ufffd",
        '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>',
    ]
    for text in samples:
        ids = tok.encode(text, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            raise SystemExit(f"round-trip failed: {text!r} -> {back!r}")
