"""CPU topology, core allocation between loaded models, and thread pinning.

Several models in one process must not fight over cores: `auto` placement hands each loaded model its own
cores from the process's allowed CPU set, within the cgroup CPU quota and on one NUMA node, and shares cores
only when there are not enough (with a warning). The topology is read from sysfs/procfs paths that tests can
point at a fake tree.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import SettingError
from engine.governor import CoreGovernor, Lease, compact
from engine.native import native_thread_id
from engine.settings.profile import PlacementSettings, SessionSettings, parse_core_list

log = logging.getLogger(__name__)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class CpuTopology:
    allowed: tuple[int, ...]  # CPUs this process may run on (sched_getaffinity)
    online: tuple[int, ...]  # CPUs that exist and are online
    numa_nodes: tuple[tuple[int, ...], ...]  # CPUs of each NUMA node (one node if sysfs has none)
    quota_cpus: float | None  # cgroup CPU quota in CPUs (None: unlimited)

    @property
    def usable_count(self) -> int:
        """How many cores the process can keep busy: allowed CPUs, capped by the cgroup quota."""
        count = len(self.allowed)
        if self.quota_cpus is not None:
            count = min(count, max(1, math.floor(self.quota_cpus + 1e-9)))
        return max(1, count)

    def node_of(self, cpu: int) -> int:
        for index, cpus in enumerate(self.numa_nodes):
            if cpu in cpus:
                return index
        return 0

    @classmethod
    def read(
        cls,
        sys_root: Path = Path("/sys"),
        proc_root: Path = Path("/proc"),
        allowed: set[int] | None = None,
    ) -> CpuTopology:
        allowed_set = set(os.sched_getaffinity(0)) if allowed is None else set(allowed)
        online_text = _read(sys_root / "devices/system/cpu/online")
        online = parse_core_list("online", online_text) if online_text else tuple(sorted(allowed_set))
        nodes: list[tuple[int, ...]] = []
        node_root = sys_root / "devices/system/node"
        if node_root.is_dir():
            for node_dir in sorted(node_root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
                cpulist = _read(node_dir / "cpulist")
                if cpulist:
                    nodes.append(parse_core_list("cpulist", cpulist))
        if not nodes:
            nodes = [online]
        return cls(
            allowed=tuple(sorted(allowed_set & set(online))) or tuple(sorted(allowed_set)),
            online=online,
            numa_nodes=tuple(nodes),
            quota_cpus=read_cgroup_quota(sys_root, proc_root),
        )


def read_cgroup_quota(sys_root: Path, proc_root: Path) -> float | None:
    """CPU quota of this process's cgroup in CPUs (v2 cpu.max, else v1 cfs files), None when unlimited."""
    cgroup_root = sys_root / "fs/cgroup"
    relative = "/"
    for line in (_read(proc_root / "self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            relative = path or "/"
    candidates = [cgroup_root / relative.lstrip("/"), cgroup_root]
    for directory in candidates:
        text = _read(directory / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota == "max":
                return None
            try:
                return int(quota) / int(period or "100000")
            except ValueError:
                return None
    quota_text = _read(cgroup_root / "cpu/cpu.cfs_quota_us") or _read(cgroup_root / "cpu,cpuacct/cpu.cfs_quota_us")
    period_text = _read(cgroup_root / "cpu/cpu.cfs_period_us") or _read(cgroup_root / "cpu,cpuacct/cpu.cfs_period_us")
    if quota_text and period_text:
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            return None
        return None if quota <= 0 or period <= 0 else quota / period
    return None


@dataclass(frozen=True)
class Placement:
    """What a loaded model got at load: the cores its threads may run on first (None: unpinned), its thread
    count, and its lease in the governor (None: unpinned, or built by hand in tests), which moves the threads
    when the model's share changes."""

    cores: tuple[int, ...] | None
    threads: int
    exclusive: bool  # no other busy model computes on these cores
    lease: Lease | None = field(default=None, compare=False)

    @property
    def adaptive(self) -> bool:
        return self.lease is not None and self.lease.adaptive


def check_explicit_cores(cores: tuple[int, ...], topology: CpuTopology) -> None:
    missing = [cpu for cpu in cores if cpu not in topology.online]
    if missing:
        raise SettingError(
            "cpu_affinity",
            ",".join(map(str, cores)),
            f"cores that exist on this machine (online: {compact(topology.online)}); missing: {compact(missing)}",
        )
    forbidden = [cpu for cpu in cores if cpu not in topology.allowed]
    if forbidden:
        raise SettingError(
            "cpu_affinity",
            ",".join(map(str, cores)),
            f"cores in this process's allowed set ({compact(topology.allowed)}); not allowed: {compact(forbidden)}",
        )


def check_threads(session: SessionSettings, topology: CpuTopology) -> None:
    if session.intra_op_threads is not None and session.intra_op_threads > len(topology.allowed):
        raise SettingError(
            "intra_op_threads",
            str(session.intra_op_threads),
            f"auto or 1 to {len(topology.allowed)} (the CPUs this process may use)",
        )
    if session.inter_op_threads > len(topology.allowed):
        raise SettingError("inter_op_threads", str(session.inter_op_threads), f"1 to {len(topology.allowed)}")


class CoreAllocator:
    """Places models at load: explicit core lists as given, `none` unpinned, `auto` through the governor, whose
    shares then follow which models are busy (engine/governor.py)."""

    def __init__(self, topology: CpuTopology, governor: CoreGovernor | None = None) -> None:
        self.topology = topology
        self.governor = governor or CoreGovernor()

    def usable_cpus(self) -> tuple[int, ...]:
        """Allowed CPUs, limited to as many as the cgroup quota pays for, spread over NUMA nodes in order."""
        return self.topology.allowed[: self.topology.usable_count]

    def place(
        self, placement: PlacementSettings, session: SessionSettings, name: str, interactive: bool = False
    ) -> Placement:
        check_threads(session, self.topology)
        if placement.mode == "none":
            return Placement(None, session.intra_op_threads or self.topology.usable_count, False)
        if placement.mode == "cores":
            check_explicit_cores(placement.cores, self.topology)
            cores = placement.cores
            lease = Lease(name, cores, len(cores), interactive, adaptive=False, cores=cores)
            self.governor.admit(lease)
            return Placement(cores, session.intra_op_threads or len(cores), True, lease)
        node = self._roomiest_node()
        threads = session.intra_op_threads or len(node)
        lease = self.governor.admit(Lease(name, node, threads, interactive, adaptive=True, cores=()))
        return Placement(lease.cores, threads, True, lease)

    def _roomiest_node(self) -> tuple[int, ...]:
        """The usable cores of the NUMA node with the fewest models placed on it (then the most cores)."""
        by_node: dict[int, list[int]] = {}
        for cpu in self.usable_cpus():
            by_node.setdefault(self.topology.node_of(cpu), []).append(cpu)
        tenants = self.governor.tenants_per_node()
        return tuple(min(by_node.values(), key=lambda cpus: (tenants.get(tuple(cpus), 0), -len(cpus))))

    def release(self, placed: Placement) -> None:
        if placed.lease is not None:
            self.governor.release(placed.lease)


def pin_current_thread(cores: tuple[int, ...] | None) -> None:
    """Restrict the calling OS thread (only it, on Linux) to `cores`; ORT pool threads created later inherit it."""
    if cores is not None:
        os.sched_setaffinity(0, set(cores))


def join_placement(placement: Placement) -> None:
    """Pin the calling thread (a model's worker or lane) to the model's cores, and let its lease move it with them."""
    pin_current_thread(placement.cores)
    if placement.lease is not None:
        placement.lease.add_threads({native_thread_id()})


def activity_of(placement: Placement) -> Callable[[bool], None] | None:
    """Where a model's scheduler reports busy / idle (None: nobody follows it)."""
    return placement.lease.set_busy if placement.lease is not None else None


def spinning_enabled(settings: SessionSettings, placement: Placement) -> bool:
    """`auto` spins only on cores the model has to itself for good: spinning speeds up a lone model but steals
    the core from any neighbour (see notes/onnxruntime.md §4). Adaptively placed models do not spin: when their
    share shrinks, their pool threads share cores with their worker, and a spinning pool thread then halves
    the worker's speed (Qwen2.5-0.5B int4 decode confined to one core: 21 tok/s spinning against 39 not);
    alone on two cores, not spinning costs 0–5 % (57–61 against 60–64 tok/s)."""
    if settings.spin_wait == "auto":
        return placement.exclusive and placement.cores is not None and not placement.adaptive
    return settings.spin_wait == "on"


def thread_affinity_string(cores: tuple[int, ...], pool_threads: int) -> str:
    """ORT's session.intra_op_thread_affinities: one entry per pool thread, 1-based CPU ids, each thread
    allowed on all of the model's cores so that the kernel balances within them."""
    entry = ",".join(str(cpu + 1) for cpu in cores)
    return ";".join([entry] * pool_threads)
