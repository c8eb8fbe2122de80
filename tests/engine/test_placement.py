"""CPU topology from a fake sysfs tree, core allocation between models, and thread pinning on this machine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.errors import SettingError
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


def test_sharing_when_not_enough_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sys_root, proc_root = fake_sysfs(tmp_path, "0-1", ["0-1"])
    allocator = CoreAllocator(CpuTopology.read(sys_root, proc_root, allowed={0, 1}))
    allocator.place(PlacementSettings("auto"), session(2), "big")
    with caplog.at_level(logging.WARNING):
        shared = allocator.place(PlacementSettings("auto"), session(1), "late")
    assert not shared.exclusive and len(shared.cores or ()) == 1
    assert "sharing cores" in caplog.text


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
