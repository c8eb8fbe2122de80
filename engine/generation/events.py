"""What a generation stream delivers to its caller, and the per-request parameters it runs with."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import BadRequestError
from engine.generation.constraint import OutputFormat
from engine.generation.sampling import SamplingParams
from engine.text.messages import ToolCall

# Stop strings per request. OpenAI allows 4 and Dify's form says "up to four", but Dify's agents and the SDK
# add their own ("Observation", code fences), so 16 times that; matching costs the same per character however
# many there are, and these caps bound what a request can make the worker build (an automaton of at most
# 64 x 256 characters, ~25 ms) and hold back from the stream (a partial stop: at most 255 characters).
MAX_STOP_SEQUENCES = 64
MAX_STOP_LENGTH = 256


@dataclass(frozen=True)
class GenerationParams:
    sampling: SamplingParams | None = None  # None: the model's defaults (generation_config.json)
    max_tokens: int | None = None  # None: until EOS, a stop string or the context window
    stop: tuple[str, ...] = ()
    # Per-request values (name, value) laid over the model's defaults when `sampling` is None.
    overrides: tuple[tuple[str, float | int], ...] = ()
    output_format: OutputFormat | None = None  # None: free text
    enable_thinking: bool | None = None  # None: the template's default (only for templates with the switch)
    thinking_budget: int | None = None  # most tokens inside <think>…</think> (None: no limit)

    def __post_init__(self) -> None:
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise BadRequestError(f"thinking_budget {self.thinking_budget} is not valid; allowed: 0 or more")
        # Here rather than in a validate() so every way of building the parameters (the adapter, Engine.generate
        # adding its `stop` argument with dataclasses.replace, the command line) is held to the same caps.
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise BadRequestError(
                f"{len(self.stop)} stop sequences were given; at most {MAX_STOP_SEQUENCES} are allowed"
            )
        longest = max((len(stop) for stop in self.stop), default=0)
        if longest > MAX_STOP_LENGTH:
            raise BadRequestError(
                f"a stop sequence of {longest} characters was given; at most {MAX_STOP_LENGTH} are allowed"
            )


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
