"""The plugin process ends promptly and cleanly: when the daemon closes stdin (how it stops plugins) and on
SIGTERM, failing calls in progress with a clear error."""

from __future__ import annotations

import signal
import sys
import time

from tests.conftest import FIXTURES
from tests.plugin.daemon import REPO, PluginProcess, model_request, streams

EMBEDDER = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}


def started_plugin() -> PluginProcess:
    plugin = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(FIXTURES)})
    plugin.start()
    request = model_request(
        "invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["warm"], input_type="document"
    )
    assert streams(plugin.request(request))  # a model is loaded: its worker thread must not keep the process alive
    return plugin


def wait_exit(plugin: PluginProcess, seconds: float) -> float:
    assert plugin.proc is not None
    started = time.monotonic()
    plugin.proc.wait(seconds)
    return time.monotonic() - started


def test_stdin_closed_ends_the_process_within_two_seconds() -> None:
    plugin = started_plugin()
    try:
        assert plugin.proc is not None and plugin.proc.stdin is not None
        plugin.proc.stdin.close()
        assert wait_exit(plugin, 2.0) < 2.0
        assert plugin.proc.returncode == 0
        assert plugin.stray == []
    finally:
        plugin.close()


def test_sigterm_fails_calls_in_progress_and_exits() -> None:
    plugin = started_plugin()
    try:
        assert plugin.proc is not None
        texts = [f"a long document number {i} " * 60 for i in range(3000)]
        session = plugin.send(
            model_request(
                "invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=texts, input_type="document"
            )
        )
        time.sleep(0.5)
        plugin.proc.send_signal(signal.SIGTERM)
        assert wait_exit(plugin, 2.0) < 2.0
        records = list(plugin.iter_session(session, timeout=1.0))  # raises if the session never ends
        errors = [r["data"] for r in records if r["type"] == "error"]
        assert errors and "shutting down" in errors[0]["message"], records
    finally:
        plugin.close()
