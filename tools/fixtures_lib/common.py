"""Determinism, JSON writing and the fixtures' SHA256SUMS, shared by the fixture builders."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reference.files import sha256_file

# Files in the fixtures directory that are written by hand, not by the generator.
HAND_WRITTEN = frozenset({"README.md"})
SUMS_FILE = "SHA256SUMS"


def make_deterministic(seed: int = 0) -> None:
    """Seeds every RNG and forces single-threaded deterministic torch kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # Multi-threaded reductions may sum in a different order from run to run.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def write_json(path: Path, obj: Any) -> None:
    """Writes JSON with sorted keys and a trailing newline (stable bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def copy_files(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dst / name)


def generated_files(root: Path) -> list[str]:
    """Relative POSIX paths of all generated files, sorted."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in HAND_WRITTEN and p.name != SUMS_FILE
    )


def file_hashes(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in generated_files(root)}


def write_sums(root: Path) -> None:
    """Writes SHA256SUMS in `sha256sum` format (two spaces, relative paths, sorted)."""
    lines = [f"{digest}  {rel}\n" for rel, digest in file_hashes(root).items()]
    (root / SUMS_FILE).write_text("".join(lines), encoding="utf-8")


def env_offline() -> None:
    """A wrong local path must fail fast instead of reaching for the Hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
