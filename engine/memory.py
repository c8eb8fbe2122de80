"""The process's memory budget and instance cap, for a process that every workspace shares.

Before a model loads, the registry asks whether it fits: the process's resident memory now, plus what the new
model is expected to add, must stay within the budget, and the loaded instances within the cap. When they would
not, idle models are unloaded least recently used first; when that is not enough, the load is refused with a
busy error naming the figures, instead of pushing every workspace's models into the OOM killer.

The admin sets ONNX_LOCAL_MEMORY_BUDGET_MB (default: 90 % of the cgroup memory limit, else 80 % of the
machine's memory) and ONNX_LOCAL_MAX_MODELS (default 8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.errors import SettingError

BUDGET_ENV = "ONNX_LOCAL_MEMORY_BUDGET_MB"
MAX_MODELS_ENV = "ONNX_LOCAL_MAX_MODELS"
DEFAULT_MAX_MODELS = 8
CGROUP_SHARE = 0.9
MACHINE_SHARE = 0.8
# A session holds about its file (weights, prepacked copies of some) plus activations and the engine's buffers:
# measured loads add 1.1-1.15x the file (genai Qwen int4: 515 MB for 463 MB; MiniLM int8: 72 MB for 63 MB).
LOAD_FACTOR = 1.25
# What any model costs at least (ONNX Runtime session, tokenizer, threads).
MIN_MODEL_BYTES = 16 * 2**20


def _cgroup_limit(sys_root: Path = Path("/sys/fs/cgroup"), proc_root: Path = Path("/proc")) -> int | None:
    """This process's cgroup memory limit in bytes (v2 memory.max, else v1 memory.limit_in_bytes)."""
    relative = "/"
    try:
        for line in (proc_root / "self/cgroup").read_text().splitlines():
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if hierarchy == "0" and controllers == "":
                relative = path or "/"
    except OSError:
        pass
    for candidate in (sys_root / relative.lstrip("/") / "memory.max", sys_root / "memory.max"):
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        return None if text == "max" else int(text)
    try:
        value = int((sys_root / "memory/memory.limit_in_bytes").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value < 1 << 60 else None  # v1 reports "unlimited" as a huge number


def _positive_int_env(name: str, allowed: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(name, raw, allowed) from None
    if value < 1:
        raise SettingError(name, raw, allowed)
    return value


@dataclass(frozen=True)
class MemoryBudget:
    budget_bytes: int
    max_models: int

    @classmethod
    def from_environment(cls) -> MemoryBudget:
        megabytes = _positive_int_env(BUDGET_ENV, "a number of megabytes, 1 or more")
        if megabytes is not None:
            budget = megabytes * 2**20
        else:
            limit = _cgroup_limit()
            budget = int(limit * CGROUP_SHARE) if limit else int(psutil.virtual_memory().total * MACHINE_SHARE)
        models = _positive_int_env(MAX_MODELS_ENV, "a number of models, 1 or more") or DEFAULT_MAX_MODELS
        return cls(budget, models)

    @staticmethod
    def expected_bytes(file_bytes: int) -> int:
        return max(MIN_MODEL_BYTES, int(file_bytes * LOAD_FACTOR))

    @staticmethod
    def resident_bytes() -> int:
        return int(psutil.Process().memory_info().rss)
