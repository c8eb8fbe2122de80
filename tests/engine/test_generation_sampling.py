"""Sampling on logits: penalties as specified (HF repetition, OpenAI presence/frequency), filters, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import BadRequestError
from engine.generation.sampling import (
    Sampler,
    SamplingParams,
    TokenCounts,
    _draw,
    apply_penalties,
    defaults_from_generation_config,
    filtered_distribution,
)


def logits_of(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    logits = logits_of(2.0, -2.0, 3.0, -1.0)
    counts = TokenCounts([0, 1], vocab_size=4)  # prompt tokens count as seen (HF semantics)
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), counts)
    np.testing.assert_allclose(out, [1.0, -4.0, 3.0, -1.0])
    np.testing.assert_allclose(logits, [2.0, -2.0, 3.0, -1.0])  # input untouched


def test_presence_and_frequency_penalties_follow_openai_on_output_tokens_only() -> None:
    logits = logits_of(1.0, 1.0, 1.0, 1.0)
    counts = TokenCounts([3], vocab_size=4)  # a prompt token: not penalised by presence/frequency
    for token in (0, 0, 0, 1):
        counts.add(token)
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), counts)
    # logit - count * frequency - (count > 0) * presence
    np.testing.assert_allclose(out, [1.0 - 0.75 - 0.5, 1.0 - 0.25 - 0.5, 1.0, 1.0])


def test_no_penalty_returns_logits_unchanged() -> None:
    logits = logits_of(1.0, 2.0)
    assert apply_penalties(logits, SamplingParams(), TokenCounts([0], 2)) is logits


def test_greedy_when_temperature_is_zero_even_with_a_seed() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0, seed=3), [], vocab_size=5)
    assert [sampler.choose(logits_of(0.1, 0.2, 5.0, 0.3, 0.4)) for _ in range(5)] == [2] * 5


def test_top_k_one_equals_greedy_for_any_temperature() -> None:
    rng = np.random.default_rng(0)
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=7), [], vocab_size=300)
    for _ in range(20):
        logits = rng.normal(size=300).astype(np.float32)
        assert sampler.choose(logits) == int(np.argmax(logits))


def test_fixed_seed_reproduces_and_different_seeds_differ() -> None:
    logits = np.linspace(0.0, 1.0, 64, dtype=np.float32)

    def draw(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed), [], vocab_size=64)
        return [sampler.choose(logits) for _ in range(30)]

    assert draw(42) == draw(42)
    assert draw(42) != draw(43)


def test_top_k_keeps_the_k_best_renormalised() -> None:
    ids, probs = filtered_distribution(logits_of(1.0, 4.0, 3.0, 2.0), SamplingParams(temperature=1.0, top_k=2))
    assert ids.tolist() == [1, 2]
    expected = np.exp([4.0, 3.0]) / np.exp([4.0, 3.0]).sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    ids, kept = filtered_distribution(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert ids.tolist() == [0, 1]  # 0.5 + 0.3 reaches 0.8
    np.testing.assert_allclose(kept, [0.5 / 0.8, 0.3 / 0.8], rtol=1e-5)
    ids, _ = filtered_distribution(logits, SamplingParams(temperature=1.0, top_p=0.81))
    assert ids.tolist() == [0, 1, 2]


def test_top_p_on_a_large_flat_vocabulary_falls_back_to_a_full_sort() -> None:
    logits = np.zeros(5000, dtype=np.float32)  # no token stands out: the threshold must drop to all
    ids, probs = filtered_distribution(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert abs(len(ids) - 2500) <= 1  # float rounding of the cumulative sum
    np.testing.assert_allclose(probs.sum(), 1.0)


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    probs = np.array([0.6, 0.2, 0.1, 0.06, 0.04])
    ids, _ = filtered_distribution(np.log(probs).astype(np.float32), SamplingParams(temperature=1.0, min_p=0.15))
    assert ids.tolist() == [0, 1, 2]  # threshold 0.09


def test_temperature_sharpens_the_distribution() -> None:
    logits = logits_of(1.0, 2.0)
    _, hot = filtered_distribution(logits, SamplingParams(temperature=2.0))
    _, cold = filtered_distribution(logits, SamplingParams(temperature=0.5))
    assert cold[0] > hot[0]  # index 0 is the best token (id 1)


def test_sampling_frequencies_follow_the_distribution() -> None:
    probs = np.array([0.7, 0.2, 0.1])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1), [], vocab_size=3)
    draws = [sampler.choose(np.log(probs).astype(np.float32)) for _ in range(4000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_penalties_change_the_greedy_choice() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=2.0), [], vocab_size=3)
    logits = logits_of(3.0, 2.5, 0.0)
    assert [sampler.choose(logits) for _ in range(2)] == [0, 1]  # 3 - 2 < 2.5 after one use


def test_defaults_from_generation_config() -> None:
    sampled = defaults_from_generation_config(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    )
    assert sampled == SamplingParams(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    greedy = defaults_from_generation_config({"do_sample": False, "temperature": 0.7, "top_k": 20})
    assert greedy.greedy and greedy.top_k == 0


def test_request_overrides_and_validation() -> None:
    params = SamplingParams(temperature=0.7).with_overrides({"temperature": 0, "top_k": 5, "seed": 9, "top_p": None})
    assert params.temperature == 0.0 and params.top_k == 5 and params.seed == 9 and params.top_p == 1.0
    with pytest.raises(BadRequestError, match="top_p"):
        SamplingParams().with_overrides({"top_p": 0})


def reference_distribution(logits: np.ndarray, params: SamplingParams) -> dict[int, float]:
    """transformers' order with a full sort in float64: temperature, top-k, top-p, min-p."""
    scaled = logits.astype(np.float64) / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p, side="left")) + 1
        order, probs = order[:keep], probs[:keep]
    if params.min_p:
        mask = probs >= params.min_p * probs[0]
        order, probs = order[mask], probs[mask]
    return dict(zip(order.tolist(), (probs / probs.sum()).tolist()))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0.7, top_p=0.8),
        SamplingParams(temperature=1.3, top_p=0.95),  # a wide nucleus: the threshold has to drop
        SamplingParams(temperature=0.7, top_k=20, top_p=0.8),
        SamplingParams(temperature=1.0, top_k=50, min_p=0.05),
        SamplingParams(temperature=0.9, top_p=0.9, min_p=0.02),
    ],
)
def test_fast_filters_match_a_full_sort_reference_on_a_large_vocabulary(params: SamplingParams) -> None:
    logits = (np.random.default_rng(5).normal(size=50_000) * 2.5).astype(np.float32)
    ids, probs = filtered_distribution(logits, params)
    expected = reference_distribution(logits, params)
    # The same tokens with the same probabilities; the order only up to near-ties (float32 weights).
    assert sorted(ids.tolist()) == sorted(expected)
    np.testing.assert_allclose(probs, [expected[i] for i in ids.tolist()], rtol=1e-4, atol=1e-9)
    assert np.all(np.diff(probs) <= 1e-9)


