"""Next-token selection from one sequence's logits: penalties, temperature, top-k / top-p / min-p, seeded draws.

Semantics follow the references users compare against: repetition penalty as in Hugging Face (over prompt and
output tokens, divide positive logits / multiply negative ones), presence and frequency penalties as in
OpenAI (over output tokens: logit - count * frequency - (count > 0) * presence), then temperature, top-k,
top-p and min-p in transformers' order. Temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from engine.errors import BadRequestError


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
    """Occurrences of each token id: in the prompt (repetition penalty) and in the output (OpenAI penalties).

    The ids seen are also kept as a list, so penalties touch those few entries instead of masking the whole
    vocabulary on every step (151,936 entries for Qwen)."""

    def __init__(self, prompt: list[int] | tuple[int, ...], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.seen = np.zeros(vocab_size, dtype=bool)
        ids = np.unique(np.asarray([i for i in prompt if 0 <= i < vocab_size], dtype=np.int64))
        self.seen[ids] = True
        self._seen_ids = ids.tolist()
        self.output = np.zeros(vocab_size, dtype=np.int32)
        self._output_ids: list[int] = []

    def add(self, token: int) -> None:
        if 0 <= token < self.vocab_size:
            if not self.seen[token]:
                self.seen[token] = True
                self._seen_ids.append(token)
            if not self.output[token]:
                self._output_ids.append(token)
            self.output[token] += 1

    def seen_ids(self, size: int) -> np.ndarray:
        ids = np.asarray(self._seen_ids, dtype=np.int64)
        return ids[ids < size]

    def output_ids(self, size: int) -> np.ndarray:
        ids = np.asarray(self._output_ids, dtype=np.int64)
        return ids[ids < size]


def apply_penalties(logits: np.ndarray, params: SamplingParams, counts: TokenCounts) -> np.ndarray:
    """Penalised copy of `logits` (1-D float32); returns `logits` itself when no penalty is active."""
    if params.repetition_penalty == 1.0 and params.presence_penalty == 0.0 and params.frequency_penalty == 0.0:
        return logits
    out = logits.astype(np.float32, copy=True)
    size = out.shape[0]
    if params.repetition_penalty != 1.0:
        seen = counts.seen_ids(size)
        chosen = out[seen]
        out[seen] = np.where(chosen < 0, chosen * params.repetition_penalty, chosen / params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        used = counts.output_ids(size)  # every one occurred at least once
        occurrences = counts.output[used].astype(np.float32)
        out[used] -= occurrences * np.float32(params.frequency_penalty) + np.float32(params.presence_penalty)
    return out


def _best_first(weights: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return ids[np.argsort(-weights[ids], kind="stable")]


def _top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first. A threshold below the maximum first narrows the vocabulary
    to a few candidates (an argpartition of Qwen's 151,936 logits alone takes ~1.3 ms, a mask ~0.04 ms)."""
    peak = float(values.max())
    margin = 4.0
    while True:
        candidates = np.flatnonzero(values >= peak - margin)
        if candidates.shape[0] >= k or not np.isfinite(margin):
            break
        margin = margin * 4 if margin < 1e6 else np.inf
    if candidates.shape[0] > k:
        candidates = candidates[np.argpartition(-values[candidates], k - 1)[:k]]
    return _best_first(values, candidates)


# The top-p cut sorts at most about this many weights around it (unless they tie).
_SORTED_CUT = 4096


def _nucleus_indices(weights: np.ndarray, mass: float) -> np.ndarray:
    """Indices of the shortest best-first prefix of `weights` whose sum reaches `mass` (the top-p nucleus), in no
    particular order. A full sort of Qwen's vocabulary takes ~20 ms, so only the weights near the cut are
    sorted: a threshold `low` whose weights hold the mass is lowered until found, then raised towards `high` by
    bisection until few weights lie between the two; the weights above `high` are in the nucleus whatever
    their order."""
    # Invariant: the weights >= low hold the mass, those >= high do not (the best weight is exactly 1).
    low, high = 1.0 / 64, 1.0 + 1e-6
    while low > 0 and weights[weights >= low].sum(dtype=np.float64) < mass:
        high, low = low, (low / 64 if low > 1e-30 else 0.0)
    candidates = np.flatnonzero(weights >= low)
    values = weights[candidates]
    for _ in range(64):
        if np.count_nonzero((values >= low) & (values < high)) <= _SORTED_CUT or high - low <= 1e-9 * high:
            break
        middle = np.sqrt(low * high) if low > 0 else high / 2
        if values[values >= middle].sum(dtype=np.float64) >= mass:
            low = middle
        else:
            high = middle
    between = (values >= low) & (values < high)
    above = candidates[values >= high]  # their sum is below the mass: all of them are in the nucleus
    near = candidates[between]
    near = near[np.argsort(-weights[near], kind="stable")]
    needed = mass - float(weights[above].sum(dtype=np.float64))
    keep = int(np.searchsorted(np.cumsum(weights[near], dtype=np.float64), needed, side="left")) + 1
    return np.concatenate([above, near[: min(keep, near.shape[0])]])


