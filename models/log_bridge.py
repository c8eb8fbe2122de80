"""Engine log records reach Dify's plugin log without corrupting the stdout protocol.

The SDK writes each protocol record as two stdout writes (the JSON, then the blank line) from the gevent hub's
thread. A log line written from an engine worker (a real OS thread) could land between them and break the
record, so records from other threads are queued and written by the hub, through the SDK's own log handler.
"""

from __future__ import annotations

import collections
import logging

import gevent
from dify_plugin.config.logger_format import plugin_logger_handler

from engine.native import native_thread_id

ENGINE_LOGGERS = ("engine", "models")


class HubLogHandler(logging.Handler):
    def __init__(self, target: logging.Handler) -> None:
        super().__init__(level=logging.INFO)
        self.target = target
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._hub_thread = native_thread_id()
        self._watcher = gevent.get_hub().loop.async_()  # send() is the loop's one thread-safe operation
        self._watcher.start(self._drain)

    def createLock(self) -> None:
        self.lock = None  # a gevent-patched lock cannot be taken from a real thread; the deque is thread-safe

    def emit(self, record: logging.LogRecord) -> None:
        self._pending.append(record)
        if native_thread_id() == self._hub_thread:
            self._drain()
        else:
            self._watcher.send()

    def _drain(self) -> None:
        while self._pending:
            self.target.handle(self._pending.popleft())


def install() -> None:
    handler = HubLogHandler(plugin_logger_handler)
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
