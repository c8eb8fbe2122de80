"""What a generation stream delivers to its caller, and the per-request parameters it runs with."""

from __future__ import annotations

from dataclasses import dataclass

from engine.generation.sampling import SamplingParams
from engine.text.messages import ToolCall


@dataclass(frozen=True)
class GenerationParams:
    sampling: SamplingParams | None = None  # None: the model's defaults (generation_config.json)
    max_tokens: int | None = None  # None: until EOS, a stop string or the context window
    stop: tuple[str, ...] = ()
    # Per-request values (name, value) laid over the model's defaults when `sampling` is None.
    overrides: tuple[tuple[str, float | int], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    call: ToolCall


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # stop | length | tool_calls
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float  # seconds from submission to the first sampled token
    decode_tokens_per_second: float  # after the first token
    total_seconds: float
    output_ids: tuple[int, ...] = ()  # the generated token ids, EOS included (tests, benchmarks, diagnostics)


GenerationEvent = TextDelta | ToolCallDelta | Finished
