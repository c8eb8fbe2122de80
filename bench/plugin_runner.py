"""The plugin side of `make bench-llm`: greedy chat through the real plugin process over the daemon protocol.

The plugin is started as the Dify daemon starts it (tests/plugin/daemon.py: `python -m main`, JSON lines over
stdio) with ONNX_LOCAL_MODEL_ROOTS set to the models directory, and the LLM is invoked streaming with
temperature 0 and a fixed max_tokens. Timing, from this (the daemon's) side of the pipe: TTFT = from sending the
request to the first stream chunk with non-empty content; decode tok/s = (completion_tokens - 1) / (arrival of
the last chunk - arrival of the first content chunk), completion_tokens from the last chunk's usage.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugin.daemon import PluginProcess, error_of, model_request  # noqa: E402


@dataclass(frozen=True)
class PluginSample:
    ttft_s: float
    decode_tokens_per_s: float
    new_tokens: int
    prompt_tokens: int
    text: str


class PluginBench:
    """One plugin process serving one model at one thread count (settings as the engine rows use them)."""

    def __init__(self, models_root: Path, model_dir: Path, threads: int) -> None:
        self.credentials = {
            "model_path": model_dir.name,
            "intra_op_threads": str(threads),
            "cpu_affinity": "none",
            "spin_wait": "on",
            "max_generation_seconds": "0",
            "prefix_cache_mb": "0",  # as bench/llm.py engine_values: like for like with the bare loop
            "speculative_decoding": "off",
        }
        self.process = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(models_root.resolve())})

    def start(self) -> None:
        """Start the plugin and load the model (validate_model_credentials loads it, as Dify's form does)."""
        self.process.start()
        records = self.process.request(self._request("validate_model_credentials"), timeout=600)
        if records[0]["type"] == "error":
            raise RuntimeError(f"plugin could not load {self.credentials['model_path']}: {error_of(records)}")

    def _request(self, action: str, **fields: Any) -> dict[str, Any]:
        return model_request(action, "llm", "bench", self.credentials, **fields)

    def greedy(self, text: str, new_tokens: int) -> PluginSample:
        request = self._request(
            "invoke_llm",
            prompt_messages=[{"role": "user", "content": text}],
            model_parameters={"temperature": 0.0, "max_tokens": new_tokens},
            stop=[],
            tools=[],
            stream=True,
        )
        started = time.perf_counter()
        session = self.process.send(request)
        first_at = last_at = 0.0
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        for record in self.process.iter_session(session, timeout=600):
            if record["type"] == "error":
                raise RuntimeError(f"plugin error: {record['data']}")
            if record["type"] != "stream":
                continue
            last_at = time.perf_counter()
            delta = record["data"]["delta"]
            content = delta["message"]["content"] or ""
            if content and not first_at:
                first_at = last_at
            pieces.append(content)
            usage = delta.get("usage") or usage
        if usage is None or not first_at:
            raise RuntimeError("plugin stream ended without content or usage")
        count = int(usage["completion_tokens"])
        rate = (count - 1) / (last_at - first_at) if count > 1 and last_at > first_at else 0.0
        return PluginSample(first_at - started, rate, count, int(usage["prompt_tokens"]), "".join(pieces))

    def close(self) -> None:
        if self.process.stray:
            print(f"WARNING: plugin wrote non-protocol stdout: {self.process.stray[:3]}", file=sys.stderr)
        self.process.close()
