"""Tiny random-weight Qwen2 decoder (byte-level BPE, ChatML + tools template) and its greedy reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from reference.ort_greedy import greedy, session

from .common import copy_files, write_json, write_text
from .export import export_onnx
from .tokenizers_build import ENDOFTEXT, IM_END, PAD

VOCAB_SIZE = 1024
MAX_POSITIONS = 512
MAX_NEW_TOKENS = 32
CHAT_TEMPLATE = (Path(__file__).parent / "chatml_tools.jinja").read_text(encoding="utf-8")
HF_FILES = [
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}

PROMPTS: list[dict[str, Any]] = [
    {"name": "user_only", "messages": [{"role": "user", "content": "Hello! What can you do?"}]},
    {
        "name": "system_user",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Write a Python function that reverses a string."},
        ],
    },
    {"name": "unicode_emoji", "messages": [{"role": "user", "content": "こんにちは 👋 你好，世界 🌍 Ça va? ÆØÅ 🚀"}]},
    {
        "name": "tools_round_trip",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "system", "content": "You help with the weather."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature": 18, "unit": "celsius"}'},
        ],
    },
]


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def qwen2_config(hf_tok: PreTrainedTokenizerFast) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        # Large init: logits spread out, so greedy outputs are varied rather than one repeated id.
        initializer_range=0.5,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        architectures=["Qwen2ForCausalLM"],
        dtype="float32",
    )


def generation_config(hf_tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Written by hand: GenerationConfig.save_pretrained rejects sampling knobs with do_sample=False."""
    return {
        "bos_token_id": hf_tok.bos_token_id,
        "do_sample": False,
        "eos_token_id": [hf_tok.convert_tokens_to_ids(IM_END), hf_tok.convert_tokens_to_ids(ENDOFTEXT)],
        "max_new_tokens": 256,
        "pad_token_id": hf_tok.pad_token_id,
        "repetition_penalty": 1.0,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }


def save_checkpoint(tok: Tokenizer, hf_dir: Path) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    hf_tok = wrap_tokenizer(tok)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen2_config(hf_tok)).eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    # Template inline in tokenizer_config.json; chat_template.jinja is written separately.
    hf_tok.save_pretrained(hf_dir, save_jinja_files=False)
    write_json(hf_dir / "generation_config.json", generation_config(hf_tok))
    write_text(hf_dir / "chat_template.jinja", CHAT_TEMPLATE)
    return model, hf_tok


def greedy_new_ids(model: Any, ids: list[int], gen_cfg: GenerationConfig) -> list[int]:
    """transformers' greedy `generate` from the prompt ids: the new ids, with the EOS that ended it."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            generation_config=gen_cfg,
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
        )
    return out[0, len(ids) :].tolist()


def greedy_case(
    model: Qwen2ForCausalLM, hf_tok: PreTrainedTokenizerFast, gen_cfg: GenerationConfig, case: dict[str, Any]
) -> dict[str, Any]:
    # Render from the key-sorted form that expected_greedy.json stores, so that a consumer
    # re-rendering the stored messages/tools gets exactly the stored prompt (tojson keeps key order).
    case = json.loads(json.dumps(case, sort_keys=True))
    text = hf_tok.apply_chat_template(
        case["messages"], tools=case.get("tools"), add_generation_prompt=True, tokenize=False
    )
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    new = greedy_new_ids(model, ids, gen_cfg)
    return {
        **case,
        "prompt": text,
        "input_ids": ids,
        "output_ids": new,
        "output_text": hf_tok.decode(new, skip_special_tokens=False),
        "stopped_at_eos": bool(new) and new[-1] in gen_cfg.eos_token_id,
    }


def eos_case(model: Qwen2ForCausalLM, hf_tok: PreTrainedTokenizerFast, gen_cfg: GenerationConfig) -> dict[str, Any]:
    """First prompt of a fixed sequence whose greedy output ends with an EOS id.

    Random weights rarely emit EOS, so the four fixed prompts run to the length
    limit; this case gives tests an EOS stop with the real tokenizer and model.
    """
    for k in range(1000):
        case = {"name": "stops_at_eos", "messages": [{"role": "user", "content": f"Tell me story number {k}."}]}
        result = greedy_case(model, hf_tok, gen_cfg, case)
        if result["stopped_at_eos"] and len(result["output_ids"]) > 1:
            return result
    raise SystemExit("no prompt in the search range stops at EOS")


def reference_outputs(model: Qwen2ForCausalLM, hf_tok: PreTrainedTokenizerFast, hf_dir: Path) -> dict[str, Any]:
    gen_cfg = GenerationConfig.from_pretrained(hf_dir)
    cases = [greedy_case(model, hf_tok, gen_cfg, case) for case in PROMPTS]
    cases.append(eos_case(model, hf_tok, gen_cfg))
    return {
        "eos_token_ids": sorted(gen_cfg.eos_token_id),
        "generate": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS},
        "cases": cases,
    }


def check_greedy(onnx_path: Path, expected: dict[str, Any], **kw: int) -> None:
    """Plain onnxruntime greedy decoding (reference.ort_greedy.greedy, `kw` its layout arguments) must give torch's
    tokens."""
    sess = session(onnx_path, inter_op_threads=1)
    eos = set(expected["eos_token_ids"])
    for case in expected["cases"]:
        got = greedy(sess, case["input_ids"], MAX_NEW_TOKENS, eos, **kw)
        if got != case["output_ids"]:
            raise SystemExit(
                f"{onnx_path}: greedy mismatch on {case['name']}:\n  onnx {got}\n  torch {case['output_ids']}"
            )


def build_decoder(tok: Tokenizer, work: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """Returns the HF checkpoint dir (input of the genai builder) and the greedy reference."""
    hf_dir = work / "qwen2-decoder"
    model, hf_tok = save_checkpoint(tok, hf_dir)
    expected = reference_outputs(model, hf_tok, hf_dir)
    export_onnx(hf_dir, "text-generation-with-past", out / "model.onnx")
    check_greedy(out / "model.onnx", expected)
    copy_files(hf_dir, out, [*HF_FILES, "chat_template.jinja"])
    write_json(out / "expected_greedy.json", expected)
    return hf_dir, expected
