"""Next-token selection from one sequence's logits: penalties, temperature, top-k / top-p / min-p, seeded draws.

Semantics follow the references users compare against: repetition penalty as in Hugging Face (over prompt and
output tokens, divide positive logits / multiply negative ones), presence and frequency penalties as in
OpenAI (over output tokens: logit - count * frequency - (count > 0) * presence), then temperature, top-k,
top-p and min-p in transformers' order. Temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.errors import BadRequestError

# top-p first looks at this many best candidates (an O(vocab) partition instead of a full sort); it falls back
# to sorting everything only when they do not hold the requested probability mass.
_TOP_P_WINDOW = 1024


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    def validate(self) -> SamplingParams:
        checks = (
            ("temperature", self.temperature >= 0.0, "0 or more"),
            ("top_p", 0.0 < self.top_p <= 1.0, "more than 0 and at most 1"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "from 0 to 1"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "from -2 to 2"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "from -2 to 2"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "more than 0"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise BadRequestError(f"{name} {getattr(self, name)!r} is not valid; allowed: {allowed}")
        return self

    def with_overrides(self, values: Mapping[str, Any]) -> SamplingParams:
        """These defaults, replaced by the request's values (None = keep the default)."""
        fields = {}
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            if values.get(name) is not None:
                fields[name] = float(values[name])
        for name in ("top_k", "seed"):
            if values.get(name) is not None:
                fields[name] = int(values[name])
        return replace(self, **fields).validate()


def defaults_from_generation_config(config: Mapping[str, Any]) -> SamplingParams:
    """Defaults from generation_config.json; do_sample false (or absent, as in transformers) means greedy."""

    def number(key: str, default: float) -> float:
        value = config.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    do_sample = config.get("do_sample") is True
    top_k = config.get("top_k")
    return SamplingParams(
        temperature=number("temperature", 1.0) if do_sample else 0.0,
        top_p=min(1.0, max(1e-6, number("top_p", 1.0))),
        top_k=top_k if isinstance(top_k, int) and top_k > 0 and do_sample else 0,
        min_p=number("min_p", 0.0) if do_sample else 0.0,
        repetition_penalty=max(1e-6, number("repetition_penalty", 1.0)),
    )


class TokenCounts:
    """Occurrences of each token id: in the prompt (repetition penalty) and in the output (OpenAI penalties)."""

    def __init__(self, prompt: list[int] | tuple[int, ...], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.seen = np.zeros(vocab_size, dtype=bool)
        ids = np.asarray([i for i in prompt if 0 <= i < vocab_size], dtype=np.int64)
        self.seen[ids] = True
        self.output = np.zeros(vocab_size, dtype=np.int32)

    def add(self, token: int) -> None:
        if 0 <= token < self.vocab_size:
            self.seen[token] = True
            self.output[token] += 1


def apply_penalties(logits: np.ndarray, params: SamplingParams, counts: TokenCounts) -> np.ndarray:
    """Penalised copy of `logits` (1-D float32); returns `logits` itself when no penalty is active."""
    if params.repetition_penalty == 1.0 and params.presence_penalty == 0.0 and params.frequency_penalty == 0.0:
        return logits
    out = logits.astype(np.float32, copy=True)
    size = min(out.shape[0], counts.vocab_size)
    view = out[:size]
    if params.repetition_penalty != 1.0:
        seen = counts.seen[:size]
        chosen = view[seen]
        view[seen] = np.where(chosen < 0, chosen * params.repetition_penalty, chosen / params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        occurrences = counts.output[:size]
        view -= occurrences * np.float32(params.frequency_penalty)
        view -= (occurrences > 0) * np.float32(params.presence_penalty)
    return out


def filtered_distribution(
    logits: np.ndarray, params: SamplingParams, window: int = _TOP_P_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities) after temperature, top-k, top-p and min-p."""
    scaled = logits.astype(np.float64) / params.temperature
    vocab = scaled.shape[0]
    top_k = params.top_k if 0 < params.top_k < vocab else 0
    if top_k:
        ids = np.argpartition(-scaled, top_k - 1)[:top_k]
    elif params.top_p < 1.0 and vocab > window:
        ids = np.argpartition(-scaled, window - 1)[:window]
    else:
        ids = np.arange(vocab)
    ids = ids[np.argsort(-scaled[ids], kind="stable")]
    peak = scaled[ids[0]]
    weights = np.exp(scaled[ids] - peak)
    # After top-k the distribution is renormalised over the k survivors; otherwise top-p needs the mass of
    # the whole vocabulary even when only a window of candidates was sorted.
    total = weights.sum() if top_k or ids.shape[0] == vocab else np.exp(scaled - peak).sum()
    probs = weights / total
    if params.top_p < 1.0:
        cumulative = np.cumsum(probs)
        if not top_k and ids.shape[0] < vocab and cumulative[-1] < params.top_p:
            return filtered_distribution(logits, params, window=vocab)  # the window was too small: sort all
        keep = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        ids, probs = ids[:keep], probs[:keep]
    if params.min_p > 0.0:
        keep_mask = probs >= params.min_p * probs[0]
        ids, probs = ids[keep_mask], probs[keep_mask]
    return ids, probs / probs.sum()


class Sampler:
    """Chooses the next token of one sequence; owns the sequence's random generator and token counts."""

    def __init__(self, params: SamplingParams, prompt: list[int] | tuple[int, ...], vocab_size: int) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        penalised = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        self.counts = TokenCounts(prompt, vocab_size) if penalised else None

    def choose(self, logits: np.ndarray) -> int:
        if self.counts is not None:
            logits = apply_penalties(logits, self.params, self.counts)
        if self.params.greedy:
            token = int(np.argmax(logits))
        else:
            ids, probs = filtered_distribution(logits, self.params)
            index = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
            token = int(ids[min(index, ids.shape[0] - 1)])
        if self.counts is not None:
            self.counts.add(token)
        return token
