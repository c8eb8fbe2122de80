"""LLM benchmark: single-stream greedy decode through the engine against a bare ONNX Runtime + numpy loop.

For each model layout (Optimum merged decoder, onnxruntime-genai GQA graph), 1 and 2 intra-op threads, and a
~40- and a ~500-token ChatML prompt: time to first token and decode tokens/s, medians of --repeats runs. Both
systems load the same ONNX file with the same thread count and spinning; the bare loop is the no-overhead
reference (whole prompt in one pass, argmax, the cache fed back as ORT values / shared IOBinding buffers).
Both must produce the same token ids. Then the aggregate throughput of 1, 2 and 4 simultaneous requests through
the engine (batched decode on the genai layout). Writes JSON and a PNG chart to bench/results/.

    .venv/bin/python bench/llm.py [--models .models] [--new-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.api import Engine
from engine.generation.api import generate
from engine.generation.events import Finished, GenerationParams
from engine.generation.kv_layout import read_kv_layout
from engine.generation.messages import ChatMessage
from engine.generation.sampling import SamplingParams
from engine.model_files import find_model_files
from engine.profile import parse_profile

REPO = Path(__file__).resolve().parents[1]
REAL = ("qwen2.5-coder-0.5b-instruct-optimum", "qwen2.5-coder-0.5b-instruct-genai")
TINY = ("tiny-qwen2-decoder", "tiny-qwen2-decoder-genai")
FILLER = (
    "The river runs past the old mill, where the miller keeps a ledger of every sack of grain he grinds. "
    "Each season he notes the weather, the price of flour and the names of the farmers who came. "
)
QUESTION = "Write a detailed Python tutorial about lists, dictionaries and sets, with many code examples."


def prompt_messages(engine: Engine, profile: Any, target: int) -> tuple[list[ChatMessage], int]:
    """A user message whose rendered prompt is about `target` tokens (filler context, then the question)."""
    prompts = engine.model(profile).scheduler.prompts
    filler = ""
    while True:
        messages = [ChatMessage("user", (filler + "\n\n" if filler else "") + QUESTION)]
        count = len(prompts.encode(messages))
        if count >= target or len(filler) > 200_000:
            return messages, count
        filler += FILLER


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


def engine_greedy(engine: Engine, profile: Any, messages: list[ChatMessage], new_tokens: int) -> Finished:
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=new_tokens)
    events = list(generate(engine, profile, messages, params))
    finished = events[-1]
    assert isinstance(finished, Finished)
    return finished


def run_config(model_dir: Path, threads: int, targets: list[int], new_tokens: int, repeats: int) -> list[dict]:
    values = {
        "model_path": str(model_dir),
        "intra_op_threads": str(threads),
        "cpu_affinity": "none",
        "spin_wait": "on",
        "max_generation_seconds": "0",
    }
    profile = parse_profile(values, "llm", roots=(model_dir.parent.resolve(),))
    engine = Engine()
    model = engine.model(profile)
    scheduler = model.scheduler
    files = find_model_files(model_dir)
    session = ort.InferenceSession(str(files.onnx_path), session_options(threads), providers=["CPUExecutionProvider"])
    layout = read_kv_layout(session, model_dir, files.layout)
    genai = files.layout == "genai"
    rows = []
    for target in targets:
        messages, prompt_tokens = prompt_messages(engine, profile, target)
        prompt = scheduler.prompts.build(messages)
        engine_greedy(engine, profile, messages, 8)  # warm-up both
        bare_greedy(session, layout, genai, prompt, 8, set(scheduler.eos_ids))
        samples: dict[str, list[tuple[float, float, int]]] = {"engine": [], "bare": []}
        for repeat in range(repeats):
            # Alternate which system runs first: on a shared machine load drifts within a repeat.
            for system in ("engine", "bare") if repeat % 2 == 0 else ("bare", "engine"):
                if system == "engine":
                    finished = engine_greedy(engine, profile, messages, new_tokens)
                    engine_ids = list(finished.output_ids)
                    samples["engine"].append(
                        (finished.time_to_first_token, finished.decode_tokens_per_second, finished.completion_tokens)
                    )
                else:
                    ids, ttft, rate = bare_greedy(session, layout, genai, prompt, new_tokens, set(scheduler.eos_ids))
                    samples["bare"].append((ttft, rate, len(ids)))
            if engine_ids != ids:
                print(f"WARNING: engine and bare loop disagree on {model_dir.name}", file=sys.stderr)
        for system, runs in samples.items():
            rows.append(
                {
                    "model": model_dir.name,
                    "layout": files.layout,
                    "threads": threads,
                    "prompt_tokens": prompt_tokens,
                    "system": system,
                    "ttft_s": statistics.median(r[0] for r in runs),
                    "decode_tokens_per_s": statistics.median(r[1] for r in runs),
                    "new_tokens": statistics.median(r[2] for r in runs),
                    "runs": [{"ttft_s": r[0], "decode_tokens_per_s": r[1], "new_tokens": r[2]} for r in runs],
                }
            )
            row = rows[-1]
            print(
                f"{model_dir.name:40s} {threads}t {prompt_tokens:4d} tok {system:6s} "
                f"ttft {row['ttft_s'] * 1000:7.1f} ms  decode {row['decode_tokens_per_s']:7.1f} tok/s",
                file=sys.stderr,
            )
    engine.close()
    return rows


def concurrency(model_dir: Path, threads: int, streams: list[int], new_tokens: int) -> list[dict]:
    """Aggregate decode throughput with N simultaneous requests (batched decode on the genai layout)."""
    values = {
        "model_path": str(model_dir),
        "intra_op_threads": str(threads),
        "cpu_affinity": "none",
        "spin_wait": "on",
        "max_generation_seconds": "0",
        "max_concurrent_sequences": str(max(streams)),
    }
    profile = parse_profile(values, "llm", roots=(model_dir.parent.resolve(),))
    engine = Engine()
    scheduler = engine.model(profile).scheduler
    questions = [
        QUESTION,
        "Explain how a hash map works, with an example in Python.",
        "Write a long story about a lighthouse keeper.",
        "Describe the rules of chess in detail.",
    ]
    engine_greedy(engine, profile, [ChatMessage("user", "hi")], 4)
    rows = []
    for count in streams:
        finished: list[Finished] = []
        batched_before = scheduler.batched_steps

        def one(question: str, into: list[Finished] = finished) -> None:
            into.append(engine_greedy(engine, profile, [ChatMessage("user", question)], new_tokens))

        threads_list = [threading.Thread(target=one, args=(questions[i % len(questions)],)) for i in range(count)]
        started = time.perf_counter()
        for thread in threads_list:
            thread.start()
        for thread in threads_list:
            thread.join()
        wall = time.perf_counter() - started
        tokens = sum(f.completion_tokens for f in finished)
        rows.append(
            {
                "model": model_dir.name,
                "threads": threads,
                "streams": count,
                "tokens": tokens,
                "wall_s": wall,
                "aggregate_tokens_per_s": tokens / wall,
                "per_stream_decode_tokens_per_s": [f.decode_tokens_per_second for f in finished],
                "batched_runs": scheduler.batched_steps - batched_before,
            }
        )
        print(
            f"{model_dir.name:40s} {threads}t {count} streams: {tokens / wall:6.1f} tok/s aggregate "
            f"(prefill included), {rows[-1]['batched_runs']} batched runs",
            file=sys.stderr,
        )
    engine.close()
    return rows


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["layout"], r["threads"], r["prompt_tokens"]) for r in rows})
    labels = [f"{layout}\n{threads}t {tokens}tok" for layout, threads, tokens in configs]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(configs)), 4.5))
    width = 0.38
    for axis, key, title in (
        (axes[0], "decode_tokens_per_s", "decode tokens/s (higher is better)"),
        (axes[1], "ttft_s", "time to first token, s (lower is better)"),
    ):
        for offset, system in ((-width / 2, "engine"), (width / 2, "bare")):
            values = [
                next(
                    (
                        r[key]
                        for r in rows
                        if (r["layout"], r["threads"], r["prompt_tokens"]) == c and r["system"] == system
                    ),
                    0.0,
                )
                for c in configs
            ]
            axis.bar(np.arange(len(configs)) + offset, values, width, label=system)
        axis.set_xticks(np.arange(len(configs)), labels, fontsize=8)
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / ".models", help="directory holding the model dirs")
    parser.add_argument("--names", default="", help="comma-separated model dirs (default: the real Qwen layouts)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test fixtures (a smoke run)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--prompts", default="", help="approximate prompt lengths in tokens (default 40,500; tiny 40,300)"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", default="1,2,4", help="concurrent requests for the aggregate test ('' = skip)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    root = REPO / "tests" / "fixtures" / "models" if args.tiny else args.models
    names = [n for n in args.names.split(",") if n] or list(TINY if args.tiny else REAL)
    dirs = [root / name for name in names if (root / name).is_dir()]
    if not dirs:
        raise SystemExit(f"none of {names} under {root}; build the real models with `make models` or use --tiny")
    targets = [int(p) for p in (args.prompts or ("40,300" if args.tiny else "40,500")).split(",")]
    rows: list[dict] = []
    for model_dir in dirs:
        for threads in (int(t) for t in args.threads.split(",")):
            rows += run_config(model_dir, threads, targets, args.new_tokens, args.repeats)
    streams = [int(n) for n in args.streams.split(",") if n]
    concurrent: list[dict] = []
    for model_dir in dirs if streams else []:
        concurrent += concurrency(model_dir, max(int(t) for t in args.threads.split(",")), streams, args.new_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "llm-tiny" if args.tiny else "llm"
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "load_avg": os.getloadavg(),
        },
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "concurrent": concurrent,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    chart(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / (stem + '.json')} and {stem}.png", file=sys.stderr)


if __name__ == "__main__":
    main()
