"""CPU topology from a fake sysfs tree, core allocation between models, and thread pinning on this machine."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from engine.errors import SettingError
from engine.governor import CoreGovernor
from engine.placement import CoreAllocator, CpuTopology, thread_affinity_string
from engine.settings.profile import PlacementSettings, SessionSettings


def fake_sysfs(
    tmp: Path, online: str, nodes: list[str], cpu_max: str | None = None, cgroup: str = "0::/\n"
) -> tuple[Path, Path]:
    sys_root, proc_root = tmp / "sys", tmp / "proc"
    (sys_root / "devices/system/cpu").mkdir(parents=True)
    (sys_root / "devices/system/cpu/online").write_text(online + "\n")
    for index, cpulist in enumerate(nodes):
        node = sys_root / f"devices/system/node/node{index}"
        node.mkdir(parents=True)
        (node / "cpulist").write_text(cpulist + "\n")
    (sys_root / "fs/cgroup").mkdir(parents=True)
    if cpu_max is not None:
        relative = cgroup.strip().split(":", 2)[2].lstrip("/")
        (sys_root / "fs/cgroup" / relative).mkdir(parents=True, exist_ok=True)
        (sys_root / "fs/cgroup" / relative / "cpu.max").write_text(cpu_max + "\n")
    (proc_root / "self").mkdir(parents=True)
    (proc_root / "self/cgroup").write_text(cgroup)
    return sys_root, proc_root


def session(threads: int | None = None) -> SessionSettings:
    return SessionSettings(threads, 1, "sequential", "all", "auto")


def test_reads_numa_nodes_and_quota(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(
        tmp_path, "0-7", ["0-3", "4-7"], cpu_max="300000 100000", cgroup="0::/docker/abc\n"
    )
    topo = CpuTopology.read(sys_root, proc_root, allowed=set(range(8)))
    assert topo.numa_nodes == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert topo.quota_cpus == 3.0
    assert topo.usable_count == 3


def test_unlimited_quota_and_no_numa_dir(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-3", [], cpu_max="max 100000")
    topo = CpuTopology.read(sys_root, proc_root, allowed={0, 1, 2, 3})
    assert topo.quota_cpus is None and topo.numa_nodes == ((0, 1, 2, 3),) and topo.usable_count == 4


def test_auto_gives_disjoint_cores_on_one_node(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-7", ["0-3", "4-7"])
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed=set(range(8))))
    first = allocator.place(PlacementSettings("auto"), session(2), "a")
    second = allocator.place(PlacementSettings("auto"), session(3), "b")
    third = allocator.place(PlacementSettings("auto"), session(2), "c")
    for placed in (first, second, third):
        assert placed.exclusive and placed.cores is not None
        nodes = {0 if cpu < 4 else 1 for cpu in placed.cores}
        assert len(nodes) == 1, placed
    assert not set(first.cores) & set(second.cores)  # type: ignore[arg-type]
    assert not set(third.cores) & (set(first.cores) | set(second.cores))  # type: ignore[arg-type]


def test_quota_limits_the_cores_handed_out(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-7", ["0-7"], cpu_max="200000 100000")
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed=set(range(8))))
    placed = allocator.place(PlacementSettings("auto"), session(None), "a")
    assert placed.threads == 2 and len(placed.cores or ()) == 2


class RecordingPin:
    """The governor's pin function, recording instead of calling sched_setaffinity (tids are fake here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[frozenset[int], tuple[int, ...]]] = []

    def __call__(self, tids: set[int], cores: tuple[int, ...]) -> set[int]:
        self.calls.append((frozenset(tids), cores))
        return set()


def two_core_allocator(tmp_path: Path) -> tuple[CoreAllocator, RecordingPin]:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-1", ["0-1"])
    pin = RecordingPin()
    return CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed={0, 1}), CoreGovernor(pin)), pin


def test_a_busy_model_alone_gets_every_core_and_two_busy_models_split_them(tmp_path: Path) -> None:
    allocator, pin = two_core_allocator(tmp_path)
    llm = allocator.place(PlacementSettings("auto"), session(None), "llm", interactive=True)
    assert llm.threads == 2 and llm.cores == (0, 1) and llm.adaptive
    llm.lease.add_threads({101, 102})  # type: ignore[union-attr]
    assert pin.calls[-1] == (frozenset({101, 102}), (0, 1))
    embedder = allocator.place(PlacementSettings("auto"), session(None), "embedder")
    embedder.lease.add_threads({201, 202})  # type: ignore[union-attr]
    assert len(llm.lease.cores) == 1 and len(embedder.lease.cores) == 1  # type: ignore[union-attr]
    assert set(llm.lease.cores).isdisjoint(embedder.lease.cores)  # type: ignore[union-attr]
    assert (frozenset({101, 102}), llm.lease.cores) in pin.calls  # type: ignore[union-attr]
    embedder.lease.busy_until = 0.0  # type: ignore[union-attr]
    governor = allocator.governor
    with governor._lock:  # the embedder goes idle and its grace period has passed
        embedder.lease.busy = False  # type: ignore[union-attr]
        governor._rebalance("test: embedder idle", 0.0)
    assert llm.lease.cores == (0, 1)  # type: ignore[union-attr]
    assert pin.calls[-1] == (frozenset({101, 102}), (0, 1))


