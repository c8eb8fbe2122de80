"""Bare side of `make bench-llm`: a plain ONNX Runtime + numpy greedy loop, in a process of its own.

The no-overhead reference: the whole prompt in one pass, argmax, the cache fed back as ORT values (Optimum) or
through shared IOBinding buffers (genai); no tokenizer, scheduler or threads of the engine. It runs in a fresh
process, like the plugin, so both load their model as the first session of a new process (on this machine a
second session created in the same process decoded several per cent faster than the first, which made an
in-process reference unfair to the engine). Serves JSON lines: each stdin line {"prompt": [ids],
"new_tokens": N, "eos": [ids]} gets one stdout line {"ttft_s", "decode_tokens_per_s", "new_tokens", "ids"}; a
line {"batch": [[ids], ...], "new_tokens": N} runs a static batch (genai layout: `bare_static_batch`).

`--last-logits` loads the graph with the engine's load-time edit (logits of the last position only) instead of
the file as it is, to tell that edit's gain from the engine's overhead.

    echo '{"prompt": [151644, 872, 198], "new_tokens": 8, "eos": []}' | \
        .venv/bin/python bench/bare_runner.py --model-dir .models/qwen2.5-coder-0.5b-instruct-genai --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.llamacpp_runner import JsonLinesProcess, private_stdout
from engine.generation.kv_layout import read_kv_layout
from engine.generation.last_logits import LOGITS_COUNT, last_position_graph
from engine.model_files import find_model_files


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.log_severity_level = 3
    return options


def bare_greedy(
    session: ort.InferenceSession, layout_info: Any, genai: bool, prompt: list[int], new_tokens: int, eos: set[int]
) -> tuple[list[int], float, float]:
    """(ids, time to first token, decode tokens/s) of a plain greedy loop."""
    layout = layout_info
    inputs = {i.name for i in session.get_inputs()}
    started = time.perf_counter()
    capacity = len(prompt) + new_tokens
    if genai:
        shape = (1, layout.kv_heads, capacity, layout.head_dim)
        buffers = [np.zeros(shape, layout.dtype) for _ in range(2 * layout.layers)]
        values = [ort.OrtValue.ortvalue_from_numpy(b) for b in buffers]
    else:
        empty = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, layout.kv_heads, 0, layout.head_dim), layout.dtype))
        values = [empty] * (2 * layout.layers)
    past = [name for pair in layout.past_names for name in pair]
    present = [name for pair in layout.present_names for name in pair]
    ids: list[int] = []
    step, done, first_at = list(prompt), 0, 0.0
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")
    if LOGITS_COUNT in inputs:  # the engine's last-position edit: logits of the last position only
        binding.bind_cpu_input(LOGITS_COUNT, np.array([1], np.int64))
    if genai:  # shared past/present buffers: bound once for the whole generation
        for past_name, present_name, value in zip(past, present, values):
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)
    for _ in range(new_tokens):
        total = done + len(step)
        binding.bind_cpu_input("input_ids", np.asarray([step], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        if "position_ids" in inputs:
            binding.bind_cpu_input("position_ids", np.arange(done, total, dtype=np.int64)[None, :])
        binding.bind_output("logits", "cpu")
        if not genai:  # Optimum: the previous step's present values become this step's past
            for past_name, present_name, value in zip(past, present, values):
                binding.bind_ortvalue_input(past_name, value)
                binding.bind_output(present_name, "cpu")
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not genai:
            values = outputs[1:]
        token = int(outputs[0].numpy()[0, -1].argmax())
        ids.append(token)
        if not first_at:
            first_at = time.perf_counter()
        if token in eos:
            break
        done, step = total, [token]
    end = time.perf_counter()
    rate = (len(ids) - 1) / (end - first_at) if len(ids) > 1 else 0.0
    return ids, first_at - started, rate


def bare_static_batch(
    session: ort.InferenceSession, layout: Any, prompts: list[list[int]], new_tokens: int
) -> dict[str, float]:
    """A static batch on the genai (GroupQueryAttention) graph: every prompt prefilled in one run (right-padded,
    each row's length in the attention mask), then `new_tokens` greedy steps for every row together, no early
    stop. Returns the prefill seconds and the aggregate decode tokens/s (rows x (new_tokens - 1) over the time
    from the first token to the last)."""
    inputs = {i.name for i in session.get_inputs()}
    rows, longest = len(prompts), max(len(p) for p in prompts)
    capacity = longest + new_tokens
    shape = (rows, layout.kv_heads, capacity, layout.head_dim)
    values = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, layout.dtype)) for _ in range(2 * layout.layers)]
    past = [name for pair in layout.past_names for name in pair]
    present = [name for pair in layout.present_names for name in pair]
    binding = session.io_binding()
    binding.bind_output("logits", "cpu")  # first, so it stays the first output
    for past_name, present_name, value in zip(past, present, values):
        binding.bind_ortvalue_input(past_name, value)
        binding.bind_ortvalue_output(present_name, value)
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    ids = np.zeros((rows, longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    started = time.perf_counter()
    step = ids
    first_at = 0.0
    for index in range(new_tokens):
        width = int(lengths.max())
        binding.bind_cpu_input("input_ids", step)
        binding.bind_cpu_input("attention_mask", (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64))
        if "position_ids" in inputs:
            positions = np.arange(width - step.shape[1], width, dtype=np.int64)[None, :].repeat(rows, 0)
            if index:
                positions = (lengths - 1)[:, None]
            binding.bind_cpu_input("position_ids", positions)
        if LOGITS_COUNT in inputs:
            binding.bind_cpu_input(LOGITS_COUNT, np.array([step.shape[1]], np.int64))
        binding.bind_output("logits", "cpu")
        session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        # Each row's next token: from its own last real position (the prefill is right-padded).
        last = lengths - 1 if index == 0 else np.full(rows, logits.shape[1] - 1)
        step = logits[np.arange(rows), last].argmax(-1).astype(np.int64)[:, None]
        if index == 0:
            first_at = time.perf_counter()
        lengths = lengths + 1
    end = time.perf_counter()
    return {
        "prefill_s": first_at - started,
        "decode_tokens_per_s": rows * (new_tokens - 1) / (end - first_at),
        "rows": rows,
    }


def load(model_dir: Path, threads: int, last_logits: bool) -> tuple[ort.InferenceSession, Any, bool]:
    files = find_model_files(model_dir)
    options = session_options(threads)
    source: str | bytes = str(files.onnx_path)
    if last_logits:
        edited = last_position_graph(files.onnx_path)
        if edited is None:
            raise SystemExit(f"the last-position edit does not apply to {files.onnx_path}")
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(edited.folder))
        source = edited.model_bytes
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session, read_kv_layout(session, model_dir, files.layout), files.layout == "genai"


class BareClient(JsonLinesProcess):
    """The bench side: runs this script with the same interpreter."""

    def __init__(self, model_dir: Path, threads: int, last_logits: bool = False) -> None:
        command = [sys.executable, __file__, "--model-dir", str(model_dir), "--threads", str(threads)]
        if last_logits:
            command.append("--last-logits")
        super().__init__(command, "bare")

    def greedy(self, prompt: list[int], new_tokens: int, eos: set[int]) -> dict[str, Any]:
        return self.request({"prompt": prompt, "new_tokens": new_tokens, "eos": sorted(eos)})

    def static_batch(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        return self.request({"batch": prompts, "new_tokens": new_tokens})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--last-logits", action="store_true")
    args = parser.parse_args()
    out = private_stdout()
    session, layout, genai = load(args.model_dir, args.threads, args.last_logits)
    logits_shape = next(o.shape for o in session.get_outputs() if o.name == "logits")
    out.write(json.dumps({"ready": True, "logits_shape": [str(d) for d in logits_shape]}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if "batch" in request:
            if not genai:
                raise SystemExit("a static batch needs the genai layout (GroupQueryAttention)")
            out.write(json.dumps(bare_static_batch(session, layout, request["batch"], int(request["new_tokens"]))))
            out.write("\n")
            continue
        ids, ttft, rate = bare_greedy(
            session, layout, genai, list(request["prompt"]), int(request["new_tokens"]), set(request["eos"])
        )
        out.write(json.dumps({"ttft_s": ttft, "decode_tokens_per_s": rate, "new_tokens": len(ids), "ids": ids}) + "\n")


if __name__ == "__main__":
    main()
