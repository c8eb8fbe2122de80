"""The rerank stand-in's training texts: stdlib docstrings (reference.corpus) and queries made from them."""

from __future__ import annotations

import random
import re

from reference.corpus import stdlib_docstrings

_STOP_TEXT = (
    "the a an and or of to in is are be for on with as by this that it its from at if not no can will which when "
    "return returns value values none true false use used using given object default"
)
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[A-Za-z]{3,}")
SKIPPED_DIRS = ("test", "tests", "idlelib", "site-packages", "lib2to3")


def docstrings(min_chars: int = 80, max_chars: int = 800) -> list[str]:
    """Unique docstrings of 80–800 chars, sorted by file then position (tests and idlelib skipped)."""
    return stdlib_docstrings(recursive=True, skip=SKIPPED_DIRS, min_chars=min_chars, max_chars=max_chars, unique=True)


def make_query(doc: str, rng: random.Random) -> str:
    words = [w.lower() for w in _WORD.findall(doc) if w.lower() not in STOP_WORDS]
    if not words:
        return doc[:20]
    return " ".join(rng.sample(words, min(len(words), rng.randint(2, 5))))
