"""Embedding and rerank benchmark: the engine driven the way Dify drives it, against bare ONNX Runtime.

Indexing: 40 concurrent callers × calls of 8 chunks (batching on, batching off, and the raw reference: the same
model and threads, all texts length-sorted into the best static batch size). Interactive: one query every
100 ms during indexing (priorities on and off) and on an idle model. Rerank: one query against 100 documents,
batched vs one pair at a time. Writes JSON and a PNG chart to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import mixed_chunks, queries
from engine.api import Engine
from engine.encoders.runner import EncoderRunner, Tokens
from engine.model_files import find_model_files
from engine.prometheus import start_from_environment
from engine.settings.profile import parse_profile
from engine.text.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
CALLERS, CHUNKS_PER_CALL = 40, 8


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def profile(model_dir: Path, model_type: str, threads: int, **values: str):
    # The embedding cache stays off unless a run asks for it: repeated texts would otherwise skip the model.
    cache = {"embedding_cache_mb": "0"} if model_type == "text-embedding" else {}
    settings = {
        "model_path": str(model_dir),
        "intra_op_threads": str(threads),
        "cpu_affinity": "auto",
        **cache,
        **values,
    }
    return parse_profile(settings, model_type, roots=(model_dir.parent.resolve(),))


def indexing(
    engine: Engine, prof, texts: list[str], query_texts: list[str] | None, query_prof=None, query_type: str = "query"
) -> dict:
    """CALLERS threads each embedding their share of `texts` in calls of CHUNKS_PER_CALL; optionally one query
    every 100 ms meanwhile. Returns throughput and query latencies."""
    shares = [texts[i::CALLERS] for i in range(CALLERS)]
    tokens = [0]
    lock = threading.Lock()
    done = threading.Event()
    latencies: list[float] = []

    def caller(share: list[str]) -> None:
        for start in range(0, len(share), CHUNKS_PER_CALL):
            outcome = engine.embed(prof, share[start : start + CHUNKS_PER_CALL], "document")
            with lock:
                tokens[0] += outcome.tokens

    def querier() -> None:
        index = 0
        while not done.is_set():
            started = time.perf_counter()
            engine.embed(query_prof or prof, [query_texts[index % len(query_texts)]], query_type)
            latencies.append(time.perf_counter() - started)
            index += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))

    threads = [threading.Thread(target=caller, args=(share,)) for share in shares]
    query_thread = threading.Thread(target=querier) if query_texts else None
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    if query_thread:
        query_thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    if query_thread:
        query_thread.join()
    result = {
        "texts": len(texts),
        "seconds": elapsed,
        "texts_per_s": len(texts) / elapsed,
        "tokens_per_s": tokens[0] / elapsed,
    }
    if latencies:
        ms = [x * 1000 for x in latencies]
        result.update(query_p50_ms=percentile(ms, 50), query_p99_ms=percentile(ms, 99), queries=len(ms))
    return result


def raw_reference(model_dir: Path, texts: list[str], threads: int, context: int) -> dict:
    """Bare ONNX Runtime: all texts tokenized, length-sorted, cut into the best static batch size of 8..64."""
    tokenizer = load_tokenizer(model_dir)
    tokenizer.enable_truncation(max_length=context)
    files = find_model_files(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session = ort.InferenceSession(str(files.onnx_path), options, providers=["CPUExecutionProvider"])
    runner = EncoderRunner(session, 0, ("last_hidden_state", "token_embeddings", "sentence_embedding"))

    best: dict = {}
    for batch_size in (8, 16, 32, 64):
        started = time.perf_counter()  # tokenizing is part of any pipeline, so it is timed here too
        encoded = sorted((Tokens(tuple(e.ids), tuple(e.type_ids)) for e in tokenizer.encode_batch(texts)), key=len)
        for start in range(0, len(encoded), batch_size):
            output, mask = runner.run(encoded[start : start + batch_size])
            (output * mask[:, :, None]).sum(axis=1)  # pooling, as the engine does
        elapsed = time.perf_counter() - started
        rate = len(texts) / elapsed
        if not best or rate > best["texts_per_s"]:
            best = {
                "batch_size": batch_size,
                "texts_per_s": rate,
                "seconds": elapsed,
                "tokens_per_s": sum(map(len, encoded)) / elapsed,
            }
    return best


def idle_latency(engine: Engine, prof, query_texts: list[str], count: int = 200) -> dict:
    ms = []
    for index in range(count):
        started = time.perf_counter()
        engine.embed(prof, [query_texts[index % len(query_texts)]], "query")
        ms.append((time.perf_counter() - started) * 1000)
    return {"query_p50_ms": percentile(ms, 50), "query_p99_ms": percentile(ms, 99)}


def rerank(model_dir: Path, threads: int) -> dict:
    docs = mixed_chunks(100, seed=7)
    query = queries(1, seed=8)[0]
    batched = profile(model_dir, "rerank", threads)
    single = profile(model_dir, "rerank", threads, max_batch_size="1")
    results = {}
    for name, prof in (("batched", batched), ("one_pair_at_a_time", single)):
        engine = Engine()
        engine.rerank(prof, query, docs[:4])  # load + warm up
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            if name == "batched":
                engine.rerank(prof, query, docs)
            else:
                for doc in docs:
                    engine.rerank(prof, query, [doc])
            runs.append(time.perf_counter() - started)
        engine.close()
        results[name] = {"pairs_per_s": len(docs) / statistics.median(runs)}
    results["speedup"] = results["batched"]["pairs_per_s"] / results["one_pair_at_a_time"]["pairs_per_s"]
    return results


# With ONNX_LOCAL_METRICS_ADDR set, the metrics endpoint serves the engine of the phase that is running.
_current_engine: list[Engine | None] = [None]
_metrics = start_from_environment(lambda: _current_engine[0])


@contextlib.contextmanager
def fresh_engine() -> Iterator[Engine]:
    """Each phase gets its own engine, so a model is never placed next to the previous phase's model."""
    engine = Engine()
    _current_engine[0] = engine
    try:
        yield engine
    finally:
        engine.close()


