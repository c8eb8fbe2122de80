"""tiny-qwen2-decoder-thinking: the tiny Qwen2 decoder's weights and tokenizer with a thinking chat template
(Qwen3 style: the generation prompt opens <think>, enable_thinking=false renders an empty block; no tools).
Built from the finished tiny-qwen2-decoder directory by copying, so it is byte-reproducible whenever that is."""

from __future__ import annotations

import shutil
from pathlib import Path

TEMPLATE = Path(__file__).with_name("thinking_chatml.jinja")
# Everything of the source model but its template (and its greedy reference, which this template changes).
COPIED = (
    "config.json",
    "generation_config.json",
    "model.onnx",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def build_thinking(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(source / name, out / name)
    shutil.copyfile(TEMPLATE, out / "chat_template.jinja")
