"""Running per-model statistics: stage timings and batch shapes, kept cheaply on the worker thread."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field


@dataclass
class RunningStat:
    """Count, mean and max over all samples; percentiles over the most recent ones."""

    window: int = 2048
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0
    recent: collections.deque[float] = field(default_factory=collections.deque)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        self.recent.append(value)
        if len(self.recent) > self.window:
            self.recent.popleft()

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
        self.stages = {name: RunningStat() for name in self.STAGES}
        self.batch_size = RunningStat()
        self.padded_tokens = RunningStat()
        self.padding_ratio = RunningStat()
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
        }


class GenerationMetrics:
    """Per-request figures of a text-generation model: time to first token, decode speed, sizes, endings."""

    def __init__(self) -> None:
        self.ttft_ms = RunningStat()
        self.decode_tokens_per_s = RunningStat()
        self.prompt_tokens = RunningStat()
        self.completion_tokens = RunningStat()
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
            }
        }


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
