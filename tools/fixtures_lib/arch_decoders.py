"""Tiny random-weight decoders of the architectures users download besides Qwen2: Llama 3 (SmolLM), Gemma 3, Phi-3 /
Phi-4-mini, Qwen3 and Mistral, each in the Optimum layout and, where the onnxruntime-genai builder builds it, the
genai layout, with Hugging Face `generate` greedy ids as the reference.

Each one reuses the Qwen2 fixture's byte-level BPE with the architecture's own special tokens added (BOS, turn
markers, EOS), a small chat template in the family's style, and the quirks its loader must get right: explicit
head_dim, tied embeddings, partial rotary, llama3 RoPE scaling, sliding windows shorter than the prompts, several
EOS ids, a BOS the tokenizer adds in completion mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from models_lib.architectures import VERIFIED, architecture_of
from tokenizers import Tokenizer, processors
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

from .common import copy_files, write_json, write_text
from .export import export_onnx
from .genai_decoder import build_genai
from .qwen_decoder import CHAT_TEMPLATE as CHATML_TEMPLATE
from .qwen_decoder import HF_FILES, MAX_NEW_TOKENS, PROMPTS, check_greedy, eos_case, greedy_case, greedy_new_ids
from .tokenizers_build import ENDOFTEXT, IM_END, PAD

TF5_PYTHON = str(Path(__file__).resolve().parents[2] / ".venv-tools-tf5" / "bin" / "python")
VOCAB_SIZE = 1040  # the shared BPE (≤ 1024 ids) plus each family's special tokens, rounded up
MAX_POSITIONS = 512
SLIDING_WINDOW = 16  # shorter than every reference prompt, so the window is exercised
COMPLETION_PROMPT = "def fibonacci(n):\n    # return the n-th Fibonacci number"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ message['content'] }}{{ eos_token }}{% else %}[INST] {{ message['content'] }} [/INST]{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """One architecture: its config, tokens and template. `bos` is added by the tokenizer (completion mode) and
    written by the template (chat mode); the first of `eos` is the tokenizer's eos_token."""

    name: str
    config: Callable[[dict[str, int]], PretrainedConfig]  # token ids by text → config
    specials: tuple[str, ...]
    bos: str | None
    eos: tuple[str, ...]
    template: str
    tools: bool = False  # the template renders tools (the ChatML one)


def _common(ids: dict[str, int], family: Family) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        # Large init: logits spread out, so greedy outputs are varied rather than one repeated id.
        "initializer_range": 0.5,
        "bos_token_id": ids[family.bos] if family.bos else ids[ENDOFTEXT],
        "eos_token_id": [ids[t] for t in family.eos],
        "pad_token_id": ids[PAD],
        "dtype": "float32",
    }


def llama(ids: dict[str, int]) -> PretrainedConfig:
    # Llama 3.2 / SmolLM: tied embeddings, llama3 RoPE scaling (its low/high frequency bands matter here).
    return LlamaConfig(
        **_common(ids, LLAMA),
        head_dim=16,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        architectures=["LlamaForCausalLM"],
    )


def llama_plain_rope(ids: dict[str, int]) -> PretrainedConfig:
    """The Llama config without RoPE scaling (what a GGUF written by fixtures_lib.gguf_writer can hold)."""
    config = llama(ids)
    config.rope_scaling = None
    return config


def gemma3(ids: dict[str, int]) -> PretrainedConfig:
    # head_dim (32) is not hidden / heads (16); one sliding and one global layer; tied, scaled embeddings.
    return Gemma3TextConfig(
        # Small init: with tied embeddings scaled by sqrt(hidden), 0.5 makes every output the same token.
        **{**_common(ids, GEMMA3), "initializer_range": 0.05},
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        rope_theta=10000.0,
        rope_local_base_freq=1000.0,
        tie_word_embeddings=True,
        architectures=["Gemma3ForCausalLM"],
    )


def phi3(ids: dict[str, int]) -> PretrainedConfig:
    # Phi-4-mini: partial rotary (0.75 of head_dim: 48 of 64), GQA, tied embeddings, LongRoPE (the short factors
    # apply below original_max_position_embeddings, and the attention scale grows with max / original);
    # fused qkv / gate_up projections. head_dim 64 (hidden / heads): GroupQueryAttention's rotary cache needs
    # rotary_dim / 2 to be a multiple of 8.
    rotary_half = 24
    return Phi3Config(
        **{
            **_common(ids, PHI3),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        },
        partial_rotary_factor=0.75,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        sliding_window=None,
        original_max_position_embeddings=MAX_POSITIONS // 4,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
            "long_factor": [2.0 + 0.2 * i for i in range(rotary_half)],
        },
        architectures=["Phi3ForCausalLM"],
    )


def qwen3(ids: dict[str, int]) -> PretrainedConfig:
    # q/k RMS norms, explicit head_dim (32 ≠ 64 / 4), tied embeddings (Qwen3-0.6B).
    return Qwen3Config(
        **_common(ids, QWEN3),
        head_dim=32,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        use_sliding_window=False,
        architectures=["Qwen3ForCausalLM"],
    )


def mistral(ids: dict[str, int]) -> PretrainedConfig:
    return MistralConfig(
        **_common(ids, MISTRAL),
        head_dim=16,
        sliding_window=SLIDING_WINDOW,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        architectures=["MistralForCausalLM"],
    )


