"""Convert a GGUF tokenizer with transformers 5.x (run with the .venv-tools-tf5 interpreter).

transformers 4.57.6 converts the Qwen GGUF tokenizer lossily (`<tool_call>` becomes 5 BPE pieces); 5.23 keeps
every added token. Writes tokenizer.json, tokenizer_config.json (with the chat template inlined, for loaders
that only read that file) and chat_template.jinja (when the GGUF has a template: base models have none) into
OUT, then checks that the special tokens are single ids.

usage: python tf5_tokenizer.py GGUF_FILE OUT_DIR [--expect TOKEN=ID ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect", action="append", default=[], help="TOKEN=ID that must encode to exactly one id")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(args.out))
    template = tokenizer.chat_template
    if isinstance(template, str) and template:
        (args.out / "chat_template.jinja").write_text(template, encoding="utf-8")
        config_path = args.out / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        # A base model: nothing to chat with, but it completes text (the plugin's mode=completion).
        print("no chat template in the GGUF: a base model, load it with mode=completion", file=sys.stderr)

    from tokenizers import Tokenizer  # the runtime's view of the file, not transformers'

    runtime = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    for item in args.expect:
        token, _, wanted = item.rpartition("=")
        ids = runtime.encode(token, add_special_tokens=False).ids
        if ids != [int(wanted)]:
            print(f"{token!r} encodes to {ids}, expected [{wanted}]", file=sys.stderr)
            return 1
    print(f"tokenizer: {runtime.get_vocab_size()} ids, {len(runtime.get_added_tokens_decoder())} added tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
