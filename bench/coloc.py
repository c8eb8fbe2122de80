"""`make bench-coloc`: a chat LLM and an embedder in one plugin process, through the daemon protocol.

The scenario of a Dify install on a small box: a chat streams 128 tokens while a knowledge base indexes (40
concurrent callers embedding 8-chunk batches) and a user's query embedding arrives every 100 ms. Each
configuration runs in a fresh plugin process (`python -m main`, JSON lines over stdio, as the daemon starts it):

- defaults: every runtime field left empty;
- hand-tuned: intra_op_threads=1 on both models, cpu_affinity=auto;
- naive: intra_op_threads=2 on both, cpu_affinity=none, spin_wait=on (threads as if each model were alone).

For each: the LLM alone (the embedder loaded, idle), the embedder alone (the LLM loaded, idle), and both busy
together. Figures, from the daemon's side of the pipe: LLM decode tok/s (completion tokens − 1 over first to last
content chunk), time to first token, gaps between content chunks (p50/p99), documents embedded per second, and
query-embedding latency (p50/p99). JSON and a chart go to bench/results/.
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

from bench.corpus import mixed_chunks, queries  # noqa: E402
from bench.embed import cpu_model  # noqa: E402
from tests.plugin.daemon import PluginProcess, error_of, model_request  # noqa: E402

LLM_DIR = "qwen2.5-coder-0.5b-instruct-genai"
EMBEDDER_DIR = "all-minilm-l6-v2"
CONFIGS: dict[str, dict[str, str]] = {
    "defaults": {},
    "hand-tuned": {"intra_op_threads": "1", "cpu_affinity": "auto"},
    "naive": {"intra_op_threads": "2", "cpu_affinity": "none", "spin_wait": "on"},
}
PROMPT = (
    "Explain, in a few short paragraphs, how a hash map works: hashing, buckets, collisions, resizing, and when "
    "a sorted tree is the better choice."
)
NEW_TOKENS = 128
CALLERS = 40
CHUNKS_PER_CALL = 8
QUERY_INTERVAL_S = 0.1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Plugin:
    """A plugin process and the two models' credentials; sends are serialized (one stdin)."""

    def __init__(self, models_root: Path, settings: dict[str, str]) -> None:
        self.process = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(models_root)})
        self.llm = {"model_path": LLM_DIR, "max_generation_seconds": "0", **settings}
        # The indexing corpus cycles through 2,000 chunks: the embedding cache would answer the repeats, and this
        # benchmark measures computing on shared cores.
        self.embedder = {"model_path": EMBEDDER_DIR, "embedding_cache_mb": "0", **settings}
        self._send_lock = threading.Lock()

    def send(self, data: dict[str, Any]) -> str:
        with self._send_lock:
            return self.process.send(data)

    def start(self) -> None:
        self.process.start()
        for model_type, credentials in (("llm", self.llm), ("text-embedding", self.embedder)):
            records = self.process.collect(
                self.send(model_request("validate_model_credentials", model_type, "bench", credentials)), 600
            )
            if records[0]["type"] == "error":
                raise RuntimeError(f"{model_type} did not load: {error_of(records)}")

    def embed(self, texts: list[str], input_type: str = "document") -> int:
        request = model_request(
            "invoke_text_embedding", "text-embedding", "bench", self.embedder, texts=texts, input_type=input_type
        )
        records = self.process.collect(self.send(request), 600)
        if records[0]["type"] == "error":
            raise RuntimeError(f"embedding failed: {error_of(records)}")
        return len(records[0]["data"]["embeddings"])

    def chat(self) -> dict[str, float]:
        request = model_request(
            "invoke_llm",
            "llm",
            "bench",
            self.llm,
            prompt_messages=[{"role": "user", "content": PROMPT}],
            model_parameters={"temperature": 0.0, "max_tokens": NEW_TOKENS},
            stop=[],
            tools=[],
            stream=True,
        )
        started = time.perf_counter()
        session = self.send(request)
        arrivals: list[float] = []
        usage: dict[str, Any] | None = None
        for record in self.process.iter_session(session, timeout=600):
            if record["type"] == "error":
                raise RuntimeError(f"chat failed: {record['data']}")
            if record["type"] != "stream":
                continue
            delta = record["data"]["delta"]
            if delta["message"]["content"]:
                arrivals.append(time.perf_counter())
            usage = delta.get("usage") or usage
        assert usage is not None and len(arrivals) > 1
        tokens = int(usage["completion_tokens"])
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
        return {
            "decode_tok_s": (tokens - 1) / (arrivals[-1] - arrivals[0]),
            "ttft_ms": (arrivals[0] - started) * 1000,
            "gap_p50_ms": percentile(gaps, 50),
            "gap_p99_ms": percentile(gaps, 99),
            "tokens": tokens,
        }

    def close(self) -> None:
        stray = self.process.stray
        self.process.close()
        if stray:
            raise RuntimeError(f"the plugin wrote non-protocol stdout: {stray[:3]}")


