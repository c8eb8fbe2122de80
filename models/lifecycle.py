"""How the plugin process reads stdin and ends: invalid Unicode cleaned (models/unicode_guard.py), and an exit
when the daemon closes stdin or on SIGTERM.

The daemon stops a plugin by closing its stdin, but the SDK's stdio reader treats end of file as "no data yet"
and loops for ever, spinning a core. The reader's read is wrapped here so that end of file shuts the plugin
down; SIGTERM does the same. Shutting down fails every call still queued or running with a clear error (the
engine unloads its models, whose schedulers end their calls with EngineClosedError), gives the SDK a moment to
write those errors, and exits. Quantization builds are atomic (a temp folder renamed into place), so an exit in
the middle of one leaves no partial cache entry.
"""

from __future__ import annotations

import logging
import os
import signal

import gevent
from dify_plugin.core.server.stdio import request_reader

from engine import api
from models.unicode_guard import UnicodeGuard

log = logging.getLogger(__name__)

# Long enough for the SDK's greenlets to write the errors of failed calls, short enough to exit within 2 s.
FLUSH_SECONDS = 0.3
# A worker in the middle of an ONNX Runtime run cannot be interrupted; the process exits without waiting for it.
UNLOAD_WAIT_SECONDS = 0.5

_stopping = False


def shutdown(reason: str) -> None:
    """Fail in-flight calls, then end the process (never returns)."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    log.info("plugin shutting down: %s", reason)
    engine = api.existing_engine()
    if engine is not None:
        try:
            engine.shutdown(UNLOAD_WAIT_SECONDS)
        except Exception:  # exiting anyway: say what went wrong, never hang here
            log.exception("shutdown of the engine failed")
    gevent.sleep(FLUSH_SECONDS)
    os._exit(0)


def install() -> None:
    original_read = request_reader.StdioRequestReader._read_async
    guard = UnicodeGuard()

    def read_or_shut_down(self: request_reader.StdioRequestReader) -> bytes:
        while True:
            data = original_read(self)
            if not data:  # end of file: the daemon closed our stdin
                shutdown("stdin closed")
            replaced = guard.replaced
            cleaned = guard.feed(data)
            if guard.replaced > replaced:
                log.warning(
                    "a request held invalid Unicode: %d character(s) replaced by U+FFFD", guard.replaced - replaced
                )
            if cleaned:  # a chunk that only held back a split character: read on
                return cleaned

    request_reader.StdioRequestReader._read_async = read_or_shut_down  # type: ignore[method-assign]
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(shutdown, "SIGTERM"))
