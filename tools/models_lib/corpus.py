"""Real English text without a network: docstrings of the Python standard library (parsed, never imported)."""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

_STOP_TEXT = (
    "the a an and or of to in is are be for on with as by this that it its from at if not no can will which when "
    "return returns value values none true false use used using given object default"
)
STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[A-Za-z]{3,}")


def docstrings(min_chars: int = 80, max_chars: int = 800) -> list[str]:
    """Unique docstrings of 80–800 chars, sorted by file then position (tests and idlelib skipped)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    found: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                text = ast.get_docstring(node)
                if text and min_chars <= len(text) <= max_chars:
                    text = " ".join(text.split())
                    if text not in seen:
                        seen.add(text)
                        found.append(text)
    return found


def make_query(doc: str, rng: random.Random) -> str:
    words = [w.lower() for w in _WORD.findall(doc) if w.lower() not in STOP_WORDS]
    if not words:
        return doc[:20]
    return " ".join(rng.sample(words, min(len(words), rng.randint(2, 5))))
