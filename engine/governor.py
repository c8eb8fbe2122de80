"""Adaptive CPU placement: which cores each automatically placed model computes on right now.

Every model placed with `cpu_affinity=auto` gets a session with enough threads for every core of its NUMA node
(or its explicit thread count) and a `Lease` here. The governor knows each lease's threads (the model's worker,
its interactive lane, and the ONNX Runtime pool threads its session created) and whether the model is busy. When
the set of busy models changes, it splits the cores: one busy model computes on all of its node's cores; several
busy models get disjoint shares (interactive models — chat decoding, queries, rerank — take the remainder of an
uneven split); and it re-pins every thread of every model whose share changed (`sched_setaffinity` per thread).
No two busy models compute on the same core unless there are more busy models than cores. Explicit core lists
and `none` are never changed; a busy model with an explicit core list keeps those cores to itself.

One owner: the governor's state is changed only under its lock; busy/idle reports come from any thread and are
cheap (no syscall unless the split changes). A model that goes idle keeps its share for `IDLE_GRACE_S`, so the
short gaps between a caller's requests do not re-pin threads back and forth.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.native import NativeEvent, allocate_lock, monotonic, start_thread

log = logging.getLogger(__name__)

# A model idle for less than this still counts as busy (measured gaps between Dify's batched calls are ms).
IDLE_GRACE_S = 0.25
HISTORY = 32  # re-placements kept for statistics


def compact(cpus: tuple[int, ...] | list[int] | set[int]) -> str:
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


@dataclass(eq=False)
class Lease:
    """One model's place in the governor. `cores` is where its threads may run now."""

    name: str
    node_cores: tuple[int, ...]  # the cores it may ever get (one NUMA node, within the quota)
    max_cores: int  # its session's thread count: more cores would stay idle
    interactive: bool
    adaptive: bool  # False: explicit cores, never moved
    cores: tuple[int, ...]
    governor: CoreGovernor | None = None
    tids: set[int] = field(default_factory=set)
    busy: bool = True  # a model is busy while it loads (its probe runs)
    busy_until: float = 0.0  # idle, but counted busy until then (grace)

    def add_threads(self, tids: set[int] | list[int], pool: bool = False) -> None:
        """Threads that compute for this model (pinned to its current cores now and re-pinned with them).
        `pool`: ONNX Runtime pool threads, which run as SCHED_BATCH when adaptive (see `batch_policy`)."""
        if self.governor is not None:
            self.governor.add_threads(self, set(tids), pool and self.adaptive)

    def set_busy(self, busy: bool) -> None:
        if self.governor is not None and busy != self.busy:
            self.governor.set_busy(self, busy)


def pin_threads(tids: set[int], cores: tuple[int, ...]) -> set[int]:
    """Pin each thread; returns the threads that no longer exist."""
    gone = set()
    for tid in tids:
        try:
            os.sched_setaffinity(tid, set(cores))
        except ProcessLookupError:
            gone.add(tid)
        except OSError as error:  # e.g. a core left the cpuset: keep the thread where it is
            log.warning("could not pin thread %d to cores %s: %s", tid, compact(cores), error)
    return gone


def batch_policy(tids: set[int]) -> None:
    """SCHED_BATCH for an adaptive model's pool threads. When the model's share is smaller than its thread count,
    its pool threads share cores with its worker; a woken SCHED_BATCH thread does not preempt the worker, so
    the worker keeps computing and takes back work the pool thread has not started (ONNX Runtime revokes it),
    instead of switching threads at every operator. Measured on Qwen2.5-0.5B int4 decode, 2-thread session
    confined to one core: 0.92× a 1-thread session with normal pool threads, 1.0× with SCHED_BATCH (2 cores,
    a busy neighbour on the other core; 3 rounds)."""
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # gone, or not permitted: the thread keeps its policy
            log.debug("thread %d keeps its scheduling policy", tid)