def test_draws_come_only_from_the_filtered_set_with_its_frequencies() -> None:
    logits = (np.random.default_rng(6).normal(size=20_000) * 3.0).astype(np.float32)
    params = SamplingParams(temperature=0.5, top_p=0.6, seed=11)
    expected = reference_distribution(logits, params)
    sampler = Sampler(params, [], vocab_size=20_000)
    draws = [sampler.choose(logits) for _ in range(3000)]
    assert set(draws) <= set(expected)
    best = max(expected, key=expected.__getitem__)
    assert abs(draws.count(best) / len(draws) - expected[best]) < 0.04


def test_inverse_cdf_draw_over_a_large_set_lands_where_the_mass_is() -> None:
    weights = np.ones(10_000, dtype=np.float32)  # goes by blocks of 1024
    assert _draw(weights, 0.5) == 5000
    assert _draw(weights, 0.0) == 0
    assert _draw(weights, 0.99999999) == 9999
    weights[7777] = 10_000.0  # half of the mass on one token
    assert _draw(weights, 0.25) == 4999  # a quarter of 19,999
    assert _draw(weights, 0.6) == 7777


def test_temperature_only_draws_follow_the_distribution_on_a_large_vocabulary() -> None:
    logits = np.zeros(20_000, dtype=np.float32)
    logits[:5] = 8.0  # five tokens with most of the mass, the rest a long tail
    params = SamplingParams(temperature=1.0, seed=3)
    tail_mass = 19_995 / (19_995 + 5 * np.exp(8.0))
    sampler = Sampler(params, [], vocab_size=20_000)
    draws = np.asarray([sampler.choose(logits) for _ in range(4000)])
    assert abs(np.mean(draws >= 5) - tail_mass) < 0.03
    assert len(set(draws[draws >= 5].tolist())) > 100  # the tail is really sampled, across blocks
