"""Per-token cost of grammar-constrained decoding on Qwen's 151,936-token vocabulary: the candidates that install
without torch (llguidance, outlines-core; xgrammar requires torch and triton), single-threaded.

For each library: the one-off costs (tokenizer/vocabulary, schema compilation) and, replaying a valid answer
token by token, the time to compute the allowed-token mask before each token and to advance past it; then the
engine's cost of applying a mask to the logits. Compare with a decode step of Qwen2.5-0.5B (~16 ms on 2 cores).

    .venv/bin/python bench/grammar.py [--tokenizer .models/qwen2.5-coder-0.5b-instruct-genai/tokenizer.json]
    make bench-grammar
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = ROOT / ".models" / "qwen2.5-coder-0.5b-instruct-genai" / "tokenizer.json"
VOCAB = 151_936  # Qwen2.5's logits (the tokenizer has 151,665 tokens; the rest are padding)
EOS = 151_645
# Nested objects, arrays, enums, required fields: what a Dify workflow's structured output looks like.
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "priority": {"enum": ["low", "medium", "high"]},
        "estimate_hours": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
            "required": ["name"],
        },
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
ANSWER = {
    "title": "Migrate the billing service to the new payments API",
    "priority": "high",
    "estimate_hours": 12.5,
    "tags": ["backend", "payments", "migration"],
    "owner": {"name": "Dana Whitfield", "email": "dana@example.com"},
    "subtasks": [
        {"title": "Read the new API's reference and list the breaking changes", "done": True},
        {"title": "Port the refund flow and its tests", "done": False},
        {"title": "Shadow traffic for a week, then switch", "done": False},
    ],
}


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "mean_ms": round(statistics.fmean(seconds) * 1e3, 4),
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 4),
        "max_ms": round(ordered[-1] * 1e3, 4),
    }


def _timed(action: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    value = action()
    return value, time.perf_counter() - started


def bench_llguidance(tokenizer_json: str, ids: list[int]) -> dict[str, object]:
    import llguidance

    from engine.generation.constraint import OutputFormat

    tokenizer, tokenizer_s = _timed(lambda: llguidance.LLTokenizer(tokenizer_json, n_vocab=VOCAB, eos_token=EOS))
    output = OutputFormat("json_schema", json.dumps(SCHEMA))
    matcher, compile_s = _timed(lambda: llguidance.LLMatcher(tokenizer, output.grammar(), log_level=0))
    mask = np.zeros((VOCAB + 31) // 32, dtype=np.int32)
    masks, consumes = [], []
    for token in [*ids, EOS]:
        _, seconds = _timed(lambda: matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes))
        masks.append(seconds)
        if not (mask[token >> 5] >> (token & 31)) & 1:
            raise AssertionError(f"llguidance refused token {token} of a valid answer")
        if token == EOS:
            break
        ok, seconds = _timed(lambda token=token: matcher.consume_token(token))
        consumes.append(seconds)
        assert ok, matcher.get_error()
    return {
        "version": importlib.metadata.version("llguidance"),
        "tokenizer_s": round(tokenizer_s, 3),
        "compile_s": round(compile_s, 4),
        "mask": _ms(masks),
        "advance": _ms(consumes),
        "tokens": len(masks),
    }


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (tokenizer.json stores tokens in it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def bench_outlines(tokenizer: Tokenizer, ids: list[int], timeout_s: float) -> dict[str, object]:
    import outlines_core

    decoder = _byte_decoder()
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    tokens: dict[bytes, list[int]] = {}
    for text, token in tokenizer.get_vocab(with_added_tokens=False).items():
        if text not in special and token != EOS:
            tokens.setdefault(bytes(decoder[c] for c in text), []).append(token)
    vocabulary, vocab_s = _timed(lambda: outlines_core.Vocabulary(EOS, tokens))
    regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(SCHEMA))
    index, compile_s = _timed(lambda: outlines_core.Index(regex, vocabulary))
    guide = outlines_core.Guide(index)
    mask = np.zeros((VOCAB + 31) // 32, dtype=np.int32)
    masks, advances = [], []
    for token in [*ids, EOS]:
        _, seconds = _timed(lambda: guide.write_mask_into(mask.ctypes.data, mask.shape[0], 4))
        masks.append(seconds)
        if token == EOS:
            break
        _, seconds = _timed(lambda token=token: guide.advance(token, return_tokens=False))
        advances.append(seconds)
    return {
        "version": importlib.metadata.version("outlines-core"),
        "vocabulary_s": round(vocab_s, 3),
        "compile_s": round(compile_s, 3),
        "mask": _ms(masks),
        "advance": _ms(advances),
        "tokens": len(masks),
    }


def bench_apply(repeats: int = 200) -> dict[str, object]:
    """The engine's side (engine/generation/constraint.py): bitmask → bool mask → masked logits, vs. a greedy
    pick alone."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    bits = rng.integers(-(2**31), 2**31 - 1, (VOCAB + 31) // 32, dtype=np.int64).astype(np.int32)
    applies, argmaxes = [], []
    for _ in range(repeats):
        _, seconds = _timed(
            lambda: np.where(np.unpackbits(bits.view(np.uint8), bitorder="little")[:VOCAB].view(bool), logits, -np.inf)
        )
        applies.append(seconds)
        _, seconds = _timed(lambda: np.argmax(logits))
        argmaxes.append(seconds)
    return {"apply_mask": _ms(applies), "argmax": _ms(argmaxes)}