class Indexing:
    """CALLERS threads embedding CHUNKS_PER_CALL documents per call, and one query every QUERY_INTERVAL_S."""

    def __init__(self, plugin: Plugin, chunks: list[str], query_texts: list[str]) -> None:
        self.plugin = plugin
        self.chunks = chunks
        self.query_texts = query_texts
        self.stop = threading.Event()
        self.done: list[tuple[float, int]] = []  # (finish time, documents) per call
        self.query_ms: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _caller(self, index: int) -> None:
        offset = index * CHUNKS_PER_CALL
        while not self.stop.is_set():
            batch = [self.chunks[(offset + i) % len(self.chunks)] for i in range(CHUNKS_PER_CALL)]
            offset += CALLERS * CHUNKS_PER_CALL
            try:
                count = self.plugin.embed(batch)
            except RuntimeError as error:
                self.errors.append(str(error))
                return
            with self._lock:
                self.done.append((time.perf_counter(), count))

    def _queries(self) -> None:
        index = 0
        while not self.stop.wait(QUERY_INTERVAL_S):
            started = time.perf_counter()
            self.plugin.embed([self.query_texts[index % len(self.query_texts)]], "query")
            self.query_ms.append((time.perf_counter() - started) * 1000)
            index += 1

    def __enter__(self) -> Indexing:
        self.threads = [threading.Thread(target=self._caller, args=(i,)) for i in range(CALLERS)]
        self.threads.append(threading.Thread(target=self._queries))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise RuntimeError(self.errors[0])

    def rate(self, start: float, end: float) -> float:
        """Documents per second finished inside [start, end]."""
        with self._lock:
            count = sum(n for at, n in self.done if start <= at <= end)
        return count / max(1e-9, end - start)

    def query_summary(self, skip: int = 0) -> dict[str, float]:
        values = self.query_ms[skip:]
        return {"query_p50_ms": percentile(values, 50), "query_p99_ms": percentile(values, 99), "queries": len(values)}


def median_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def run_config(name: str, settings: dict[str, str], models_root: Path, rounds: int, seconds: float) -> dict:
    chunks, query_texts = mixed_chunks(2000), queries(200)
    plugin = Plugin(models_root, settings)
    plugin.start()
    try:
        plugin.chat()  # warm-up: first-run allocations
        plugin.embed(chunks[:16])
        llm_alone = median_of([plugin.chat() for _ in range(rounds)])
        with Indexing(plugin, chunks, query_texts) as indexing:
            time.sleep(1.0)  # ramp-up
            start = time.perf_counter()
            time.sleep(seconds)
            embed_alone = {"docs_per_s": indexing.rate(start, time.perf_counter()), **indexing.query_summary(5)}
        together_samples = []
        with Indexing(plugin, chunks, query_texts) as indexing:
            time.sleep(1.0)
            for _ in range(rounds):
                queries_before = len(indexing.query_ms)
                start = time.perf_counter()
                chat = plugin.chat()
                end = time.perf_counter()
                together_samples.append(
                    {**chat, "docs_per_s": indexing.rate(start, end), **indexing.query_summary(queries_before)}
                )
        together = median_of(together_samples)
    finally:
        plugin.close()
    result = {"settings": settings, "llm_alone": llm_alone, "embedder_alone": embed_alone, "together": together}
    print(
        f"{name:11s} LLM alone {llm_alone['decode_tok_s']:5.1f} tok/s | embedder alone "
        f"{embed_alone['docs_per_s']:6.1f} docs/s | together: LLM {together['decode_tok_s']:5.1f} tok/s, "
        f"TTFT {together['ttft_ms']:5.0f} ms, gap p50/p99 {together['gap_p50_ms']:4.1f}/{together['gap_p99_ms']:5.1f}"
        f" ms, {together['docs_per_s']:6.1f} docs/s, query p50/p99 {together['query_p50_ms']:5.1f}/"
        f"{together['query_p99_ms']:6.1f} ms",
        flush=True,
    )
    return result


