"""`make bench-serving`: what a Dify user waits for around decoding, through the real plugin process.

Every figure is taken from the daemon's side of the pipe (`python -m main`, JSON lines over stdio, as the Dify
plugin daemon starts it), on the genai-layout Qwen2.5-Coder-0.5B int4 by default, in one run:

1. Multi-turn chat over a ~1,500-token reference text (Dify resends the whole conversation every turn): time to
   first token of turns 1, 2 and 3 with the prefix cache on (default) and off (prefix_cache_mb=0).
2. Concurrent chats (1, 2, 4 and 8, max_concurrent_sequences=8), 128 tokens each, twice: arriving together with
   short prompts (what a static batch measures), and arriving 0.2 s apart with prompts of different lengths.
   Aggregate decode tok/s = all completion tokens over the time from the first first-token to the last token;
   also per-stream decode tok/s and time to first token, tokens/s with the prefill included, the rate while all
   streams decode together (when they overlap), and each stream's largest gap between tokens over its median
   gap; next to a bare ONNX Runtime static batch of 8 on the same graph and threads (bench/bare_runner.py, a
   process of its own: every prompt prefilled in one run, then all rows decode together).
3. Speculative decoding on and off (a per-call setting, same loaded model) on a quoting prompt ("return this
   function with type hints added") and a free-writing prompt: decode tok/s and whether the texts are identical.

    .venv/bin/python bench/serving.py [--models .models] [--model qwen2.5-coder-0.5b-instruct-genai] [--tiny]

JSON and a PNG chart go to bench/results/serving*.{json,png}. The machine is shared: compare ratios in one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bare_runner import BareClient  # noqa: E402
from engine.text.tokenizer import load_tokenizer  # noqa: E402
from tests.plugin.daemon import PluginProcess, error_of, model_request  # noqa: E402

REAL_MODEL = "qwen2.5-coder-0.5b-instruct-genai"
TINY_MODEL = "tiny-qwen2-decoder-genai"
# The issue's goals (ratios within one run).
GOALS = {
    "turn_ttft_max": 0.15,  # turns 2 and 3 vs turn 1, cache on
    "streams8_vs_one_min": 3.0,
    "streams8_vs_bare_min": 0.9,
    "streams4_vs_one_min": 2.3,
    "gap_over_median_max": 3.0,
    "speculative_quoting_min": 1.5,
    "speculative_free_min": 0.95,  # greedy and sampled
}
# Arrivals closer than this belong to one step of the model.
BURST_S = 0.003
QUOTED_FUNCTION = '''def merge_intervals(intervals, min_gap=0, keep_empty=False):
    """Merge overlapping or nearly touching intervals and return them sorted by start."""
    if not intervals:
        return []
    ordered = sorted(intervals, key=lambda pair: (pair[0], pair[1]))
    merged = [list(ordered[0])]
    for start, end in ordered[1:]:
        last = merged[-1]
        if start <= last[1] + min_gap:
            last[1] = max(last[1], end)
        elif keep_empty or end > start:
            merged.append([start, end])
    result = []
    for start, end in merged:
        if keep_empty or end > start:
            result.append((start, end))
    return result


def total_covered(intervals, min_gap=0):
    """Total length covered by the intervals after merging."""
    return sum(end - start for start, end in merge_intervals(intervals, min_gap))
'''
QUOTING = "Return this code with type hints added to every function. Change nothing else.\n\n" + QUOTED_FUNCTION
FREE_WRITING = "Write a short story about a lighthouse keeper who finds a message in a bottle."
QUESTIONS = [
    "Which of the functions in the text mention a timeout, and what do they do with it?",
    "Summarize what the text says about threads in two sentences.",
    "Give one example from the text of a function that returns None.",
]
CONCURRENT_QUESTIONS = [
    "Explain how a hash map works, with an example in Python.",
    "Write a long story about a lighthouse keeper.",
    "Describe the rules of chess in detail.",
    "Write a detailed Python tutorial about lists, dictionaries and sets.",
    "What are the differences between TCP and UDP? Explain with examples.",
    "Explain recursion to a beginner, with three examples.",
    "Describe how a compiler turns source code into machine code.",
    "Write a travel guide for a weekend in a small mountain town.",
]


def reference_text(target_chars: int, skip: int = 0) -> str:
    """About `target_chars` of stdlib docstrings, from the `skip`-th one on (different streams, different text)."""
    from bench.corpus import bench_docstrings

    text, docs = "", bench_docstrings()
    for doc in docs[skip:]:
        if len(text) >= target_chars:
            break
        text += doc.strip() + "\n\n"
    return text[:target_chars]


class Plugin:
    """One plugin process; requests may be sent from several threads (one stdin, sends serialized)."""

    def __init__(self, models_root: Path) -> None:
        self.process = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(models_root.resolve())})
        self._send_lock = threading.Lock()

    def start(self) -> None:
        self.process.start()

    def load(self, credentials: dict[str, str]) -> None:
        records = self.process.collect(
            self._send(model_request("validate_model_credentials", "llm", "b", credentials)), 600
        )
        if records[0]["type"] == "error":
            raise RuntimeError(f"the model did not load: {error_of(records)}")

    def _send(self, request: dict[str, Any]) -> str:
        with self._send_lock:
            return self.process.send(request)

    def chat(
        self,
        credentials: dict[str, str],
        messages: list[dict[str, str]],
        max_tokens: int,
        sampling: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """A streamed chat (greedy unless `sampling` is given): TTFT, token arrival times, text and usage."""
        request = model_request(
            "invoke_llm",
            "llm",
            "b",
            credentials,
            prompt_messages=messages,
            model_parameters={"temperature": 0.0, **(sampling or {}), "max_tokens": max_tokens},
            stop=[],
            tools=[],
            stream=True,
        )
        started = time.perf_counter()
        session = self._send(request)
        arrivals: list[float] = []
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        for record in self.process.iter_session(session, timeout=900):
            if record["type"] == "error":
                raise RuntimeError(f"chat failed: {record['data']}")
            if record["type"] != "stream":
                continue
            delta = record["data"]["delta"]
            content = delta["message"]["content"] or ""
            if content:
                arrivals.append(time.perf_counter())
                pieces.append(content)
            usage = delta.get("usage") or usage
        assert usage is not None and arrivals, "the stream ended without content or usage"
        tokens = int(usage["completion_tokens"])
        decode_s = arrivals[-1] - arrivals[0]
        # Tokens of one step arrive together (a verified draft, or chunks read in one go): gaps between steps.
        gaps = [gap for gap in (b - a for a, b in itertools.pairwise(arrivals)) if gap > BURST_S]
        return {
            "started": started,
            "ttft_s": arrivals[0] - started,
            "first_at": arrivals[0],
            "last_at": arrivals[-1],
            "arrivals": arrivals,
            "decode_tokens_per_s": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
            "completion_tokens": tokens,
            "prompt_tokens": int(usage["prompt_tokens"]),
            "max_gap_over_median": max(gaps) / statistics.median(gaps) if len(gaps) > 2 else 0.0,
            "text": "".join(pieces),
        }

    def close(self) -> None:
        stray = self.process.stray
        self.process.close()
        if stray:
            raise RuntimeError(f"the plugin wrote non-protocol stdout: {stray[:3]}")


def multi_turn(plugin: Plugin, base: dict[str, str], context_chars: int, new_tokens: int) -> list[dict[str, Any]]:
    rows = []
    text = reference_text(context_chars)
    for label, extra in (("cache off", {"prefix_cache_mb": "0"}), ("cache on", {})):
        credentials = {**base, **extra}
        plugin.load(credentials)
        messages = [{"role": "system", "content": "Answer from this reference text.\n\n" + text}]
        turns = []
        for question in QUESTIONS:
            messages.append({"role": "user", "content": question})
            result = plugin.chat(credentials, messages, new_tokens)
            messages.append({"role": "assistant", "content": result["text"]})
            turns.append({k: result[k] for k in ("ttft_s", "prompt_tokens", "completion_tokens")})
        first = turns[0]["ttft_s"]
        row = {"config": label, "turns": turns, "ttft_vs_turn1": [t["ttft_s"] / first for t in turns]}
        print(
            f"multi-turn {label:9s}: TTFT "
            + ", ".join(f"turn {i + 1} {t['ttft_s']:.2f}s ({t['prompt_tokens']} tok)" for i, t in enumerate(turns)),
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def concurrent(
    plugin: Plugin, base: dict[str, str], streams: list[int], new_tokens: int, gap_s: float, context_step: int
) -> list[dict]:
    """Chats `gap_s` apart, stream i with i x `context_step` characters of its own context before its question
    (0 and 0: all at once, short prompts — what a static batch measures)."""
    credentials = {**base, "max_concurrent_sequences": str(max(streams))}
    plugin.load(credentials)
    plugin.chat(credentials, [{"role": "user", "content": "hi"}], 4)  # warm-up
    scenario = "together" if gap_s == 0 and context_step == 0 else "apart"
    rows = []
    for count in streams:
        results: list[dict[str, Any] | None] = [None] * count

        # Different prompt lengths: stream i carries i x context_step characters of its own context.
        contents = []
        for index in range(count):
            context = reference_text(context_step * index, skip=40 * index) if index and context_step else ""
            question = CONCURRENT_QUESTIONS[index % len(CONCURRENT_QUESTIONS)]
            contents.append((context + "\n\n" if context else "") + question)

        def one(index: int, results: list[dict[str, Any] | None] = results, contents: list[str] = contents) -> None:
            time.sleep(index * gap_s)
            results[index] = plugin.chat(credentials, [{"role": "user", "content": contents[index]}], new_tokens)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = [r for r in results if r is not None]
        assert len(done) == count, "a stream failed"
        tokens = sum(r["completion_tokens"] for r in done)
        window = max(r["last_at"] for r in done) - min(r["first_at"] for r in done)
        wall = max(r["last_at"] for r in done) - min(r["started"] for r in done)
        # While every stream decodes (all prompts read, none finished): what a static batch of N measures.
        together_from, together_to = max(r["first_at"] for r in done), min(r["last_at"] for r in done)
        together = sum(sum(together_from <= t <= together_to for t in r["arrivals"]) for r in done) - count
        row = {
            "scenario": scenario,
            "streams": count,
            "completion_tokens": tokens,
            "all_decoding_tokens_per_s": together / (together_to - together_from)
            if together_to - together_from > 1.0 and together > 0
            else None,
            "all_decoding_seconds": max(0.0, together_to - together_from),
            "aggregate_decode_tokens_per_s": tokens / window,
            # Each stream's decode rate summed: the rate the streams decode at together, as a static batch's
            # rows do, without the staggered prefill and the early finishers that the window above includes.
            "sum_of_stream_decode_tokens_per_s": sum(r["decode_tokens_per_s"] for r in done),
            "tokens_per_s_prefill_included": tokens / wall,
            "per_stream_decode_tokens_per_s": [r["decode_tokens_per_s"] for r in done],
            "ttft_s": [r["ttft_s"] for r in done],
            "prompt_tokens": [r["prompt_tokens"] for r in done],
            "max_gap_over_median": [r["max_gap_over_median"] for r in done],
        }
        together_rate = row["all_decoding_tokens_per_s"]
        print(
            f"{scenario} {count} streams: all decoding {together_rate or 0:.1f} tok/s "
            f"over {row['all_decoding_seconds']:.1f}s, "
            f"aggregate decode {row['aggregate_decode_tokens_per_s']:.1f} tok/s "
            f"({row['tokens_per_s_prefill_included']:.1f} prefill included), median TTFT "
            f"{statistics.median(row['ttft_s']):.2f}s, worst gap/median {max(row['max_gap_over_median']):.1f}",
            file=sys.stderr,
        )
        rows.append(row)
    return rows


def bare_batch(model_dir: Path, threads: int, rows: int, new_tokens: int) -> dict[str, Any]:
    tokenizer = load_tokenizer(model_dir)
    prompts = []
    for index in range(rows):
        text = f"<|im_start|>user\n{CONCURRENT_QUESTIONS[index % len(CONCURRENT_QUESTIONS)]}<|im_end|>\n"
        prompts.append(tokenizer.encode(text + "<|im_start|>assistant\n", add_special_tokens=False).ids)
    client = BareClient(model_dir, threads, last_logits=True)
    try:
        client.static_batch(prompts[:1], 4)  # warm-up
        single = client.static_batch(prompts[:1], new_tokens)
        batch = client.static_batch(prompts, new_tokens)
    finally:
        client.close()
    print(
        f"bare static batch of {rows}: {batch['decode_tokens_per_s']:.1f} tok/s (one row "
        f"{single['decode_tokens_per_s']:.1f})",
        file=sys.stderr,
    )
    return {"rows": rows, "decode_tokens_per_s": batch["decode_tokens_per_s"], "single": single["decode_tokens_per_s"]}


def speculative(plugin: Plugin, base: dict[str, str], new_tokens: int, quote_chars: int) -> list[dict[str, Any]]:
    plugin.load(base)
    rows = []
    sampled = {"temperature": 0.8, "top_p": 0.95, "seed": 7}
    for label, prompt, sampling in (
        ("quoting", QUOTING[:quote_chars], None),
        ("free writing", FREE_WRITING, None),
        ("free writing sampled", FREE_WRITING, sampled),  # texts differ by design: other random draws
    ):
        runs = {}
        for setting in ("off", "on", "off", "on"):  # interleaved: load drifts on a shared machine
            result = plugin.chat(
                {**base, "speculative_decoding": setting}, [{"role": "user", "content": prompt}], new_tokens, sampling
            )
            runs.setdefault(setting, []).append(result)
        on = statistics.median(r["decode_tokens_per_s"] for r in runs["on"])
        off = statistics.median(r["decode_tokens_per_s"] for r in runs["off"])
        identical = all(r["text"] == runs["off"][0]["text"] for r in runs["on"] + runs["off"])
        rows.append(
            {"prompt": label, "on_tokens_per_s": on, "off_tokens_per_s": off, "ratio": on / off, "identical": identical}
        )
        print(
            f"speculative {label:20s}: on {on:.1f} tok/s, off {off:.1f} ({on / off:.2f}x), identical {identical}",
            file=sys.stderr,
        )
    return rows


def summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in result["multi_turn"]:
        key = row["config"].replace(" ", "_")
        out[f"{key}_turn2_vs_turn1"], out[f"{key}_turn3_vs_turn1"] = row["ttft_vs_turn1"][1:3]
    # Throughput goals: chats arriving together (a static batch's situation), per-stream decode rates summed,
    # and the first-to-last-token aggregate beside them.
    by_streams = {r["streams"]: r for r in result["together"]}
    bare = (result.get("bare_batch") or {}).get("decode_tokens_per_s")
    for metric, key in (("sum", "sum_of_stream_decode_tokens_per_s"), ("window", "aggregate_decode_tokens_per_s")):
        one = by_streams.get(1, {}).get(key)
        for count in (2, 4, 8):
            rate = by_streams.get(count, {}).get(key)
            if rate and one:
                out[f"streams{count}_vs_one_{metric}"] = rate / one
        rate8 = by_streams.get(8, {}).get(key)
        if rate8 and bare:
            out[f"streams8_vs_bare_{metric}"] = rate8 / bare
    if result.get("bare_batch"):
        out["bare_batch8_vs_its_one_row"] = result["bare_batch"]["decode_tokens_per_s"] / result["bare_batch"]["single"]
    for key in ("together", "concurrent"):  # gaps while another stream's prompt is read: 2 streams or more
        rows = [r for r in result[key] if r["streams"] > 1]
        if rows:
            out[f"worst_gap_over_median_{key}"] = max(max(r["max_gap_over_median"]) for r in rows)
    for row in result["speculative"]:
        out[f"speculative_{row['prompt'].replace(' ', '_')}"] = row["ratio"]
    return out


def chart(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for row in result["multi_turn"]:
        axes[0].plot([1, 2, 3], [t["ttft_s"] for t in row["turns"]], marker="o", label=row["config"])
    axes[0].set(title="Multi-turn chat: time to first token", xlabel="turn", ylabel="seconds", xticks=[1, 2, 3])
    axes[0].legend()
    for key, marker, label in (("together", "o", "arriving together"), ("concurrent", "s", "arriving 0.2 s apart")):
        rows = result[key]
        axes[1].plot(
            [r["streams"] for r in rows], [r["aggregate_decode_tokens_per_s"] for r in rows], marker=marker, label=label
        )
    streams = [r["streams"] for r in result["together"] or result["concurrent"]]
    if result.get("bare_batch"):
        axes[1].axhline(
            result["bare_batch"]["decode_tokens_per_s"], color="gray", ls="--", label="bare static batch of 8"
        )
    axes[1].set(title="Concurrent chats: aggregate decode", xlabel="streams", ylabel="tokens/s", xticks=streams)
    axes[1].legend()
    labels = [r["prompt"] for r in result["speculative"]]
    xs = range(len(labels))
    axes[2].bar([x - 0.2 for x in xs], [r["off_tokens_per_s"] for r in result["speculative"]], 0.4, label="off")
    axes[2].bar([x + 0.2 for x in xs], [r["on_tokens_per_s"] for r in result["speculative"]], 0.4, label="on")
    axes[2].set(title="Speculative decoding", ylabel="decode tokens/s", xticks=list(xs), xticklabels=labels)
    axes[2].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / ".models")
    parser.add_argument("--model", default=REAL_MODEL)
    parser.add_argument("--tiny", action="store_true", help="the tiny genai fixture (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-chars", type=int, default=6000, help="multi-turn reference text (~1,500 tokens)")
    parser.add_argument("--turn-tokens", type=int, default=48)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--stream-tokens", type=int, default=128)
    parser.add_argument("--arrival-gap", type=float, default=0.2)
    parser.add_argument("--context-step", type=int, default=300, help="stream i's prompt carries i x this many chars")
    parser.add_argument("--speculative-tokens", type=int, default=256)
    parser.add_argument("--sections", default="multi_turn,concurrent,speculative", help="which parts to run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()
    root = REPO / "tests" / "fixtures" / "models" if args.tiny else args.models
    quote_chars = len(QUOTING)
    if args.tiny:  # the fixture's context is 512 tokens of a tokenizer trained on little text
        args.context_chars, args.turn_tokens, args.stream_tokens = 200, 16, 32
        args.context_step, args.speculative_tokens, quote_chars = 30, 48, 250
    model = TINY_MODEL if args.tiny else args.model
    model_dir = root / model
    if not model_dir.is_dir():
        raise SystemExit(f"{model_dir} is missing: `make models` builds the real models, or use --tiny")
    base = {"model_path": model, "intra_op_threads": str(args.threads), "max_generation_seconds": "0"}
    started = time.perf_counter()
    plugin = Plugin(root)
    plugin.start()
    sections = set(args.sections.split(","))
    streams = [int(n) for n in args.streams.split(",") if n] if "concurrent" in sections else []
    result: dict[str, Any] = {"multi_turn": [], "together": [], "concurrent": [], "speculative": [], "bare_batch": None}
    try:
        if "multi_turn" in sections:
            result["multi_turn"] = multi_turn(plugin, base, args.context_chars, args.turn_tokens)
        if streams:
            result["together"] = concurrent(plugin, base, streams, args.stream_tokens, 0.0, 0)
            # Right after the plugin's rows (the plugin idle meanwhile): load drifts on a shared machine.
            result["bare_batch"] = bare_batch(model_dir, args.threads, max(streams), args.stream_tokens)
            result["concurrent"] = concurrent(
                plugin, base, streams, args.stream_tokens, args.arrival_gap, args.context_step
            )
        if "speculative" in sections:
            result["speculative"] = speculative(plugin, base, args.speculative_tokens, quote_chars)
    finally:
        plugin.close()
    result["ratios"] = summary(result)
    result["goals"] = GOALS
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
    }
    result["settings"] = {**base, **{k: v for k, v in vars(args).items() if k not in ("models", "out")}}
    result["duration_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serving-tiny" if args.tiny else "serving"
    for row in result["speculative"]:
        row.pop("texts", None)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    title = f"{model}, {args.threads} threads, greedy; load average before the run {load_start[0]:.2f}"
    chart(result, args.out / f"{stem}.png", title)
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {args.out / (stem + '.json')} and {stem}.png ({result['duration_s']:.0f}s)")


if __name__ == "__main__":
    main()