def bench_engine(tokenizer: Tokenizer, ids: list[int]) -> dict[str, object]:
    """The engine's whole per-token path (engine/generation/constraint.py through Sampler.choose, greedy):
    the answer's tokens are each step's favourite, with a long budget (no closing checks) and with a budget just
    inside the closing horizon (the closing distance is simulated as the end nears)."""
    from engine.generation.constraint import CLOSE_HORIZON, GrammarVocabulary, OutputFormat, TokenConstraint
    from engine.generation.sampling import Sampler, SamplingParams

    vocab, build_s = _timed(lambda: GrammarVocabulary(tokenizer, VOCAB, frozenset({EOS})))
    grammar = OutputFormat("json_schema", json.dumps(SCHEMA)).grammar()
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    results: dict[str, object] = {"vocabulary_s": round(build_s, 3)}
    for name, budget in (("long_budget", 4 * len(ids)), ("near_the_end", min(CLOSE_HORIZON, len(ids) + 4))):
        sampler = Sampler(SamplingParams(temperature=0.0), [], VOCAB, TokenConstraint(vocab, grammar, budget))
        free = Sampler(SamplingParams(temperature=0.0), [], VOCAB)
        constrained_s, free_s = [], []
        for token in [*ids, EOS]:
            logits = base.copy()
            logits[token] = 50.0
            chosen, seconds = _timed(lambda logits=logits, sampler=sampler: sampler.choose(logits))
            constrained_s.append(seconds)
            free_s.append(_timed(lambda logits=logits, free=free: free.choose(logits))[1])
            if chosen == EOS:
                break
        results[name] = {"constrained": _ms(constrained_s), "unconstrained": _ms(free_s), "tokens": len(free_s)}
    return results


def run(tokenizer_path: Path, outlines_timeout_s: float = 300.0) -> dict[str, object]:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    text = json.dumps(ANSWER, separators=(",", ":"))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    results: dict[str, object] = {"tokenizer": str(tokenizer_path), "vocab": VOCAB, "answer_tokens": len(ids)}
    results["llguidance"] = bench_llguidance(tokenizer.to_str(), ids)
    try:
        results["outlines_core"] = bench_outlines(tokenizer, ids, outlines_timeout_s)
    except Exception as error:  # report it rather than lose the other figures
        results["outlines_core"] = {"error": f"{type(error).__name__}: {error}"}
    results["xgrammar"] = {"error": "not measured: its wheel requires torch, transformers and triton"}
    results["engine_apply"] = bench_apply()
    results["engine_per_token"] = bench_engine(tokenizer, ids)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not args.tokenizer.is_file():
        sys.exit(f"{args.tokenizer} not found (make models builds .models/)")
    results = run(args.tokenizer)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
