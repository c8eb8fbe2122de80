"""llama.cpp side of `make bench-llm`: greedy generation on a GGUF with llama-cpp-python, timed like the others.

Runs in its own environment (.venv-llamacpp, `make bench-llm-env`), never the plugin's. Loads the model once with
the given thread count, then serves requests as JSON lines: each stdin line {"prompt": [token ids],
"new_tokens": N} gets one stdout line {"ttft_s", "decode_tokens_per_s", "new_tokens", "ids", "eos_at"}. The
prompt is given as token ids (the ONNX tokenizer's, same vocabulary), so every system reads the same prompt.

Timing, as for the ONNX Runtime systems: TTFT = from the call to the first sampled token (prefill + first
sample); decode tok/s = (n - 1) / (t_last - t_first). Exactly N tokens are generated (EOS does not stop it; its
position is reported as eos_at) so every system decodes the same count.

    echo '{"prompt": [151644, 872, 198], "new_tokens": 8}' | \
        .venv-llamacpp/bin/python bench/llamacpp_runner.py --gguf model.gguf --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any


def private_stdout() -> IO[str]:
    """A handle on the real stdout for our JSON; fd 1 then points at stderr, so C-level logs cannot corrupt it."""
    real = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return real


def load(gguf: str, threads: int, context: int, flash_attn: bool) -> Any:
    from llama_cpp import Llama

    # n_batch covers the whole prompt (one prefill pass, like the bare ONNX Runtime loop); n_ubatch is
    # llama.cpp's default physical batch.
    return Llama(
        model_path=gguf,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=context,
        n_batch=context,
        n_ubatch=512,
        flash_attn=flash_attn,
        n_gpu_layers=0,
        verbose=False,
    )


def greedy(llm: Any, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    llm.reset()  # no KV-prefix reuse between runs: every run prefills the whole prompt
    eos = llm.token_eos()
    ids: list[int] = []
    started = time.perf_counter()
    first_at = started
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=False):
        ids.append(int(token))
        if len(ids) == 1:
            first_at = time.perf_counter()
        if len(ids) >= new_tokens:
            break
    end = time.perf_counter()
    rate = (len(ids) - 1) / (end - first_at) if len(ids) > 1 else 0.0
    eos_at = ids.index(eos) if eos in ids else None
    timings = {"ttft_s": first_at - started, "decode_tokens_per_s": rate, "new_tokens": len(ids)}
    return {**timings, "ids": ids, "eos_at": eos_at}


def describe(llm: Any) -> dict[str, Any]:
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": info.decode() if isinstance(info, bytes) else str(info),
        "n_vocab": llm.n_vocab(),
    }


class JsonLinesProcess:
    """The bench side of a runner script: starts it and exchanges one JSON line per request with it. Shared
    with bench/bare_runner.py (this module imports nothing outside the standard library until main runs)."""

    def __init__(self, command: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()  # the runner's first line: ready, with what it loaded

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} runner exited with {self.proc.wait()}")
        return json.loads(line)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class LlamaCppClient(JsonLinesProcess):
    """The bench side (plugin venv): runs this script in the llama.cpp env."""

    def __init__(self, python: Path, gguf: Path, threads: int, flash_attn: bool = False) -> None:
        command = [str(python), __file__, "--gguf", str(gguf), "--threads", str(threads)]
        if flash_attn:
            command.append("--flash-attn")
        super().__init__(command, "llama.cpp")

    def greedy(self, prompt: list[int], new_tokens: int) -> dict[str, Any]:
        return self.request({"prompt": prompt, "new_tokens": new_tokens})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--flash-attn", action="store_true")
    args = parser.parse_args()
    out = private_stdout()
    llm = load(args.gguf, args.threads, args.context, args.flash_attn)
    out.write(json.dumps({"ready": True, **describe(llm)}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        out.write(json.dumps(greedy(llm, list(request["prompt"]), int(request["new_tokens"]))) + "\n")


if __name__ == "__main__":
    main()
