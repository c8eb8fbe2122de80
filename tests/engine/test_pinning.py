"""Every thread that computes for a model runs only on that model's cores (read back from /proc)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engine.api import Engine
from engine.governor import compact
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


def profile_for(threads: str, affinity: str, pooling: str = "auto"):
    values = {
        "model_path": "tiny-bert-embedder",
        "intra_op_threads": threads,
        "cpu_affinity": affinity,
        "max_batch_size": "64",
        "pooling": pooling,
        "embedding_cache_mb": "0",  # repeated texts must reach the model: these tests need it busy
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


def busy_loop(engine: Engine, profile, stop: threading.Event) -> None:
    texts = [f"sentence number {i} " * 30 for i in range(64)]
    while not stop.is_set():
        engine.embed(profile, texts)


def cores_of(tids: set[int]) -> set[str]:
    return {allowed_list(tid) for tid in tids if Path(f"/proc/self/task/{tid}").exists()}


def test_adaptive_placement_follows_which_models_are_busy() -> None:
    """Defaults (auto threads, auto affinity): two busy models compute on disjoint cores; one busy model alone
    may use every allowed core."""
    engine = Engine()
    first, second = profile_for("auto", "auto"), profile_for("auto", "auto", pooling="cls")
    try:
        first_threads, _ = model_threads(engine, first)
        second_threads, _ = model_threads(engine, second)
        assert len(first_threads) == len(CPUS) + 1  # worker, interactive lane, pool threads for every core
        stops = [threading.Event(), threading.Event()]
        loops = [threading.Thread(target=busy_loop, args=(engine, p, s)) for p, s in zip((first, second), stops)]
        for loop in loops:
            loop.start()
        both_busy_samples = 0
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and both_busy_samples < 20:
                busy = [m["busy"] for m in engine.placement()["models"].values()]  # type: ignore[union-attr]
                a, b = cores_of(first_threads), cores_of(second_threads)
                if all(busy) and len(busy) == 2:
                    assert len(a) == 1 and len(b) == 1, (a, b)  # each model's threads share one core list
                    assert not set(next(iter(a)).split(",")) & set(next(iter(b)).split(",")), (a, b)
                    both_busy_samples += 1
                time.sleep(0.02)
            assert both_busy_samples >= 5
        finally:
            stops[1].set()
            loops[1].join()
        deadline = time.monotonic() + 5
        alone = set()
        while time.monotonic() < deadline:
            alone = cores_of(first_threads)
            if alone == {compact(CPUS)}:
                break
            time.sleep(0.02)
        assert alone == {compact(CPUS)}  # the busy model alone computes on every core
        stops[0].set()
        loops[0].join()
        stats = engine.stats()
        assert all(
            model["placement"]["adaptive"] and model["placement"]["threads"] == len(CPUS) for model in stats.values()
        )
        assert engine.placement()["replacements"] >= 2
    finally:
        for stop in stops:
            stop.set()
        engine.close()
