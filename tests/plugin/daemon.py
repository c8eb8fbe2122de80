"""A stand-in for the Dify plugin daemon: launches the plugin with `python -m main` as the daemon does and
speaks its stdio protocol (JSON lines in; JSON records separated by blank lines out)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class ProtocolError(AssertionError):
    pass


class PluginProcess:
    def __init__(
        self,
        python: str | Path,
        plugin_dir: str | Path = REPO,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.python = str(python)
        self.cpus = cpus  # run the plugin restricted to these CPUs, like a container's cpuset
        self.plugin_dir = Path(plugin_dir)
        self.env = {**os.environ, "INSTALL_METHOD": "local", "HEARTBEAT_INTERVAL": "0.5", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.manifest: dict[str, Any] | None = None
        self.heartbeats: list[float] = []
        self.logs: list[dict[str, Any]] = []
        self.stray: list[str] = []  # stdout lines that are not protocol records (must stay empty)
        self.stderr_lines: list[str] = []
        self._sessions: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def start(self, timeout: float = 120.0) -> dict[str, Any]:
        self.proc = subprocess.Popen(
            [self.python, "-m", "main"],
            cwd=self.plugin_dir,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(timeout):
            self.close()
            raise ProtocolError(f"no heartbeat within {timeout}s; stderr: {self.stderr_tail()}")
        assert self.manifest is not None, "the manifest must be the first record"
        return self.manifest

    def _queue(self, session_id: str) -> queue.Queue[dict[str, Any]]:
        with self._lock:
            return self._sessions.setdefault(session_id, queue.Queue())

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.stray.append(line)
                continue
            event = record.get("event")
            if event is None and self.manifest is None and not self.heartbeats:
                self.manifest = record
            elif event == "heartbeat":
                self.heartbeats.append(time.monotonic())
                self._ready.set()
            elif event == "log":
                self.logs.append(record["data"])
            elif event == "session":
                self._queue(record["session_id"]).put(record["data"])
            else:
                self.stray.append(line)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip())

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_lines[-lines:])

    def send(self, data: dict[str, Any], session_id: str | None = None, full_envelope: bool = False) -> str:
        """Send one request; returns its session id. `full_envelope` adds every field the Go daemon sends."""
        assert self.proc is not None and self.proc.stdin is not None
        session_id = session_id or uuid.uuid4().hex
        message: dict[str, Any] = {"session_id": session_id, "event": "request", "data": data}
        if full_envelope:
            message = {
                "session_id": session_id,
                "conversation_id": None,
                "message_id": None,
                "app_id": None,
                "endpoint_id": None,
                "context": None,
                "event": "request",
                "data": data,
            }
        self._queue(session_id)
        self.proc.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        return session_id

    def iter_session(self, session_id: str, timeout: float = 120.0) -> Iterator[dict[str, Any]]:
        """Records of one session as they arrive, up to and including its `end`."""
        deadline = time.monotonic() + timeout
        session_queue = self._queue(session_id)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"session {session_id} did not end within {timeout}s; stderr: {self.stderr_tail()}")
            try:
                record = session_queue.get(timeout=remaining)
            except queue.Empty:
                continue
            yield record
            if record.get("type") == "end":
                return

    def collect(self, session_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Records of one session up to and including its `end` (exactly one error or ≥0 streams before it)."""
        records = list(self.iter_session(session_id, timeout))
        kinds = [r["type"] for r in records[:-1]]
        if "error" in kinds and kinds != ["error"]:
            raise ProtocolError(f"an error must be the only record before end, got {kinds}")
        return records

    def request(self, data: dict[str, Any], timeout: float = 120.0, **kwargs: Any) -> list[dict[str, Any]]:
        return self.collect(self.send(data, **kwargs), timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def streams(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["data"] for r in records if r["type"] == "stream"]


def error_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["data"] for r in records if r["type"] == "error"]
    if not errors:
        raise ProtocolError(f"expected an error, got {[r['type'] for r in records]}")
    return errors[0]


def model_request(
    action: str, model_type: str, model: str, credentials: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    return {
        "type": "model",
        "user_id": "test-user",
        "action": action,
        "provider": "onnx_local",
        "model_type": model_type,
        "model": model,
        "credentials": credentials,
        **fields,
    }