class CoreGovernor:
    def __init__(self, pin: Callable[[set[int], tuple[int, ...]], set[int]] = pin_threads) -> None:
        self._pin = pin
        self._lock = allocate_lock()
        self._leases: list[Lease] = []
        self._history: list[dict[str, object]] = []
        self._wake = NativeEvent()
        self.replacements = 0
        self._sharing = False  # more busy models than cores at the last split
        # Expires idle grace periods. Started with the governor (created with the registry, never from a pinned
        # model worker, whose cores the thread would inherit).
        start_thread(self._expire_forever)

    # ---- membership
    def admit(self, lease: Lease) -> Lease:
        """Add a model (busy: it is loading) and give it its share now."""
        with self._lock:
            lease.governor = self
            self._leases.append(lease)
            self._rebalance(f"{lease.name} loads", monotonic())
        return lease

    def release(self, lease: Lease) -> None:
        with self._lock:
            if lease in self._leases:
                self._leases.remove(lease)
                lease.governor = None
                self._rebalance(f"{lease.name} unloaded", monotonic())

    def add_threads(self, lease: Lease, tids: set[int], batch: bool = False) -> None:
        if batch:
            batch_policy(tids)
        with self._lock:
            lease.tids |= tids
            if lease.adaptive:
                lease.tids -= self._pin(tids, lease.cores)

    # ---- activity
    def set_busy(self, lease: Lease, busy: bool) -> None:
        now = monotonic()
        with self._lock:
            if busy == lease.busy:
                return
            lease.busy = busy
            if busy:
                if lease.busy_until > now:  # back within its grace: nothing changed
                    return
                self._rebalance(f"{lease.name} busy", now)
                return
            lease.busy_until = now + IDLE_GRACE_S
        self._wake.set()

    def _expire_forever(self) -> None:
        while True:
            self._wake.wait(None)
            self._wake.clear()
            while True:
                with self._lock:
                    now = monotonic()
                    pending = [lease.busy_until for lease in self._leases if not lease.busy and lease.busy_until > 0]
                    expired = [t for t in pending if t <= now]
                    if expired:
                        for lease in self._leases:
                            if not lease.busy and 0 < lease.busy_until <= now:
                                lease.busy_until = 0.0
                        self._rebalance("idle", now)
                    later = [t for t in pending if t > now]
                if not later:
                    break
                self._wake.wait(max(0.001, min(later) - monotonic()))
                self._wake.clear()

    # ---- the split
    def _active(self, lease: Lease, now: float) -> bool:
        return lease.busy or lease.busy_until > now

    def _rebalance(self, reason: str, now: float) -> None:
        """Under the lock: give each active adaptive model its share and re-pin what moved."""
        active = [lease for lease in self._leases if self._active(lease, now)]
        reserved = {cpu for lease in active if not lease.adaptive for cpu in lease.cores}
        adaptive = [lease for lease in active if lease.adaptive]
        shares = split_cores(adaptive, reserved)
        moved = []
        for lease, cores in shares.items():
            if cores != lease.cores:
                lease.cores = cores
                lease.tids -= self._pin(lease.tids, cores)
                moved.append(lease)
        sharing = len(shares) > len({cpu for cores in shares.values() for cpu in cores})
        if sharing and not self._sharing:  # said once when it starts, not at every re-placement
            log.warning("placement: %d busy models on fewer cores; some share a core", len(shares))
        self._sharing = sharing
        if moved:
            self.replacements += 1
            layout = "; ".join(f"{lease.name} → cores {compact(lease.cores)}" for lease in moved)
            log.info("placement: %s (%s)", layout, reason)
            self._history.append({"reason": reason, "moves": {lease.name: list(lease.cores) for lease in moved}})
            del self._history[:-HISTORY]

    def tenants_per_node(self) -> dict[tuple[int, ...], int]:
        with self._lock:
            counts: dict[tuple[int, ...], int] = {}
            for lease in self._leases:
                counts[lease.node_cores] = counts.get(lease.node_cores, 0) + 1
            return counts

    # ---- visibility
    def snapshot(self) -> dict[str, object]:
        now = monotonic()
        with self._lock:
            return {
                "models": {
                    lease.name: {
                        "cores": list(lease.cores),
                        "threads": len(lease.tids),
                        "adaptive": lease.adaptive,
                        "busy": self._active(lease, now),
                    }
                    for lease in self._leases
                },
                "replacements": self.replacements,
                "recent": list(self._history[-8:]),
            }


def split_cores(leases: list[Lease], reserved: set[int]) -> dict[Lease, tuple[int, ...]]:
    """Disjoint shares of each lease's node for the busy adaptive leases: equal shares capped at each lease's
    thread count, the remainder of an uneven split to interactive models first. More leases than cores on a
    node: one core each, round-robin (the only case where busy models share a core)."""
    shares: dict[Lease, tuple[int, ...]] = {}
    by_node: dict[tuple[int, ...], list[Lease]] = {}
    for lease in leases:
        by_node.setdefault(lease.node_cores, []).append(lease)
    for node, members in by_node.items():
        free = [cpu for cpu in node if cpu not in reserved] or list(node)
        ordered = sorted(members, key=lambda lease: (not lease.interactive, lease.name))
        if len(ordered) > len(free):
            for index, lease in enumerate(ordered):
                shares[lease] = (free[index % len(free)],)
            continue
        counts = {lease: 1 for lease in ordered}
        spare = len(free) - len(ordered)
        while spare > 0:
            growable = [lease for lease in ordered if counts[lease] < lease.max_cores]
            if not growable:
                break
            fewest = min(counts[lease] for lease in growable)
            for lease in growable:
                if spare and counts[lease] == fewest:
                    counts[lease] += 1
                    spare -= 1
        start = 0
        for lease in ordered:
            shares[lease] = tuple(free[start : start + counts[lease]])
            start += counts[lease]
    return shares
