"""Loading a model's Hugging Face tokenizer (`tokenizers`, no transformers) and its config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError

# Rayon's global pool would be created by whichever model tokenizes first and inherit that model's CPU
# pinning; tokenizing sequentially on each model's own (pinned) worker thread keeps placement exact.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer


def read_json(path: Path, field: str = "model_path") -> dict[str, Any]:
    """Read a JSON config file; the error never echoes the file's contents."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ModelLoadError(field, f"{path.name} in {path.parent} could not be read") from None
    except ValueError:
        raise ModelLoadError(field, f"{path.name} in {path.parent} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModelLoadError(field, f"{path.name} in {path.parent} is not a JSON object")
    return data


def read_optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def load_tokenizer(directory: Path) -> Tokenizer:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError("model_path", f"no tokenizer.json in {directory} (the Hugging Face fast-tokenizer file)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # tokenizers raises a bare Exception whose text may quote the file
        raise ModelLoadError("model_path", f"tokenizer.json in {directory} is not a valid tokenizers file") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def position_limit(directory: Path) -> int | None:
    """The hard limit: how many positions the model has embeddings for (config.json)."""
    config = read_optional_json(directory / "config.json")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_max_length(directory: Path) -> int | None:
    """The default input length: the smallest of the position limit, the tokenizer's model_max_length and the
    sentence-transformers max_seq_length (the length the model was trained for)."""
    limits: list[int] = []
    hard = position_limit(directory)
    if hard is not None:
        limits.append(hard)
    tok_config = read_optional_json(directory / "tokenizer_config.json")
    value = tok_config.get("model_max_length")
    if isinstance(value, int) and 0 < value < 1 << 30:
        limits.append(value)
    st_config = read_optional_json(directory / "sentence_bert_config.json")
    value = st_config.get("max_seq_length")
    if isinstance(value, int) and value > 0:
        limits.append(value)
    return min(limits) if limits else None
