"""Real English text of mixed length, offline: docstrings of the Python standard library."""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path


def stdlib_docstrings(limit: int = 20000) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    found.append(" ".join(doc.split()))
        if len(found) >= limit:
            break
    return found


def mixed_chunks(count: int, seed: int = 0) -> list[str]:
    """`count` texts from a few words to a few hundred, like chunks of indexed documents."""
    docs = stdlib_docstrings()
    rng = random.Random(seed)
    chunks: list[str] = []
    while len(chunks) < count:
        words = rng.choice(docs).split()
        length = rng.choice([8, 16, 32, 64, 128, 256])
        start = rng.randrange(0, max(1, len(words) - 1))
        chunks.append(" ".join(words[start : start + length]) or words[0])
    return chunks


def queries(count: int, seed: int = 1) -> list[str]:
    docs = stdlib_docstrings()
    rng = random.Random(seed)
    return [" ".join(rng.choice(docs).split()[:6]) for _ in range(count)]