def sweep(model_dir: Path, texts: list[str], threads: int) -> list[dict]:
    """The indexing pattern under several batching settings, to choose the defaults."""
    rows = []
    for size, window in ((4, "2"), (8, "2"), (16, "2"), (32, "2"), (16, "0"), (16, "5")):
        prof = profile(model_dir, "text-embedding", threads, max_batch_size=str(size), batch_window_ms=window)
        rates = []
        for _ in range(3):  # median of 3: single runs vary by ±15 % on a shared machine
            with fresh_engine() as engine:
                engine.embed(prof, texts[:64])
                rates.append(indexing(engine, prof, texts, None)["texts_per_s"])
        rate = statistics.median(rates)
        rows.append({"max_batch_size": size, "batch_window_ms": float(window), "texts_per_s": rate, "runs": rates})
        print(f"  batch {size:3d} window {window} ms: {rate:.1f} texts/s (runs {rates})", file=sys.stderr)
    return rows


def reindexing(model_dir: Path, threads: int, texts: list[str]) -> dict:
    """Re-indexing a corpus half of which was embedded before (unchanged documents), with the embedding cache on
    and off: time, and the vectors of both runs compared."""
    unique = list(dict.fromkeys(texts))
    half = len(unique) // 2
    before, corpus = unique[:half], unique[:half] + unique[half : 2 * half]
    random.Random(5).shuffle(corpus)
    runs: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}
    for name, cache_mb in (("cache_off", "0"), ("cache_on", "64")):
        prof = profile(model_dir, "text-embedding", threads, embedding_cache_mb=cache_mb)
        with fresh_engine() as engine:
            engine.embed(prof, before[:16])  # load + warm up
            indexing(engine, prof, before, None)  # the first indexing of the knowledge base
            runs[name] = indexing(engine, prof, corpus, None)  # re-indexing: half unchanged
            vectors[name] = np.asarray(engine.embed(prof, corpus[:256]).vectors)
            if name == "cache_off":  # the same texts one per call: how much batching alone moves a vector
                single = [engine.embed(prof, [text]).vectors[0] for text in corpus[:256]]
                vectors["cache_off_single"] = np.asarray(single)
            runs[name]["engine_stats"] = engine.stats()
    return {
        "texts": len(corpus),
        "repeated": half,
        **runs,
        "speedup": runs["cache_on"]["texts_per_s"] / runs["cache_off"]["texts_per_s"],
        "max_abs_difference": float(np.abs(vectors["cache_on"] - vectors["cache_off"]).max()),
        # Dynamically quantized (int8) models scale activations per batch: the same text embedded in another batch
        # differs by this much without any cache.
        "batching_max_abs_difference": float(np.abs(vectors["cache_off_single"] - vectors["cache_off"]).max()),
    }


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    idx = result["indexing"]
    names = ["raw ORT\n(best static)", "batching on", "batching off"]
    values = [
        idx["raw_reference"]["texts_per_s"],
        idx["batching_on"]["texts_per_s"],
        idx["batching_off"]["texts_per_s"],
    ]
    left.bar(names, values, color=["#888", "#2a7", "#c55"])
    left.set_title("Indexing throughput (texts/s)")
    inter = result["interactive"]
    names = ["idle", "indexing,\npriorities on", "indexing,\npriorities off"]
    p99 = [
        inter["idle"]["query_p99_ms"],
        inter["priorities_on"]["query_p99_ms"],
        inter["priorities_off"]["query_p99_ms"],
    ]
    p50 = [
        inter["idle"]["query_p50_ms"],
        inter["priorities_on"]["query_p50_ms"],
        inter["priorities_off"]["query_p50_ms"],
    ]
    x = np.arange(3)
    middle.bar(x - 0.2, p50, 0.4, label="p50")
    middle.bar(x + 0.2, p99, 0.4, label="p99")
    middle.set_xticks(x, names)
    middle.set_yscale("log")
    middle.set_title("Query embedding latency (ms)")
    middle.legend()
    rr = result["rerank"]
    right.bar(
        ["batched", "one pair\nat a time"],
        [rr["batched"]["pairs_per_s"], rr["one_pair_at_a_time"]["pairs_per_s"]],
        color=["#2a7", "#c55"],
    )
    right.set_title("Rerank, 1 query × 100 docs (pairs/s)")
    fig.suptitle(f"{result['model']} — {result['threads']} threads — {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=REPO / "tests/fixtures/models/tiny-bert-embedder")
    parser.add_argument("--reranker-dir", type=Path, default=REPO / "tests/fixtures/models/tiny-cross-encoder")
    parser.add_argument("--texts", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--name", default=None)
    parser.add_argument("--sweep", action="store_true", help="also sweep max_batch_size / batch_window_ms")
    args = parser.parse_args()
    model_dir, reranker_dir = args.model_dir.resolve(), args.reranker_dir.resolve()
    texts = mixed_chunks(args.texts)
    query_texts = queries(200)
    on = profile(model_dir, "text-embedding", args.threads)
    off = profile(model_dir, "text-embedding", args.threads, max_batch_size="1", batch_window_ms="0")
    with fresh_engine() as engine:
        context = engine.model_info(on).context_size
    result: dict = {
        "model": model_dir.name,
        "threads": args.threads,
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs, onnxruntime {ort.__version__}",
        "callers": CALLERS,
        "chunks_per_call": CHUNKS_PER_CALL,
        "context": context,
    }
    print(f"indexing {len(texts)} texts with {CALLERS} callers × {CHUNKS_PER_CALL} chunks…", file=sys.stderr)
    reference = raw_reference(model_dir, texts, args.threads, context)
    with fresh_engine() as engine:
        engine.embed(on, texts[:64])  # load + warm up
        batching_on = indexing(engine, on, texts, None)
        batching_metrics = engine.stats()
    with fresh_engine() as engine:
        engine.embed(off, texts[:16])
        batching_off = indexing(engine, off, texts, None)
    result["indexing"] = {
        "raw_reference": reference,
        "batching_on": batching_on,
        "batching_off": batching_off,
        "on_vs_reference": batching_on["texts_per_s"] / reference["texts_per_s"],
        "on_vs_off": batching_on["texts_per_s"] / batching_off["texts_per_s"],
        "engine_stats": batching_metrics,
    }
    print("interactive queries during indexing…", file=sys.stderr)
    with fresh_engine() as engine:
        engine.embed(on, texts[:64])
        idle = idle_latency(engine, on, query_texts)
        # twice the texts: a longer run gives the p99 of over a hundred queries instead of the max of a few
        with_priorities = indexing(engine, on, texts * 2, query_texts, query_type="query")
        without_priorities = indexing(engine, on, texts * 2, query_texts, query_type="document")
    result["interactive"] = {
        "idle": idle,
        "priorities_on": with_priorities,
        "priorities_off": without_priorities,
        "p99_on_vs_idle": with_priorities["query_p99_ms"] / idle["query_p99_ms"],
    }
    print("re-indexing with the embedding cache…", file=sys.stderr)
    result["reindexing"] = reindexing(model_dir, args.threads, mixed_chunks(2 * args.texts))
    print("rerank…", file=sys.stderr)
    result["rerank"] = rerank(reranker_dir, args.threads)
    result["reranker"] = reranker_dir.name
    if args.sweep:
        print("batching settings sweep…", file=sys.stderr)
        result["sweep"] = sweep(model_dir, texts, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"embed-{model_dir.name}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, args.out / f"{name}.png")
    idx, inter = result["indexing"], result["interactive"]
    print(
        json.dumps(
            {
                "indexing_texts_per_s": {
                    k: round(idx[k]["texts_per_s"], 1) for k in ("raw_reference", "batching_on", "batching_off")
                },
                "raw_best_batch": idx["raw_reference"]["batch_size"],
                "batching_on_vs_raw": round(idx["on_vs_reference"], 3),
                "query_p99_ms": {
                    k: round(inter[k]["query_p99_ms"], 1) for k in ("idle", "priorities_on", "priorities_off")
                },
                "p99_on_vs_idle": round(inter["p99_on_vs_idle"], 2),
                "reindexing_cache_speedup": round(result["reindexing"]["speedup"], 2),
                "reindexing_max_abs_difference": result["reindexing"]["max_abs_difference"],
                "batching_max_abs_difference": result["reindexing"]["batching_max_abs_difference"],
                "rerank_pairs_per_s": {
                    k: round(result["rerank"][k]["pairs_per_s"], 1) for k in ("batched", "one_pair_at_a_time")
                },
                "written": str(args.out / f"{name}.json"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