def ratios(results: dict[str, dict]) -> dict[str, float]:
    d, h, n = (results[k] for k in ("defaults", "hand-tuned", "naive"))
    return {
        "together_decode_vs_hand_tuned": d["together"]["decode_tok_s"] / h["together"]["decode_tok_s"],
        "together_decode_vs_naive": d["together"]["decode_tok_s"] / n["together"]["decode_tok_s"],
        "together_gap_p99_vs_hand_tuned": d["together"]["gap_p99_ms"] / h["together"]["gap_p99_ms"],
        "together_gap_p99_vs_naive": d["together"]["gap_p99_ms"] / n["together"]["gap_p99_ms"],
        "together_docs_vs_hand_tuned": d["together"]["docs_per_s"] / h["together"]["docs_per_s"],
        "alone_decode_vs_naive_2_threads": d["llm_alone"]["decode_tok_s"] / n["llm_alone"]["decode_tok_s"],
        "alone_docs_vs_naive_2_threads": d["embedder_alone"]["docs_per_s"] / n["embedder_alone"]["docs_per_s"],
    }


GOALS = {
    "together_decode_vs_hand_tuned": (">=", 0.95),
    "together_decode_vs_naive": (">=", 1.5),
    "together_gap_p99_vs_hand_tuned": ("<=", 1.1),
    "together_gap_p99_vs_naive": ("<=", 0.7),
    "together_docs_vs_hand_tuned": (">=", 0.95),
    "alone_decode_vs_naive_2_threads": (">=", 0.9),
    "alone_docs_vs_naive_2_threads": (">=", 0.9),
}


def chart(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    panels = [
        ("LLM decode tok/s", lambda r, p: r[p]["decode_tok_s"], ("llm_alone", "together")),
        ("token gap p99 ms", lambda r, p: r[p]["gap_p99_ms"], ("llm_alone", "together")),
        ("documents embedded /s", lambda r, p: r[p]["docs_per_s"], ("embedder_alone", "together")),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for axis, (title, value, phases) in zip(axes, panels):
        width = 0.38
        for offset, phase in enumerate(phases):
            xs = [i + (offset - 0.5) * width for i in range(len(names))]
            axis.bar(xs, [value(results[n], phase) for n in names], width, label=phase.replace("_", " "))
        axis.set_xticks(range(len(names)), names)
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.suptitle("LLM + embedder in one plugin process, 2 cores (make bench-coloc)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO / ".models")
    parser.add_argument("--rounds", type=int, default=3, help="chats per phase (medians)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the embedder-alone phase")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--name", default="coloc")
    args = parser.parse_args()
    models_root = args.models.resolve()
    for name in (LLM_DIR, EMBEDDER_DIR):
        if not (models_root / name).is_dir():
            sys.exit(f"bench-coloc needs {models_root / name}: run `make models` first")
    results = {
        name: run_config(name, CONFIGS[name], models_root, args.rounds, args.seconds) for name in args.only.split(",")
    }
    report: dict[str, Any] = {
        "machine": f"{cpu_model()}, {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs allowed",
        "load_average_before": os.getloadavg(),
        "scenario": {"new_tokens": NEW_TOKENS, "callers": CALLERS, "chunks_per_call": CHUNKS_PER_CALL},
        "results": results,
    }
    if set(results) >= {"defaults", "hand-tuned", "naive"}:
        report["ratios"] = ratios(results)
        for key, value in report["ratios"].items():
            op, goal = GOALS[key]
            met = value >= goal if op == ">=" else value <= goal
            print(f"  {key:34s} {value:5.2f}  (goal {op} {goal}: {'met' if met else 'MISSED'})")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(results, out / f"{args.name}.png")
    print(f"wrote {out / (args.name + '.json')} and .png")


if __name__ == "__main__":
    main()
