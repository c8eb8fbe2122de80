"""The small metadata files every model directory carries next to its ONNX files."""

from __future__ import annotations

import shutil
from pathlib import Path

DECODER_META = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]
ENCODER_META = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
]


def copy_meta(
    src: Path, dst: Path, names: list[str], required: tuple[str, ...] = ("config.json", "tokenizer.json")
) -> None:
    for name in names:
        source = src / name
        if not source.is_file():
            if name in required:
                raise FileNotFoundError(f"{name} missing in {src}")
            continue
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
