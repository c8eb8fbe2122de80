"""Real English text of mixed length, offline: docstrings of the Python standard library."""

from __future__ import annotations

import random

from reference.corpus import stdlib_docstrings


def bench_docstrings() -> list[str]:
    """The benchmark's source texts: docstrings of 40+ characters of the top-level stdlib modules, file by file up
    to 20000."""
    return stdlib_docstrings(min_chars=40, limit=20000)


def mixed_chunks(count: int, seed: int = 0) -> list[str]:
    """`count` texts from a few words to a few hundred, like chunks of indexed documents."""
    docs = bench_docstrings()
    rng = random.Random(seed)
    chunks: list[str] = []
    while len(chunks) < count:
        words = rng.choice(docs).split()
        length = rng.choice([8, 16, 32, 64, 128, 256])
        start = rng.randrange(0, max(1, len(words) - 1))
        chunks.append(" ".join(words[start : start + length]) or words[0])
    return chunks


def queries(count: int, seed: int = 1) -> list[str]:
    docs = bench_docstrings()
    rng = random.Random(seed)
    return [" ".join(rng.choice(docs).split()[:6]) for _ in range(count)]
