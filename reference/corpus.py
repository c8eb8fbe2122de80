"""Real English text without a network: the standard library of the running interpreter, parsed, never imported.

The texts depend on the interpreter's version (the plugin's .venv is Python 3.12, the tools' .venv-tools 3.11), never
on the machine: files are taken sorted by path, docstrings in `ast.walk` order.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Collection
from pathlib import Path

# The nodes `ast.get_docstring` accepts.
DOCSTRING_NODES: tuple[type[ast.AST], ...] = (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Module)


def stdlib_modules(*, recursive: bool = False, skip: Collection[str] = ()) -> list[Path]:
    """The stdlib's .py files sorted by path: the top-level modules, or with `recursive` every file below, leaving
    out those with a path component (relative to the stdlib) in `skip`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.rglob("*.py")) if recursive else sorted(stdlib.glob("*.py"))
    return [path for path in files if not any(part in skip for part in path.relative_to(stdlib).parts)]


def stdlib_docstrings(
    *,
    recursive: bool = False,
    skip: Collection[str] = (),
    nodes: tuple[type[ast.AST], ...] = DOCSTRING_NODES,
    min_chars: int = 1,
    max_chars: int | None = None,
    unique: bool = False,
    limit: int | None = None,
) -> list[str]:
    """Docstrings of the `stdlib_modules(recursive=..., skip=...)`, whitespace runs collapsed to one space.

    nodes: the node types whose docstrings are taken. min_chars/max_chars: bounds on the length of the docstring as
    `ast.get_docstring` returns it (before collapsing whitespace); empty ones are always left out. unique: only the
    first of equal (collapsed) texts. limit: stop after the file with which there are at least that many texts.
    Files that do not parse (or decode) are skipped.
    """
    found: list[str] = []
    seen: set[str] = set()
    for path in stdlib_modules(recursive=recursive, skip=skip):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, nodes):
                continue
            text = ast.get_docstring(node)  # type: ignore[arg-type]
            if not text or len(text) < min_chars or (max_chars is not None and len(text) > max_chars):
                continue
            text = " ".join(text.split())
            if unique:
                if text in seen:
                    continue
                seen.add(text)
            found.append(text)
        if limit is not None and len(found) >= limit:
            break
    return found


def stdlib_lines(file_count: int) -> list[str]:
    """The non-blank source lines of the first `file_count` top-level stdlib modules (sorted by name)."""
    lines: list[str] = []
    for path in stdlib_modules()[:file_count]:
        text = path.read_text(encoding="utf-8", errors="replace")
        lines.extend(line for line in text.splitlines() if line.strip())
    return lines
