"""Running per-model statistics: stage timings and batch shapes, kept cheaply on the worker thread; histogram
buckets of the same samples (for Prometheus, engine/prometheus.py); requests and errors per model."""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass, field

from engine.native import allocate_lock

# Histogram bucket upper bounds (a sample goes in the first bucket whose bound is >= it; one more bucket past
# the last bound). Milliseconds for times.
LATENCY_MS_BOUNDS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 3e4, 6e4)
BATCH_SIZE_BOUNDS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
PADDED_TOKENS_BOUNDS = (64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0)
PADDING_RATIO_BOUNDS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
TOKENS_BOUNDS = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0)
TOKENS_PER_S_BOUNDS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 500.0, 1000.0)


@dataclass
class RunningStat:
    """Count, mean and max over all samples; percentiles over the most recent ones."""

    window: int = 2048
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0
    recent: collections.deque[float] = field(default_factory=collections.deque)
    bounds: tuple[float, ...] = ()  # histogram bucket upper bounds (none: no histogram)
    buckets: list[int] = field(default_factory=list)  # samples per bucket, one more than bounds

    def __post_init__(self) -> None:
        if self.bounds and not self.buckets:
            self.buckets = [0] * (len(self.bounds) + 1)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        self.recent.append(value)
        if len(self.recent) > self.window:
            self.recent.popleft()
        if self.bounds:
            self.buckets[bisect.bisect_left(self.bounds, value)] += 1

    def histogram(self) -> dict[str, object]:
        """Every sample so far: bucket bounds, cumulative counts per bound (the last: all samples), sum."""
        cumulative, running = [], 0
        for count in self.buckets:
            running += count
            cumulative.append(running)
        return {"bounds": list(self.bounds), "cumulative": cumulative, "sum": self.total, "count": self.count}

    def percentile(self, q: float) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
        return ordered[index]

    def summary(self) -> dict[str, float]:
        mean = self.total / self.count if self.count else 0.0
        return {
            "count": self.count,
            "mean": mean,
            "p50": self.percentile(50),
            "p99": self.percentile(99),
            "max": self.maximum,
        }


class ModelMetrics:
    """Stage timings in milliseconds and batch shapes for one loaded model."""

    STAGES = ("queue_wait", "tokenize", "inference", "post")

    def __init__(self) -> None:
        self.stages = {name: RunningStat(bounds=LATENCY_MS_BOUNDS) for name in self.STAGES}
        self.batch_size = RunningStat(bounds=BATCH_SIZE_BOUNDS)
        self.padded_tokens = RunningStat(bounds=PADDED_TOKENS_BOUNDS)
        self.padding_ratio = RunningStat(bounds=PADDING_RATIO_BOUNDS)
        self.rejected = 0
        self.failed_batches = 0

    def record_stage(self, name: str, seconds: float) -> None:
        self.stages[name].add(seconds * 1000.0)

    def record_batch(self, size: int, real_tokens: int, padded_tokens: int) -> None:
        self.batch_size.add(size)
        self.padded_tokens.add(padded_tokens)
        self.padding_ratio.add(padded_tokens / max(1, real_tokens))

    def snapshot(self) -> dict[str, object]:
        return {
            "stages_ms": {name: stat.summary() for name, stat in self.stages.items()},
            "batch_size": self.batch_size.summary(),
            "padded_tokens": self.padded_tokens.summary(),
            "padding_ratio": self.padding_ratio.summary(),
            "rejected_calls": self.rejected,
            "failed_batches": self.failed_batches,
            "histograms": {
                **{f"{name}_ms": stat.histogram() for name, stat in self.stages.items()},
                "batch_size": self.batch_size.histogram(),
                "padded_tokens": self.padded_tokens.histogram(),
                "padding_ratio": self.padding_ratio.histogram(),
            },
        }


