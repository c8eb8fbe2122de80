"""The grammar constraint with the tiny decoder's real tokenizer and llguidance: logits stand in for a model (a
scripted favourite token, or random scores), everything else is the engine's own code."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from tokenizers import Tokenizer

from engine.errors import BadRequestError
from engine.generation.constraint import (
    CLOSE_HORIZON,
    GrammarVocabulary,
    OutputFormat,
    OutputShaping,
    SequenceConstraint,
    TokenConstraint,
    parse_json_schema,
    tool_call_grammar,
)
from engine.generation.detokenize import OutputStream, ToolCallPiece
from engine.generation.reasoning import ThinkingPhase, template_has_switch, template_thinks
from engine.generation.sampling import Sampler, SamplingParams
from tests.conftest import FIXTURES

TOKENIZER = Tokenizer.from_file(str(FIXTURES / "tiny-qwen2-decoder" / "tokenizer.json"))
VOCAB_SIZE = json.loads((FIXTURES / "tiny-qwen2-decoder" / "config.json").read_text())["vocab_size"]
EOS = frozenset({2, 0})
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vocab() -> GrammarVocabulary:
    return GrammarVocabulary(TOKENIZER, VOCAB_SIZE, EOS)


def random_logits(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(VOCAB_SIZE) * 3).astype(np.float32)


def favour(token: int, rng: np.random.Generator) -> np.ndarray:
    logits = random_logits(rng)
    logits[token] = 100.0
    return logits


def run(sampler: Sampler, rng: np.random.Generator, budget: int, script: list[int] = ()) -> list[int]:
    out: list[int] = []
    for step in range(budget):
        logits = favour(script[step], rng) if step < len(script) else random_logits(rng)
        token = sampler.choose(logits)
        out.append(token)
        if token in EOS:
            break
    return out


def text(ids: list[int]) -> str:
    return TOKENIZER.decode([i for i in ids if i not in EOS], skip_special_tokens=True)


@pytest.mark.parametrize("budget", [40, 80, 200])
def test_random_scores_always_end_in_a_valid_document_within_the_budget(vocab: GrammarVocabulary, budget: int) -> None:
    grammar = parse_json_schema(json.dumps(WEATHER)).grammar()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        sampler = Sampler(
            SamplingParams(temperature=1.0, seed=seed), [], VOCAB_SIZE, TokenConstraint(vocab, grammar, budget)
        )
        assert sampler.constrained
        ids = run(sampler, rng, budget)
        assert ids[-1] in EOS and len(ids) <= budget
        jsonschema.validate(json.loads(text(ids)), WEATHER)


def test_greedy_keeps_the_best_token_when_the_grammar_allows_it(vocab: GrammarVocabulary) -> None:
    grammar = OutputFormat("json_object").grammar()
    brace = TOKENIZER.token_to_id("{")
    sampler = Sampler(SamplingParams(temperature=0.0), [], VOCAB_SIZE, TokenConstraint(vocab, grammar, 100))
    assert sampler.choose(favour(brace, np.random.default_rng(0))) == brace
    letter = TOKENIZER.token_to_id("a")
    assert sampler.choose(favour(letter, np.random.default_rng(1))) != letter  # a key must start with a quote


def test_tool_call_arguments_follow_the_tool_schema_once_a_block_opens(vocab: GrammarVocabulary) -> None:
    opening = TOKENIZER.encode("Let me check.<tool_call>", add_special_tokens=False).ids
    grammar = tool_call_grammar([("get_weather", WEATHER)], vocab.tool_call_close)
    calls = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        constraint = SequenceConstraint(vocab, 160, None, grammar, None)
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed), [], VOCAB_SIZE, constraint)
        ids: list[int] = []
        for step in range(160):
            ids.append(sampler.choose(favour(opening[step], rng) if step < len(opening) else random_logits(rng)))
            if step >= len(opening) and constraint.active is None:
                break  # the block closed
        stream = OutputStream(TOKENIZER, (), ["get_weather"], "call")
        pieces = [piece for token in ids for piece in stream.push(token)] + stream.finish()
        found = [piece.call for piece in pieces if isinstance(piece, ToolCallPiece)]
        assert len(found) == 1 and found[0].name == "get_weather"
        jsonschema.validate(json.loads(found[0].arguments), WEATHER)
        calls += 1
    assert calls == 10


@pytest.mark.parametrize(
    ("schema", "named"),
    [('{"not": {}}', "not"), ('{"type": "object", "properties": {"a": {"format": "zzz"}}}', "zzz"), ("[1]", "object")],
)
def test_unsupported_schemas_are_bad_requests_naming_the_construct(schema: str, named: str) -> None:
    with pytest.raises(BadRequestError, match=named):
        parse_json_schema(schema)


def test_thinking_budget_forces_the_closing_tag() -> None:
    phase = ThinkingPhase(TOKENIZER, opened=True, budget=3)
    rng = np.random.default_rng(0)
    ids = []
    while not phase.done and len(ids) < 40:
        ids.append(phase.choose(random_logits(rng), lambda logits: int(np.argmax(logits))))
    assert phase.done and "</think>" in TOKENIZER.decode(ids, skip_special_tokens=False)
    assert len(ids) <= 3 + len(TOKENIZER.encode("\n</think>\n\n", add_special_tokens=False).ids)


def test_an_answer_grammar_starts_after_the_thinking_closes(vocab: GrammarVocabulary) -> None:
    grammar = parse_json_schema(json.dumps(WEATHER)).grammar()
    thinking = ThinkingPhase(TOKENIZER, opened=True, budget=5)
    constraint = SequenceConstraint(vocab, CLOSE_HORIZON * 2, grammar, None, thinking)
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1), [], VOCAB_SIZE, constraint)
    ids = run(sampler, np.random.default_rng(1), CLOSE_HORIZON * 2)
    _thought, answer = text(ids).split("</think>", 1)
    close = TOKENIZER.encode("\n</think>\n\n", add_special_tokens=False).ids
    assert any(ids[k : k + len(close)] == close for k in range(6))  # forced after at most 5 thinking tokens
    jsonschema.validate(json.loads(answer), WEATHER)


def test_reasoning_traits_and_the_opened_block_come_from_the_template() -> None:
    source = (FIXTURES / "tiny-qwen2-decoder-thinking" / "chat_template.jinja").read_text()
    plain = (FIXTURES / "tiny-qwen2-decoder" / "chat_template.jinja").read_text()
    assert template_thinks(source) and template_has_switch(source)
    assert not template_thinks(plain) and not template_has_switch(plain)
    shaping = OutputShaping(TOKENIZER, VOCAB_SIZE, EOS, thinks=True, thinking_switch=True)
    prompt = TOKENIZER.encode("<|im_start|>assistant\n<think>\n", add_special_tokens=False).ids
    constraint, opening = shaping.for_request(None, [], prompt, 50, None)
    assert constraint is None and opening == "<think>\n"
    assert shaping.template_options(False) == {"enable_thinking": False}
    assert OutputShaping(TOKENIZER, VOCAB_SIZE, EOS).template_options(False) == {}