LLAMA = Family(
    "llama",
    llama,
    ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "<|begin_of_text|>",
    ("<|eot_id|>", ENDOFTEXT),
    LLAMA3_TEMPLATE,
)
GEMMA3 = Family(
    "gemma3",
    gemma3,
    ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
    "<bos>",
    ("<eos>", "<end_of_turn>"),
    GEMMA_TEMPLATE,
)
PHI3 = Family(
    "phi3",
    phi3,
    ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>"),
    None,
    ("<|end|>", ENDOFTEXT),
    PHI3_TEMPLATE,
)
QWEN3 = Family("qwen3", qwen3, (), None, (IM_END, ENDOFTEXT), CHATML_TEMPLATE, tools=True)
MISTRAL = Family("mistral", mistral, ("<s>", "</s>", "[INST]", "[/INST]"), "<s>", ("</s>",), MISTRAL_TEMPLATE)
FAMILIES = (LLAMA, GEMMA3, PHI3, QWEN3, MISTRAL)


def family_tokenizer(bpe: Tokenizer, family: Family) -> Tokenizer:
    """The shared BPE plus the family's special tokens; BOS prepended by the post-processor where the family
    has one (what Llama 3, Gemma and Mistral tokenizers do)."""
    tok = Tokenizer.from_str(bpe.to_str())
    tok.add_special_tokens(list(family.specials))
    if tok.get_vocab_size() > VOCAB_SIZE:
        raise SystemExit(f"{family.name}: tokenizer has {tok.get_vocab_size()} ids > {VOCAB_SIZE}")
    if family.bos:
        bos = (family.bos, tok.token_to_id(family.bos))
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A $B", special_tokens=[bos]),
            ]
        )
    return tok


def wrap(tok: Tokenizer, family: Family) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos or ENDOFTEXT,
        eos_token=family.eos[0],
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        chat_template=family.template,
    )


def generation_config(ids: dict[str, int], family: Family) -> dict[str, Any]:
    return {
        "bos_token_id": ids[family.bos] if family.bos else ids[ENDOFTEXT],
        "do_sample": False,
        "eos_token_id": [ids[t] for t in family.eos],
        "max_new_tokens": 256,
        "pad_token_id": ids[PAD],
    }


def completion_case(model: Any, hf_tok: PreTrainedTokenizerFast, gen_cfg: GenerationConfig) -> dict[str, Any]:
    """A base-model call: the text through the tokenizer with its special tokens (BOS where the family has one),
    as the engine's completion mode encodes one user message."""
    ids = hf_tok(COMPLETION_PROMPT)["input_ids"]
    new = greedy_new_ids(model, ids, gen_cfg)
    return {
        "name": "completion",
        "mode": "completion",
        "messages": [{"role": "user", "content": COMPLETION_PROMPT}],
        "prompt": COMPLETION_PROMPT,
        "input_ids": ids,
        "output_ids": new,
        "output_text": hf_tok.decode(new, skip_special_tokens=False),
        "stopped_at_eos": bool(new) and new[-1] in gen_cfg.eos_token_id,
    }


def reference_outputs(
    model: Any, hf_tok: PreTrainedTokenizerFast, hf_dir: Path, family: Family, full: bool = True
) -> dict[str, Any]:
    """Chat cases and a completion case; `full` adds every prompt and the (slow) search for an EOS stop."""
    gen_cfg = GenerationConfig.from_pretrained(hf_dir)
    prompts = [p for p in PROMPTS if family.tools or "tools" not in p] if full else PROMPTS[:1]
    cases = [greedy_case(model, hf_tok, gen_cfg, case) for case in prompts]
    if full:
        cases.append(eos_case(model, hf_tok, gen_cfg))
    cases.append(completion_case(model, hf_tok, gen_cfg))
    return {
        "architecture": family.name,
        "eos_token_ids": sorted(gen_cfg.eos_token_id),
        "generate": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS},
        "cases": cases,
    }


def save_checkpoint(bpe: Tokenizer, family: Family, hf_dir: Path) -> tuple[Any, PreTrainedTokenizerFast]:
    hf_tok = wrap(family_tokenizer(bpe, family), family)
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in (*family.specials, ENDOFTEXT, IM_END, PAD)}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family.config(ids)).eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    hf_tok.save_pretrained(hf_dir, save_jinja_files=False)
    write_json(hf_dir / "generation_config.json", generation_config(ids, family))
    write_text(hf_dir / "chat_template.jinja", family.template)
    return model, hf_tok


def build_family(bpe: Tokenizer, family: Family, work: Path, out_root: Path) -> None:
    """tiny-<name>-decoder (Optimum) and tiny-<name>-decoder-genai (genai builder), both checked against torch."""
    hf_dir = work / f"{family.name}-decoder"
    model, hf_tok = save_checkpoint(bpe, family, hf_dir)
    expected = reference_outputs(model, hf_tok, hf_dir, family)
    out = out_root / f"tiny-{family.name}-decoder"
    export_onnx(hf_dir, "text-generation-with-past", out / "model.onnx")
    check_greedy(out / "model.onnx", expected)
    copy_files(hf_dir, out, [*HF_FILES, "chat_template.jinja"])
    write_json(out / "expected_greedy.json", expected)
    genai = out_root / f"tiny-{family.name}-decoder-genai"
    # The builder under the transformers version convert.py uses for this architecture.
    tf5_python = None if VERIFIED[architecture_of(hf_dir)].genai_under_tf4 else TF5_PYTHON
    build_genai(hf_dir, work / f"{family.name}-genai", genai, expected, int4=False, tf5_python=tf5_python)
    write_json(genai / "expected_greedy.json", expected)


def model_dirs() -> tuple[str, ...]:
    return tuple(f"tiny-{f.name}-decoder{suffix}" for f in FAMILIES for suffix in ("", "-genai"))


def build_all(bpe: Tokenizer, work: Path, out_root: Path) -> None:
    for family in FAMILIES:
        build_family(bpe, family, work, out_root)
