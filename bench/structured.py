"""Decode speed with a JSON-schema constraint vs. without, on the same model, prompt and greedy settings.

Each run generates up to `max_tokens` tokens; the figure per run is the engine's own decode rate (tokens per
second after the first token, `Finished.decode_tokens_per_second`), the median over runs is reported, and the
ratio constrained / unconstrained is what the structured-output goal asks to stay >= 0.9 on the real Qwen.
The unconstrained runs are asked for the same JSON in words, and EOS is kept out of their way by `min_tokens`
(runs that end sooner are still counted: the rate is per token).

    .venv/bin/python bench/structured.py --tiny                 # seconds, on the test fixtures
    .venv/bin/python bench/structured.py --model .models/qwen2.5-coder-0.5b-instruct-genai --threads 2
    make bench-structured [BENCH_STRUCTURED_ARGS=--tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.api import Engine
from engine.generation.constraint import parse_json_schema
from engine.generation.events import Finished, GenerationParams
from engine.generation.sampling import SamplingParams
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "models" / "tiny-qwen2-decoder-genai"
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "priority": {"enum": ["low", "medium", "high"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "subtasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}},
                "required": ["title", "done"],
            },
        },
    },
    "required": ["title", "priority", "tags", "owner", "subtasks"],
}
PROMPT = (
    "Plan the migration of a billing service to a new payments API as a task: a title, a priority, tags, "
    "an owner and five subtasks, in JSON."
)


def _rate(engine: Engine, profile: object, params: GenerationParams) -> tuple[float, int]:
    finished = None
    for event in engine.generate(profile, [ChatMessage("user", PROMPT)], params):  # type: ignore[arg-type]
        if isinstance(event, Finished):
            finished = event
    assert finished is not None
    return finished.decode_tokens_per_second, finished.completion_tokens


def compare(model_dir: Path, threads: int = 2, runs: int = 5, max_tokens: int = 128) -> dict[str, object]:
    """Median decode tokens/s of `runs` generations each way, and their ratio (one Engine, model loaded once)."""
    # Speculative decoding off for both: constrained sequences never speculate, and this compares the grammar's
    # per-token cost, not prompt-lookup drafts (which the unconstrained JSON-in-words answers would get).
    values = {
        "model_path": model_dir.name,
        "intra_op_threads": str(threads),
        "cpu_affinity": "none",
        "speculative_decoding": "off",
    }
    profile = parse_profile(values, "llm", roots=(model_dir.parent.resolve(),))
    output = parse_json_schema(json.dumps(SCHEMA))
    greedy = SamplingParams(temperature=0.0)
    free = GenerationParams(greedy, max_tokens=max_tokens)
    constrained = GenerationParams(greedy, max_tokens=max_tokens, output_format=output)
    engine = Engine()
    try:
        _rate(engine, profile, constrained)  # warm-up: loads the model and the grammar vocabulary
        _rate(engine, profile, free)
        rows: dict[str, list[tuple[float, int]]] = {"unconstrained": [], "constrained": []}
        for _ in range(runs):  # interleaved, so a noisy neighbour hits both
            rows["unconstrained"].append(_rate(engine, profile, free))
            rows["constrained"].append(_rate(engine, profile, constrained))
    finally:
        engine.close()
    medians = {name: statistics.median(rate for rate, _ in values) for name, values in rows.items()}
    return {
        "model": str(model_dir),
        "threads": threads,
        "runs": runs,
        "max_tokens": max_tokens,
        "decode_tokens_per_second": {name: round(rate, 2) for name, rate in medians.items()},
        "tokens": {name: [tokens for _, tokens in values] for name, values in rows.items()},
        "ratio": round(medians["constrained"] / medians["unconstrained"], 3) if medians["unconstrained"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / ".models" / "qwen2.5-coder-0.5b-instruct-genai")
    parser.add_argument("--tiny", action="store_true", help="the tiny genai fixture (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    model = TINY if args.tiny else args.model
    if not model.is_dir():
        sys.exit(f"{model} not found (make models builds .models/)")
    result = compare(model, args.threads, args.runs, args.max_tokens)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
