"""Every thread that computes for a model runs only on that model's cores (read back from /proc)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.api import Engine
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs at least 2 allowed CPUs")


def tids() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/task")}


def allowed_list(tid: int) -> str:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def cpu_ticks(tid: int) -> int:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def profile_for(threads: str, affinity: str, normalize: str = "true"):
    values = {
        "model_path": "tiny-bert-embedder",
        "intra_op_threads": threads,
        "cpu_affinity": affinity,
        "max_batch_size": "64",
        "normalize": normalize,
    }
    return parse_profile(values, "text-embedding", roots=ROOTS)


def model_threads(engine: Engine, profile) -> tuple[set[int], list[int]]:
    """(new threads created by loading the model, the worker's own tid)."""
    before = tids()
    model = engine.registry.get(profile)
    created = tids() - before
    texts = [f"sentence number {i} " * 40 for i in range(64)]
    for _ in range(3):
        engine.embed(profile, texts)
    return created, model.worker.thread_ids


@pytest.mark.parametrize(
    ("threads", "affinity", "expected"),
    [
        ("2", f"{CPUS[0]},{CPUS[1]}", f"{CPUS[0]}-{CPUS[1]}" if CPUS[1] == CPUS[0] + 1 else f"{CPUS[0]},{CPUS[1]}"),
        ("1", str(CPUS[1]), str(CPUS[1])),
    ],
)
def test_explicit_cores(threads: str, affinity: str, expected: str) -> None:
    engine = Engine()
    try:
        created, worker_tids = model_threads(engine, profile_for(threads, affinity))
        assert set(worker_tids) <= created
        # the worker, the interactive lane and (threads - 1) ONNX Runtime pool threads
        assert len(created) == int(threads) + 1
        for tid in created:
            assert allowed_list(tid) == expected, f"thread {tid}"
        assert all(cpu_ticks(tid) >= 0 for tid in created)
        assert sum(cpu_ticks(tid) for tid in created) > 0  # they did the computing
    finally:
        engine.close()


def test_auto_places_two_models_on_disjoint_cores() -> None:
    engine = Engine()
    try:
        first_threads, _ = model_threads(engine, profile_for("1", "auto"))
        second_threads, _ = model_threads(engine, profile_for("1", "auto", normalize="false"))
        first_cores = {allowed_list(tid) for tid in first_threads}
        second_cores = {allowed_list(tid) for tid in second_threads}
        assert len(first_cores) == 1 and len(second_cores) == 1
        assert first_cores != second_cores
        placements = [model.placement for model in engine.registry.loaded()]
        assert all(p.exclusive for p in placements)
        assert not set(placements[0].cores or ()) & set(placements[1].cores or ())
    finally:
        engine.close()