class GenerationMetrics:
    """Per-request figures of a text-generation model: time to first token, decode speed, sizes, endings."""

    def __init__(self) -> None:
        self.ttft_ms = RunningStat(bounds=LATENCY_MS_BOUNDS)
        self.decode_tokens_per_s = RunningStat(bounds=TOKENS_PER_S_BOUNDS)
        self.prompt_tokens = RunningStat(bounds=TOKENS_BOUNDS)
        self.completion_tokens = RunningStat(bounds=TOKENS_BOUNDS)
        self.finish_reasons: dict[str, int] = {}
        self.rejected = 0  # requests refused as busy

    def record(self, ttft_s: float, decode_rate: float, prompt: int, completion: int, reason: str) -> None:
        self.ttft_ms.add(ttft_s * 1000.0)
        if decode_rate > 0:
            self.decode_tokens_per_s.add(decode_rate)
        self.prompt_tokens.add(prompt)
        self.completion_tokens.add(completion)
        self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + 1

    def snapshot(self) -> dict[str, object]:
        return {
            "generation": {
                "ttft_ms": self.ttft_ms.summary(),
                "decode_tokens_per_s": self.decode_tokens_per_s.summary(),
                "prompt_tokens": self.prompt_tokens.summary(),
                "completion_tokens": self.completion_tokens.summary(),
                "finish_reasons": dict(self.finish_reasons),
                "rejected_calls": self.rejected,
            },
            "histograms": {
                "ttft_ms": self.ttft_ms.histogram(),
                "decode_tokens_per_s": self.decode_tokens_per_s.histogram(),
                "prompt_tokens": self.prompt_tokens.histogram(),
                "completion_tokens": self.completion_tokens.histogram(),
            },
        }


class RequestCounts:
    """Requests and their errors per model since the engine started (kept by the engine, so an unload or reload
    does not reset them). Safe from any thread or greenlet: a native lock held for a dictionary update."""

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._errors: dict[tuple[str, str], dict[type[BaseException], int]] = {}
        self.rate_limited = 0  # requests refused by the per-user rate limit (before any model is known)

    def request(self, model: str, model_type: str) -> None:
        with self._lock:
            self._requests[(model, model_type)] = self._requests.get((model, model_type), 0) + 1

    def error(self, model: str, model_type: str, error: BaseException) -> None:
        with self._lock:
            errors = self._errors.setdefault((model, model_type), {})
            errors[type(error)] = errors.get(type(error), 0) + 1

    def count_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def snapshot(self) -> dict[str, object]:
        """{"models": [{"model", "type", "requests", "errors": {error class: count}}], "rate_limited": n}."""
        with self._lock:
            models = [
                {"model": model, "type": kind, "requests": count, "errors": dict(self._errors.get((model, kind), {}))}
                for (model, kind), count in self._requests.items()
            ]
            return {"models": models, "rate_limited": self.rate_limited}


def format_snapshot(name: str, snapshot: dict[str, object]) -> str:
    """One log line per model: stage p50/p99 and batch shape (encoders), or TTFT and decode speed (LLMs), and
    where it computes."""
    placement = snapshot.get("placement")
    where = ""
    if isinstance(placement, dict):
        cores = ",".join(map(str, placement["cores"])) or "unpinned"
        where = f", cores {cores} ({placement['threads']} threads, {'spin' if placement['spin'] else 'no spin'})"
    return _format_figures(name, snapshot) + where


def _format_figures(name: str, snapshot: dict[str, object]) -> str:
    generation = snapshot.get("generation")
    if isinstance(generation, dict):
        ttft, rate = generation["ttft_ms"], generation["decode_tokens_per_s"]
        return (
            f"model {name}: requests={int(ttft['count'])} ttft p50={ttft['p50']:.0f}ms p99={ttft['p99']:.0f}ms, "
            f"decode p50={rate['p50']:.1f} tokens/s, finish={generation['finish_reasons']}"
        )
    stages = snapshot["stages_ms"]
    assert isinstance(stages, dict)
    parts = [f"{stage} p50={s['p50']:.1f}ms p99={s['p99']:.1f}ms" for stage, s in stages.items() if s["count"]]
    batch = snapshot["batch_size"]
    assert isinstance(batch, dict)
    padding = snapshot["padding_ratio"]
    assert isinstance(padding, dict)
    parts.append(f"batches={int(batch['count'])} mean_size={batch['mean']:.1f} padding={padding['mean']:.2f}x")
    parts.append(f"rejected={snapshot['rejected_calls']} failed_batches={snapshot['failed_batches']}")
    return f"model {name}: " + ", ".join(parts)
