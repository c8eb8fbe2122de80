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
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import SettingError
from engine.native import allocate_lock
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
    """What a loaded model got: the cores its threads may run on (None: unpinned) and its thread count."""

    cores: tuple[int, ...] | None
    threads: int
    exclusive: bool  # no other loaded model shares these cores


def check_explicit_cores(cores: tuple[int, ...], topology: CpuTopology) -> None:
    missing = [cpu for cpu in cores if cpu not in topology.online]
    if missing:
        raise SettingError(
            "cpu_affinity",
            ",".join(map(str, cores)),
            f"cores that exist on this machine (online: {_compact(topology.online)}); missing: {_compact(missing)}",
        )
    forbidden = [cpu for cpu in cores if cpu not in topology.allowed]
    if forbidden:
        raise SettingError(
            "cpu_affinity",
            ",".join(map(str, cores)),
            f"cores in this process's allowed set ({_compact(topology.allowed)}); not allowed: {_compact(forbidden)}",
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


def _compact(cpus: tuple[int, ...] | list[int]) -> str:
    """(0,1,2,5) → '0-2,5'."""
    parts: list[str] = []
    ordered = sorted(cpus)
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        parts.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(parts)


@dataclass
class CoreAllocator:
    """Hands out cores to loaded models; `auto` requests get free cores first, on one NUMA node."""

    topology: CpuTopology
    _users: dict[int, int] = field(default_factory=dict)  # cpu → number of models placed on it
    _lock: object = field(default_factory=allocate_lock)

    def usable_cpus(self) -> tuple[int, ...]:
        """Allowed CPUs, limited to as many as the cgroup quota pays for, spread over NUMA nodes in order."""
        return self.topology.allowed[: self.topology.usable_count]

    def place(self, placement: PlacementSettings, session: SessionSettings, name: str) -> Placement:
        check_threads(session, self.topology)
        with self._lock:  # type: ignore[attr-defined]
            if placement.mode == "none":
                return Placement(None, session.intra_op_threads or self.topology.usable_count, False)
            if placement.mode == "cores":
                check_explicit_cores(placement.cores, self.topology)
                cores = placement.cores
                shared = any(self._users.get(cpu) for cpu in cores)
                self._take(cores)
                return Placement(cores, session.intra_op_threads or len(cores), not shared)
            return self._place_auto(session.intra_op_threads, name)

    def release(self, placed: Placement) -> None:
        if placed.cores is None:
            return
        with self._lock:  # type: ignore[attr-defined]
            for cpu in placed.cores:
                if self._users.get(cpu, 0) > 0:
                    self._users[cpu] -= 1

    def _take(self, cores: tuple[int, ...]) -> None:
        for cpu in cores:
            self._users[cpu] = self._users.get(cpu, 0) + 1

    def _place_auto(self, threads: int | None, name: str) -> Placement:
        usable = self.usable_cpus()
        free = [cpu for cpu in usable if not self._users.get(cpu)]
        by_node: dict[int, list[int]] = {}
        for cpu in free:
            by_node.setdefault(self.topology.node_of(cpu), []).append(cpu)
        wanted = threads
        if wanted is None:  # auto threads: every free core of the roomiest node
            if by_node:
                cores = tuple(max(by_node.values(), key=len))
                self._take(cores)
                return Placement(cores, len(cores), True)
            wanted = 1
        fitting = [cpus for cpus in by_node.values() if len(cpus) >= wanted]
        if fitting:
            cores = tuple(min(fitting, key=len)[:wanted])  # the tightest node that fits keeps big gaps free
            self._take(cores)
            return Placement(cores, wanted, True)
        # Not enough free cores on one node: take the least-used cores, preferring one node.
        ranked = sorted(usable, key=lambda cpu: (self._users.get(cpu, 0), self.topology.node_of(cpu), cpu))
        cores = tuple(sorted(ranked[:wanted]))
        log.warning(
            "model %s: not enough free cores for %d thread(s) (usable: %s); sharing cores %s with other models",
            name,
            wanted,
            _compact(usable),
            _compact(cores),
        )
        self._take(cores)
        return Placement(cores, wanted, False)


def pin_current_thread(cores: tuple[int, ...] | None) -> None:
    """Restrict the calling OS thread (only it, on Linux) to `cores`; ORT pool threads created later inherit it."""
    if cores is not None:
        os.sched_setaffinity(0, set(cores))


def thread_affinity_string(cores: tuple[int, ...], pool_threads: int) -> str:
    """ORT's session.intra_op_thread_affinities: one entry per pool thread, 1-based CPU ids, each thread
    allowed on all of the model's cores so that the kernel balances within them."""
    entry = ",".join(str(cpu + 1) for cpu in cores)
    return ";".join([entry] * pool_threads)
