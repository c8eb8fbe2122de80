"""Loading a model's Hugging Face tokenizer (`tokenizers`, no transformers)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import ModelLoadError
from engine.paths import confined

# Rayon's global pool would be created by whichever model tokenizes first and inherit that model's CPU
# pinning; tokenizing sequentially on each model's own (pinned) worker thread keeps placement exact.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer

# More characters than tokens span on average in any real text (byte-level BPE and WordPiece tokens are a few
# characters each): text beyond `context × MAX_CHARS_PER_TOKEN` characters cannot reach the model, so it is cut
# before tokenizing instead of tokenizing megabytes to keep the first few hundred tokens.
MAX_CHARS_PER_TOKEN = 64


def load_tokenizer(directory: Path) -> Tokenizer:
    path = confined(directory / "tokenizer.json", directory)
    if not path.is_file():
        raise ModelLoadError("model_path", f"no tokenizer.json in {directory} (the Hugging Face fast-tokenizer file)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # tokenizers raises a bare Exception whose text may quote the file
        raise ModelLoadError("model_path", f"tokenizer.json in {directory} is not a valid tokenizers file") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
