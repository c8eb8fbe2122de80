"""Deliver results from a worker thread to a waiting caller that may be a greenlet or an OS thread.

A greenlet must not block the gevent hub while ONNX Runtime computes (heartbeats and other requests would
stop), and waiting must not cost a thread per request. Under gevent the channel therefore owns an `async`
watcher of the hub's loop: `send()` is the one loop operation that is safe from another OS thread, and its
callback wakes the waiting greenlet. Without gevent a native event does the same job.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from engine.native import NativeEvent, allocate_lock, gevent_active

T = TypeVar("T")
_CLOSED = object()


class _ThreadWaker:
    def __init__(self) -> None:
        self._event = NativeEvent()

    def notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def close(self) -> None:
        pass


class _GeventWaker:
    def __init__(self) -> None:
        import gevent
        from gevent.event import Event

        self._event = Event()
        self._watcher = gevent.get_hub().loop.async_()
        # Started once, before any producer can send: no wake-up is lost between checks.
        self._watcher.start(self._event.set)
        self._open = True

    def notify(self) -> None:
        if self._open:  # a consumer that stopped early has closed the watcher
            self._watcher.send()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def close(self) -> None:
        self._open = False
        self._watcher.stop()
        self._watcher.close()


# Every channel not yet closed, so that a shutting-down process can end every call exactly once.
_open_channels: weakref.WeakSet[Channel[Any]] = weakref.WeakSet()
_open_lock = allocate_lock()


def close_open_channels(error: BaseException) -> int:
    """End every call still waiting for results with `error` (process shutdown); returns how many."""
    with _open_lock:
        channels = list(_open_channels)
    for channel in channels:
        channel.close(error)
    return len(channels)


class Channel(Generic[T]):
    """An ordered stream of items from one producer thread to one consumer, ended by `close()`.

    The consumer iterates; an error passed to `close()` is raised in the consumer after the items sent
    before it. Create the channel in the consumer's context (greenlet or thread)."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        # Created by the consumer only when it has to wait: a result that is ready (or never awaited) costs no
        # loop watcher.
        self._waker: _ThreadWaker | _GeventWaker | None = None
        self._error: BaseException | None = None
        self._closed = False
        with _open_lock:
            _open_channels.add(self)

    # producer side (any thread)
    def put(self, item: T) -> None:
        self._items.append(item)
        self._notify()

    def close(self, error: BaseException | None = None) -> None:
        if self._closed:
            return
        self._error = error
        self._closed = True
        self._items.append(_CLOSED)
        with _open_lock:
            _open_channels.discard(self)
        self._notify()

    def _notify(self) -> None:
        waker = self._waker  # read after the append: a consumer that installed it re-checks the items after
        if waker is not None:
            waker.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    # consumer side
    def _wait(self) -> None:
        if self._waker is None:
            self._waker = _GeventWaker() if gevent_active() else _ThreadWaker()
            if self._items:  # arrived while the waker was being installed
                return
        self._waker.wait(None)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                while not self._items:
                    self._wait()
                item = self._items.popleft()
                if item is _CLOSED:
                    if self._error is not None:
                        raise self._error
                    return
                yield item
        finally:
            if self._waker is not None:
                self._waker.close()


class Completion(Generic[T]):
    """A single result from a worker thread: `set_result` / `set_error` once, `result()` waits for it."""

    def __init__(self) -> None:
        self._channel: Channel[T] = Channel()
        self._done = False

    def set_result(self, value: T) -> None:
        if not self._done:
            self._done = True
            self._channel.put(value)
            self._channel.close()

    def set_error(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._channel.close(error)

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        for value in self._channel:
            return value
        raise RuntimeError("completion closed without a result")