def _candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """(token ids, or None for the whole vocabulary in order; their unnormalised weights) after temperature,
    top-k, top-p and min-p, in no particular order."""
    values = np.asarray(logits, dtype=np.float32)
    vocab = values.shape[0]
    ids: np.ndarray | None = None
    if 0 < params.top_k < vocab:
        ids = _top_k_indices(values, params.top_k)
        values = values[ids]
    # Relative to the best token (weight 1), so min-p is a plain threshold on the weights.
    weights = np.exp((values - values.max()) * np.float32(1.0 / params.temperature))
    if params.top_p < 1.0:
        # The nucleus is taken over the distribution after top-k (renormalised over its survivors).
        order = _nucleus_indices(weights, params.top_p * float(weights.sum()))  # numpy sums pairwise
        ids = order if ids is None else ids[order]
        weights = weights[order]
    if params.min_p > 0.0:
        keep = weights >= np.float32(params.min_p)
        ids = np.flatnonzero(keep) if ids is None else ids[keep]
        weights = weights[keep]
    return ids, weights


_DRAW_BLOCK = 1024


def _draw(weights: np.ndarray, fraction: float) -> int:
    """The index where `fraction` of the total weight is reached (inverse CDF). Large sets go by blocks: block
    sums, then one block's running sum (a float64 running sum over the whole vocabulary takes ~1.5 ms)."""
    if weights.shape[0] <= 4 * _DRAW_BLOCK:
        cumulative = np.cumsum(weights, dtype=np.float64)
        index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="right"))
        return min(index, weights.shape[0] - 1)
    # Block sums in float32 (pairwise within 1,024 entries); casting the whole set to float64 costs ~1 ms.
    blocks = np.cumsum(np.add.reduceat(weights, np.arange(0, weights.shape[0], _DRAW_BLOCK)), dtype=np.float64)
    target = fraction * blocks[-1]
    block = min(int(np.searchsorted(blocks, target, side="right")), blocks.shape[0] - 1)
    before = blocks[block - 1] if block else 0.0
    local = np.cumsum(weights[block * _DRAW_BLOCK : (block + 1) * _DRAW_BLOCK], dtype=np.float64)
    index = int(np.searchsorted(local, target - before, side="right"))
    return block * _DRAW_BLOCK + min(index, local.shape[0] - 1)


def filtered_distribution(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities), best first, after temperature, top-k, top-p and min-p."""
    ids, weights = _candidates(logits, params)
    if ids is None:
        ids = np.arange(weights.shape[0])
    order = np.argsort(-weights, kind="stable")
    ids, weights = ids[order], weights[order].astype(np.float64)
    return ids, weights / weights.sum()


class Sampler:
    """Chooses the next token of one sequence; owns the sequence's random generator and token counts, and its
    grammar constraint when the request asked for structured output."""

    def __init__(
        self,
        params: SamplingParams,
        prompt: list[int] | tuple[int, ...],
        vocab_size: int,
        constraint: Constraint | None = None,
    ) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        penalised = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        self.counts = TokenCounts(prompt, vocab_size) if penalised else None
        self.constraint = constraint

    @property
    def constrained(self) -> bool:
        """True when a grammar decides which tokens may come (speculative drafts must not be used then)."""
        return self.constraint is not None

    def choose(self, logits: np.ndarray) -> int:
        if self.counts is not None:
            logits = apply_penalties(logits, self.params, self.counts)
        token = self._pick(logits) if self.constraint is None else self.constraint.choose(logits, self._pick)
        if self.counts is not None:
            self.counts.add(token)
        return token

    def decisive(self, logits: np.ndarray, margin: float) -> bool:
        """True when the best (penalised) logit leads every other by at least `margin`."""
        if self.counts is not None:
            logits = apply_penalties(logits, self.params, self.counts)
        return int(np.count_nonzero(logits >= logits.max() - np.float32(margin))) == 1

    def choose_against(self, logits: np.ndarray, draft: int) -> int:
        """The next token when `draft` was proposed for it (speculative decoding): greedy, the argmax as always;
        sampling, the draft with probability p(draft) under this sampler's distribution, else a token drawn from
        that distribution with the draft removed. Either way the token is distributed as `choose` would draw it."""
        if self.params.greedy:
            return self.choose(logits)
        if self.counts is not None:
            logits = apply_penalties(logits, self.params, self.counts)
        ids, weights = _candidates(logits, self.params)
        at = np.flatnonzero(ids == draft) if ids is not None else np.array([draft] if draft < weights.shape[0] else [])
        draft_weight = float(weights[int(at[0])]) if at.shape[0] else 0.0
        if self.rng.random() * float(weights.sum(dtype=np.float64)) < draft_weight:
            token = draft
        else:
            rest = weights.copy()
            if at.shape[0]:
                rest[int(at[0])] = 0.0
            index = _draw(rest, self.rng.random())
            token = int(index if ids is None else ids[index])
        if self.counts is not None:
            self.counts.add(token)
        return token

    def _pick(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(logits))
        # An inverse-CDF draw over the candidates in whatever order they come: no sort of the vocabulary.
        ids, weights = _candidates(logits, self.params)
        index = _draw(weights, self.rng.random())
        return int(index if ids is None else ids[index])


class Constraint(Protocol):
    """Decides which tokens may come next (engine/generation/constraint.py); `pick` samples from given logits."""

    def choose(self, logits: np.ndarray, pick: Callable[[np.ndarray], int]) -> int: ...
