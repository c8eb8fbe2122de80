"""Atomic model directories, sizes and a small build log shared by the model builders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPLETE_MARKER = ".build-complete.json"  # written last: a directory without it is not a finished model


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def say(message: str) -> None:
    print(message, flush=True)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Build into a sibling temp dir, then rename it to `dest`: a half-built model never looks complete.

    A stale temp dir of an interrupted build is removed first; an existing incomplete `dest` is replaced.
    """
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text(
            json.dumps({"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(cmd: Sequence[str], log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a tool; its chatter goes to a log file so the build output stays a short summary."""
    full_env = {**os.environ, **offline_env(), **(env or {})}
    if log_path is None:
        subprocess.run(list(cmd), check=True, env=full_env)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        result = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(
            f"{cmd[0]} … failed (exit {result.returncode}); last lines of {log_path}:\n" + "\n".join(tail)
        )


def offline_env() -> dict[str, str]:
    """A wrong local path must fail fast instead of reaching for the Hugging Face Hub."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",  # keep `make models` output to the build summary
        "TQDM_DISABLE": "1",
    }


def use_offline_env() -> None:
    """Offline flags for this process and its children, and no exporter chatter (TracerWarning, deprecations):
    the step summary lines are what the user reads."""
    os.environ.update(offline_env())
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


@dataclass
class BuildReport:
    """What `make models` prints at the end: one line per model directory."""

    rows: list[tuple[str, str, int, float]] = field(default_factory=list)

    def add(self, name: str, status: str, path: Path, seconds: float) -> None:
        self.rows.append((name, status, dir_size(path) if path.exists() else 0, seconds))

    def print(self) -> None:
        say("")
        say(f"{'model directory':<46} {'status':<8} {'size':>10} {'time':>8}")
        for name, status, size, seconds in self.rows:
            say(f"{name:<46} {status:<8} {human(size):>10} {seconds:>7.1f}s")


@contextmanager
def step(label: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"  - {label} …")
    yield
    say(f"    {label}: {time.monotonic() - started:.1f}s")


def python_for(venv: Path) -> str:
    candidate = venv / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable
