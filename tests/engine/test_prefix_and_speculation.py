"""Prefix (KV) cache and speculative decoding on the tiny Qwen2 decoders (real ONNX Runtime sessions): both must
leave greedy output exactly as it is without them, and sampling's distribution unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.channel import Channel
from engine.generation.events import Finished, GenerationEvent, GenerationParams
from engine.generation.prefix_cache import PrefixCache
from engine.generation.sampling import Sampler, SamplingParams, filtered_distribution
from engine.generation.scheduler import GenerationScheduler
from engine.generation.speculative import NgramDrafter, accept
from engine.text.messages import ChatMessage
from tests.engine.test_generation_scheduler import ROOT, build, run_until_idle

OPTIMUM, GENAI = "tiny-qwen2-decoder", "tiny-qwen2-decoder-genai"
LAYOUTS = [OPTIMUM] + ([GENAI] if (ROOT / GENAI / "genai_config.json").is_file() else [])
CASES = {
    case["name"]: case
    for case in json.loads((ROOT / OPTIMUM / "expected_greedy.json").read_text(encoding="utf-8"))["cases"]
}
CONTEXT = " ".join(f"Item {i} costs {i * 7 % 13} coins and weighs {i % 5} stones." for i in range(8))


def generate(
    scheduler: GenerationScheduler, conversations: list[list[ChatMessage]], max_tokens: int = 24, **sampling: float
) -> list[Finished]:
    """Submit every conversation at once, step the scheduler until idle, return each one's Finished."""
    channels = []
    params = GenerationParams(SamplingParams(**{"temperature": 0.0, **sampling}), max_tokens=max_tokens)
    for messages in conversations:
        channel: Channel[GenerationEvent] = Channel()
        scheduler.submit(messages, [], params, channel)
        channels.append(channel)
    run_until_idle(scheduler)
    finished = [list(channel)[-1] for channel in channels]
    assert all(isinstance(f, Finished) for f in finished)
    return finished


def conversation(turns: int, answers: list[str]) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You answer questions about this list. " + CONTEXT)]
    for turn in range(turns):
        messages.append(ChatMessage("user", f"Question {turn}: what does item {turn + 3} cost?"))
        if turn < len(answers):
            messages.append(ChatMessage("assistant", answers[turn]))
    return messages


@pytest.mark.parametrize("layout", LAYOUTS)
def test_later_turns_reuse_the_prefix_and_give_the_uncached_ids(layout: str) -> None:
    cached = build(ROOT / layout, speculative_decoding="off")
    plain = build(ROOT / layout, speculative_decoding="off", prefix_cache_mb="0")
    answers: list[str] = []
    for turn in range(1, 4):
        messages = conversation(turn, answers)
        got = generate(cached, [messages])[0]
        expected = generate(plain, [messages])[0]
        assert got.output_ids == expected.output_ids, turn
        assert got.prompt_tokens == expected.prompt_tokens  # usage counts every prompt token, reused or not
        answers.append(cached.tokenizer.decode(list(got.output_ids), skip_special_tokens=True))
    stats = cached.snapshot()["prefix_cache"]
    assert stats["hits"] == 2 and stats["lookups"] == 3  # turns 2 and 3
    assert stats["reused_tokens"] > 0.8 * (stats["prompt_tokens"] - got.prompt_tokens)  # turn 1 had nothing
    assert plain.snapshot()["prefix_cache"]["hits"] == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_concurrent_sequences_sharing_a_system_prompt_get_their_own_ids(layout: str) -> None:
    """Requests admitted together copy the shared prefix from the one already prefilled (a running sequence)
    and from the kept entries; each output equals the one it gets alone without any cache."""
    questions = [conversation(1, [])] + [
        [conversation(1, [])[0], ChatMessage("user", f"List the items heavier than {n} stones.")] for n in range(3)
    ]
    shared = build(ROOT / layout, speculative_decoding="off", max_concurrent_sequences="4")
    plain = build(ROOT / layout, speculative_decoding="off", prefix_cache_mb="0")
    together = generate(shared, questions)
    for messages, got in zip(questions, together):
        assert got.output_ids == generate(plain, [messages])[0].output_ids
    assert shared.snapshot()["prefix_cache"]["hits"] >= 3


def test_entries_are_evicted_least_recently_used_within_the_budget() -> None:
    cache = PrefixCache(budget_bytes=3 * 4096)
    blocks = {name: np.full((1, 2, 1, 64, 8), value, dtype=np.float32) for value, name in enumerate("abcd")}
    tokens = {name: np.arange(64, dtype=np.int64) + 1000 * index for index, name in enumerate("abcd")}
    for name in "abc":
        cache.insert(tokens[name], blocks[name])
    entry, length = cache.longest(tokens["a"])
    assert length == 64
    cache.touch(entry)  # "a" is now the most recently used: "b" goes first
    cache.insert(tokens["d"], blocks["d"])
    assert cache.longest(tokens["b"])[1] == 0
    assert cache.longest(tokens["a"])[1] == 64 and cache.longest(tokens["d"])[1] == 64
    snapshot = cache.snapshot()
    assert snapshot["evictions"] == 1 and snapshot["bytes"] <= snapshot["budget_bytes"]
    # A longer conversation covers its own earlier turn: the shorter entry is dropped, not kept twice.
    longer = np.concatenate([tokens["a"], np.arange(32, dtype=np.int64)])
    cache.insert(longer, np.zeros((1, 2, 1, 96, 8), dtype=np.float32))
    assert cache.snapshot()["entries"] == 2
    assert cache.longest(longer)[1] == 96


def test_a_small_budget_evicts_on_the_real_model() -> None:
    scheduler = build(ROOT / OPTIMUM, speculative_decoding="off", prefix_cache_mb="1")
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (key, value) x KV heads x head size x float32
    for n in range(12):
        text = f"Conversation {n}: " + " ".join(f"w{n}x{i}" for i in range(60))
        generate(scheduler, [[ChatMessage("user", text)]], max_tokens=4)
    stats = scheduler.snapshot()["prefix_cache"]
    assert stats["evictions"] > 0
    assert stats["bytes"] <= (1 << 20) and stats["entries"] * 100 * per_token <= (1 << 20)


def test_speculative_greedy_ids_are_plain_greedy_ids(monkeypatch) -> None:
    """Random weights seldom repeat themselves, so the drafts here know the plain greedy continuation and are
    wrong on purpose every third time (a corrupted second token): verification, acceptance and the KV rewind
    all run, and the output must stay exactly the plain greedy output."""
    from engine.generation import scheduler as scheduler_module

    if GENAI not in LAYOUTS:
        pytest.skip("genai fixture missing")
    plain = build(ROOT / GENAI, speculative_decoding="off")
    prompts = [conversation(1, [])] + [
        [ChatMessage("user", case["messages"][-1]["content"])] for case in CASES.values()
    ]
    expected = [generate(plain, [messages], max_tokens=48)[0] for messages in prompts]
    reference: dict[int, list[int]] = {}  # prompt length -> the plain greedy output ids

    class Oracle(NgramDrafter):
        calls = 0

        def propose(self, history: np.ndarray, limit: int) -> list[int]:
            ((prompt_length, ids),) = reference.items()
            done = history.shape[0] - prompt_length  # output tokens so far, the last one not yet fed
            drafts = ids[done : done + min(limit, 4)]
            Oracle.calls += 1
            if Oracle.calls % 3 == 0 and len(drafts) > 1:
                drafts = [drafts[0], (drafts[1] + 1) % 1024, *drafts[2:]]
            return list(drafts)

    monkeypatch.setattr(scheduler_module, "NgramDrafter", Oracle)
    speculative = build(ROOT / GENAI)
    for messages, plain_finished in zip(prompts, expected):
        reference.clear()
        reference[plain_finished.prompt_tokens] = list(plain_finished.output_ids)
        got = generate(speculative, [messages], max_tokens=48)[0]
        assert got.output_ids == plain_finished.output_ids
    stats = speculative.snapshot()["speculative"]
    assert stats["runs"] > 0 and 0 < stats["accepted"] < stats["proposed"]
    assert plain.snapshot()["speculative"]["runs"] == 0


def test_drafts_come_from_the_latest_earlier_occurrence() -> None:
    drafter = NgramDrafter(max_draft=4)
    history = np.array([5, 6, 7, 8, 9, 1, 6, 7, 3, 4, 2, 6, 7], dtype=np.int64)
    assert drafter.propose(history, limit=10) == [3, 4]  # "6 7" last seen before 3, 4 (length starts at 2)
    assert drafter.propose(history, limit=1) == [3]
    assert drafter.propose(np.array([1, 2, 3, 4], dtype=np.int64), limit=10) == []
    drafter.update(2, 2)
    assert drafter.length == 4
    drafter.update(4, 1)
    assert drafter.length == 2


def test_drafting_backs_off_while_drafts_are_rejected_and_probes_again() -> None:
    from engine.generation.speculative import MIN_ACCEPTANCE, PROBE_EVERY

    drafter = NgramDrafter(max_draft=4)
    history = np.array([5, 6, 7, 8, 9, 1, 6, 7], dtype=np.int64)
    while drafter.rate >= MIN_ACCEPTANCE:
        assert drafter.drafting() and drafter.propose(history, limit=10)
        drafter.update(2, 0)
    turns = [drafter.drafting() for _ in range(PROBE_EVERY)]
    assert turns == [False] * (PROBE_EVERY - 1) + [True]
    assert drafter.propose(history, limit=10) == [8]  # a one-token probe
    drafter.update(1, 1)
    drafter.update(2, 2)
    assert drafter.drafting() and drafter.rate >= MIN_ACCEPTANCE
    assert drafter.propose(history, limit=10) == [8, 9, 1, 6]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9),
        SamplingParams(temperature=1.3, min_p=0.05, repetition_penalty=1.3),
    ],
)
def test_speculative_sampling_keeps_the_distribution(params: SamplingParams) -> None:
    """Two positions verified against drafts: the emitted pair's frequencies match plain sampling's joint
    distribution (chi-square over every pair, 20,000 draws). The synthetic model's logits depend on the position
    only, so after a rejection the next position is sampled from the same row."""
    vocab = 8
    rng = np.random.default_rng(7)
    rows = rng.normal(0.0, 1.5, size=(3, vocab)).astype(np.float32)
    drafts = [int(np.argsort(rows[0])[-2]), 3]  # the first draft is likely but not the favourite
    prompt = [1, 2, 3]

    def probabilities(logits: np.ndarray, sampler: Sampler) -> np.ndarray:
        from engine.generation.sampling import apply_penalties

        if sampler.counts is not None:
            logits = apply_penalties(logits, sampler.params, sampler.counts)
        ids, probs = filtered_distribution(logits, sampler.params)
        out = np.zeros(vocab)
        out[ids] = probs
        return out

    # The exact joint distribution of the first two tokens under plain sampling.
    expected = np.zeros((vocab, vocab))
    first = probabilities(rows[0], Sampler(params, prompt, vocab))
    for a in np.flatnonzero(first):
        sampler = Sampler(params, prompt, vocab)
        if sampler.counts is not None:
            sampler.counts.add(int(a))
        expected[a] = first[a] * probabilities(rows[1], sampler)
    counts = np.zeros((vocab, vocab))
    draws = 20_000
    for seed in range(draws):
        sampler = Sampler(SamplingParams(**{**params.__dict__, "seed": seed}), prompt, vocab)
        tokens = accept(sampler, rows, drafts)
        if len(tokens) == 1:  # the first draft was rejected: the next position is decoded afresh
            tokens.append(sampler.choose(rows[1]))
        counts[tokens[0], tokens[1]] += 1
    observed = counts.ravel()
    expected_counts = expected.ravel() * draws
    assert observed[expected_counts == 0].sum() == 0  # nothing outside the filtered support
    keep = expected_counts >= 5
    chi2 = float((((observed - expected_counts) ** 2)[keep] / expected_counts[keep]).sum())
    # 99.9th percentile of chi-square with (cells - 1) degrees of freedom, at most 63 here: < 110.
    assert chi2 < 110, chi2


def test_optimum_runner_copies_a_prefix_exactly() -> None:
    """Graphs kept in the Optimum layout (not rewritten onto GroupQueryAttention) reuse prefixes through the
    runner's export/import: decoding on from a copied prefix gives the logits of decoding on from the original."""
    import onnxruntime as ort

    from engine.generation.kv_layout import read_kv_layout
    from engine.generation.runners import OptimumRunner

    directory = ROOT / OPTIMUM
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    runner = OptimumRunner(session, read_kv_layout(session, directory, "optimum"))
    ids = CASES["system_user"]["input_ids"]
    original = runner.new_cache(64)
    runner.forward(original, ids)
    copy = runner.new_cache(64)
    runner.import_prefix(copy, runner.export_prefix(original, len(ids) - 3), len(ids) - 3)
    expected = runner.score(original, [5, 6])
    np.testing.assert_allclose(runner.score(copy, [*ids[-3:], 5, 6])[-2:], expected, rtol=1e-5, atol=1e-5)
