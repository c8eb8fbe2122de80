"""Real OS threads and locks, whether or not gevent has monkey-patched the stdlib.

`import dify_plugin` runs `gevent.monkey.patch_all()`: afterwards `threading.Thread` starts a greenlet and
`threading.Lock` is a greenlet lock. Engine workers must be real OS threads (ONNX Runtime blocks its caller),
so they take the originals that gevent saved. Without gevent these are simply the stdlib objects.
"""

from __future__ import annotations

import _thread
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _original(module: str, name: str) -> Any:
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched(module):
        return gevent_monkey.get_original(module, name)
    return getattr(_thread, name)


def gevent_active() -> bool:
    """True when threading is monkey-patched, i.e. callers are greenlets on a gevent hub."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    return gevent_monkey is not None and gevent_monkey.is_module_patched("threading")


def allocate_lock() -> Any:
    """A lock that blocks the calling OS thread (not a greenlet lock)."""
    return _original("_thread", "allocate_lock")()


# Held while the engine starts a thread or runs code that starts threads it must identify (an ONNX Runtime
# session's pool threads): the threads that appear meanwhile belong to that code.
_birth_lock = _original("_thread", "allocate_lock")()


def start_thread(target: Callable[[], None]) -> int:
    """Start `target` on a new OS thread; returns its thread identifier."""
    with _birth_lock:
        return _original("_thread", "start_new_thread")(target, ())


def thread_ids() -> set[int]:
    """Kernel ids of this process's threads (/proc/self/task)."""
    return {int(name) for name in os.listdir("/proc/self/task")}


def threads_started_by(action: Callable[[], T]) -> tuple[T, set[int]]:
    """Run `action` and return its result with the ids of the threads it started (and that still run)."""
    with _birth_lock:
        before = thread_ids()
        result = action()
        return result, thread_ids() - before


def native_thread_id() -> int:
    """Kernel thread id of the calling OS thread (the tid in /proc/self/task)."""
    return _original("_thread", "get_native_id")()


class NativeEvent:
    """A threading.Event for OS threads, built on a real lock so gevent patching cannot turn it into a greenlet
    primitive. Waiting blocks the calling OS thread; use it only on worker threads or in plain-thread callers."""

    def __init__(self) -> None:
        self._mutex = allocate_lock()
        self._flag = False
        self._waiters: list[Any] = []

    def set(self) -> None:
        with self._mutex:
            self._flag = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.release()

    def clear(self) -> None:
        with self._mutex:
            self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        with self._mutex:
            if self._flag:
                return True
            waiter = allocate_lock()
            waiter.acquire()
            self._waiters.append(waiter)
        acquired = waiter.acquire(True, -1 if timeout is None else max(0.0, timeout))
        if not acquired:
            with self._mutex:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return acquired or self._flag


def monotonic() -> float:
    return time.monotonic()
