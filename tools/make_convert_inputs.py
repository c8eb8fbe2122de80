#!/usr/bin/env python3
"""Inputs for convert.py's tests (tests/tools/test_convert.py): a tiny Hugging Face checkpoint of every decoder
family convert.py supports, a base-model Llama GGUF without a chat template, and the Hugging Face `generate`
greedy ids each conversion must reproduce.

    .venv-tools/bin/python tools/make_convert_inputs.py OUT_DIR

Writes OUT_DIR/hf/<family>/ (checkpoint), OUT_DIR/llama-base.gguf and OUT_DIR/expected/<name>.json. Random weights
and the fixtures' synthetic tokenizer, no network; takes about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(1, str(TOOLS.parent))  # reference/


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from fixtures_lib.common import env_offline

    env_offline()
    from fixtures_lib import arch_decoders, corpus, gguf_writer, qwen_decoder, tokenizers_build
    from fixtures_lib.common import make_deterministic, write_json

    make_deterministic(0)
    bpe = tokenizers_build.train_byte_bpe(
        corpus.training_corpus(sentences=20000, stdlib_files=40), qwen_decoder.VOCAB_SIZE
    )
    out = args.out.resolve()
    for family in arch_decoders.FAMILIES:
        hf_dir = out / "hf" / family.name
        model, hf_tok = arch_decoders.save_checkpoint(bpe, family, hf_dir)
        reference = arch_decoders.reference_outputs(model, hf_tok, hf_dir, family, full=False)
        write_json(out / "expected" / f"{family.name}.json", reference)
    # The GGUF stores plain RoPE (llama.cpp keeps llama3 scaling in a separate tensor transformers does not read).
    base = dataclasses.replace(arch_decoders.LLAMA, name="llama-base", config=arch_decoders.llama_plain_rope)
    hf_dir = out / "hf" / base.name
    model, hf_tok = arch_decoders.save_checkpoint(bpe, base, hf_dir)
    reference = arch_decoders.reference_outputs(model, hf_tok, hf_dir, base, full=False)
    reference["cases"] = [case for case in reference["cases"] if case.get("mode") == "completion"]
    write_json(out / "expected" / "llama-base.json", reference)
    gguf_writer.write_llama_gguf(hf_dir, out / "llama-base.gguf")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
