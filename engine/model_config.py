"""What a model directory's JSON configs say: read safely, and the one context-size policy for every model type.

Context size, for embedding, rerank and chat models alike: `auto` is the length the model was trained for (the
smallest of the position limit, the tokenizer's `model_max_length` and sentence-transformers' `max_seq_length`),
or a per-type default when the files say nothing; an explicit size may go up to the position limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError, SettingError
from engine.paths import confined

# Context when the model's files give none.
DEFAULT_CONTEXT = {"text-embedding": 512, "rerank": 512, "llm": 2048}
# The smallest explicit context per type: a chat model needs room for one prompt token and one answer token.
MIN_CONTEXT = {"text-embedding": 1, "rerank": 1, "llm": 2}
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
# RoBERTa-family position ids start after the padding index (padding_idx + 1 = 2), so max_position_embeddings
# (514 for XLM-R, 8194 for bge-m3) is two more than the longest input the graph can take.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert"})


def read_json(path: Path, field: str = "model_path", directory: Path | None = None) -> dict[str, Any]:
    """Read a JSON config file confined to `directory` (default: its own folder, the model directory for the
    callers' `directory / "config.json"`); the error never echoes the file's contents."""
    resolved = confined(path, directory)
    try:
        data = json.loads(resolved.read_text(encoding="utf-8"))
    except OSError:
        raise ModelLoadError(field, f"{path.name} in {path.parent} could not be read") from None
    except ValueError:
        raise ModelLoadError(field, f"{path.name} in {path.parent} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ModelLoadError(field, f"{path.name} in {path.parent} is not a JSON object")
    return data


def read_optional_json(path: Path, directory: Path | None = None) -> dict[str, Any]:
    """`read_json`, or {} when the file does not exist; a link leading outside is refused even then."""
    return read_json(path, directory=directory) if confined(path, directory).is_file() else {}


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def position_limit(directory: Path) -> int | None:
    """The hard limit: how many positions the model has embeddings for (config.json, else genai_config.json)."""
    config = read_optional_json(directory / "config.json")
    for key in _POSITION_KEYS:
        if (value := _positive_int(config.get(key))) is not None:
            if config.get("model_type") in _POSITIONS_AFTER_PADDING:
                pad = config.get("pad_token_id")
                value -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
            return value if value > 0 else None
    genai = read_optional_json(directory / "genai_config.json").get("model", {})
    return _positive_int(genai.get("context_length")) if isinstance(genai, dict) else None


def trained_length(directory: Path) -> int | None:
    """The length the model was trained for: the smallest of the position limit, the tokenizer's
    model_max_length and the sentence-transformers max_seq_length."""
    limits: list[int] = []
    if (hard := position_limit(directory)) is not None:
        limits.append(hard)
    value = read_optional_json(directory / "tokenizer_config.json").get("model_max_length")
    if isinstance(value, int) and 0 < value < 1 << 30:
        limits.append(value)
    value = _positive_int(read_optional_json(directory / "sentence_bert_config.json").get("max_seq_length"))
    if value is not None:
        limits.append(value)
    return min(limits) if limits else None


def resolve_context_size(requested: int | None, directory: Path, model_type: str) -> int:
    """The context a model of `model_type` in `directory` gets for the profile's `context_size` (None: auto)."""
    if requested is None:
        return trained_length(directory) or DEFAULT_CONTEXT[model_type]
    limit = position_limit(directory)
    low = MIN_CONTEXT[model_type]
    if (limit is not None and requested > limit) or requested < low:
        allowed = f"auto or {low} to {limit} (the model's maximum)" if limit is not None else f"auto or at least {low}"
        raise SettingError("context_size", str(requested), allowed)
    return requested