def test_idle_grace_then_the_busy_model_grows(tmp_path: Path) -> None:
    allocator, _ = two_core_allocator(tmp_path)
    llm = allocator.place(PlacementSettings("auto"), session(None), "llm", interactive=True).lease
    embedder = allocator.place(PlacementSettings("auto"), session(None), "embedder").lease
    assert llm is not None and embedder is not None and len(llm.cores) == 1
    embedder.set_busy(False)
    assert len(llm.cores) == 1  # still within the grace period
    deadline = time.monotonic() + 5
    while llm.cores != (0, 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.cores == (0, 1)
    embedder.set_busy(True)
    assert set(llm.cores).isdisjoint(embedder.cores)
    snapshot = allocator.governor.snapshot()
    assert snapshot["replacements"] >= 3 and snapshot["models"]["embedder"]["busy"]  # type: ignore[index]


def test_interactive_model_takes_the_remainder_and_thread_counts_cap_shares(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-4", ["0-4"])
    allocator = CoreAllocator(
        CpuTopology.read(sys_root, proc_root, allowed=set(range(5))), CoreGovernor(RecordingPin())
    )
    bulk = allocator.place(PlacementSettings("auto"), session(None), "bulk").lease
    chat = allocator.place(PlacementSettings("auto"), session(None), "chat", interactive=True).lease
    assert chat is not None and bulk is not None
    assert (len(chat.cores), len(bulk.cores)) == (3, 2)
    small = allocator.place(PlacementSettings("auto"), session(1), "small").lease
    assert small is not None and len(small.cores) == 1
    assert sorted(chat.cores + bulk.cores + small.cores) == [0, 1, 2, 3, 4]


def test_more_busy_models_than_cores_share_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    allocator, _ = two_core_allocator(tmp_path)
    allocator.place(PlacementSettings("auto"), session(None), "a")
    allocator.place(PlacementSettings("auto"), session(None), "b")
    with caplog.at_level(logging.WARNING):
        third = allocator.place(PlacementSettings("auto"), session(None), "c")
    assert third.lease is not None and len(third.lease.cores) == 1
    assert "share a core" in caplog.text


def test_explicit_cores_are_never_moved_and_kept_free_while_busy(tmp_path: Path) -> None:
    allocator, pin = two_core_allocator(tmp_path)
    fixed = allocator.place(PlacementSettings("cores", (1,)), session(1), "fixed")
    fixed.lease.add_threads({301})  # type: ignore[union-attr]
    auto = allocator.place(PlacementSettings("auto"), session(None), "auto").lease
    assert auto is not None and auto.cores == (0,)
    assert all(cores == (1,) or 301 not in tids for tids, cores in pin.calls)  # only ever where it was put
    fixed.lease.busy_until = 0.0  # type: ignore[union-attr]
    with allocator.governor._lock:
        fixed.lease.busy = False  # type: ignore[union-attr]
        allocator.governor._rebalance("test: fixed idle", 0.0)
    assert auto.cores == (0, 1) and fixed.lease.cores == (1,)  # type: ignore[union-attr]


def test_release_frees_cores(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-1", ["0-1"])
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed={0, 1}))
    first = allocator.place(PlacementSettings("auto"), session(None), "a")
    assert first.cores == (0, 1)
    allocator.release(first)
    assert allocator.place(PlacementSettings("auto"), session(1), "b").exclusive


def test_explicit_core_must_exist_and_be_allowed(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-3", ["0-3"])
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed={0, 1}))
    with pytest.raises(SettingError, match="^cpu_affinity:.*exist.*missing: 9"):
        allocator.place(PlacementSettings("cores", (0, 9)), session(None), "a")
    with pytest.raises(SettingError, match="^cpu_affinity:.*allowed set.*not allowed: 3"):
        allocator.place(PlacementSettings("cores", (3,)), session(None), "a")


def test_threads_beyond_allowed_cpus(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-3", ["0-3"])
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed={0, 1}))
    with pytest.raises(SettingError, match="^intra_op_threads:.*1 to 2"):
        allocator.place(PlacementSettings("none"), session(3), "a")


def test_affinity_string_is_one_based_per_pool_thread() -> None:
    assert thread_affinity_string((0, 1), 1) == "1,2"
    assert thread_affinity_string((2, 5), 2) == "3,6;3,6"


def test_numa_each_model_stays_on_one_node_and_the_quota_caps_its_share(tmp_path: Path) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-7", ["0-3", "4-7"])
    allocator = CoreAllocator(
        CpuTopology.read(sys_root, proc_root, allowed=set(range(8))), CoreGovernor(RecordingPin())
    )
    first = allocator.place(PlacementSettings("auto"), session(None), "first").lease
    second = allocator.place(PlacementSettings("auto"), session(None), "second").lease
    assert first is not None and second is not None
    assert first.cores == (0, 1, 2, 3) and second.cores == (4, 5, 6, 7)  # a node each, all of it
    third = allocator.place(PlacementSettings("auto"), session(None), "third").lease
    assert third is not None and {cpu < 4 for cpu in third.cores} == {True}
    assert set(third.cores).isdisjoint(first.cores) and len(first.cores) == 2  # the first node is split
    sys_root, proc_root = fake_sysfs(tmp_path / "quota", "0-7", ["0-7"], cpu_max="300000 100000")
    allocator = CoreAllocator(
        CpuTopology.read(sys_root, proc_root, allowed=set(range(8))), CoreGovernor(RecordingPin())
    )
    alone = allocator.place(PlacementSettings("auto"), session(None), "alone")
    assert alone.threads == 3 and alone.cores == (0, 1, 2)
