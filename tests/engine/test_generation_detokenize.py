"""Streaming text: whole characters only, stop strings never leaked, tool-call blocks parsed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.generation.detokenize import (
    IncrementalDecoder,
    OutputStream,
    StopFilter,
    TextPiece,
    ToolCallParser,
    ToolCallPiece,
)
from engine.text.tokenizer import load_tokenizer

TOKENIZER = load_tokenizer(Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-qwen2-decoder")


def stream_text(text: str, stops: tuple[str, ...] = (), tools: bool = False) -> tuple[list, OutputStream]:
    """Feed the tokens of `text` one at a time; returns every piece produced, in order."""
    output = OutputStream(TOKENIZER, stops, ["get_weather", "a", "b"] if tools else [], "call")
    pieces = []
    for token in TOKENIZER.encode(text, add_special_tokens=False).ids:
        pieces += output.push(token)
        if output.stopped:
            break
    return pieces + output.finish(), output


def joined(pieces: list) -> str:
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))


@pytest.mark.parametrize("text", ["こんにちは 👋 你好，世界 🌍 Ça va? ÆØÅ 🚀", "👨‍👩‍👧‍👦 family", "数学 🧮 end"])
def test_emoji_and_cjk_stream_intact(text: str) -> None:
    ids = TOKENIZER.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # byte-level BPE really splits these characters over several tokens
    decoder = IncrementalDecoder(TOKENIZER)
    deltas = [decoder.push(token) for token in ids]
    deltas.append(decoder.flush())
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == text


def test_special_tokens_are_not_emitted() -> None:
    decoder = IncrementalDecoder(TOKENIZER)
    ids = [*TOKENIZER.encode("hello", add_special_tokens=False).ids, TOKENIZER.token_to_id("<|im_end|>")]
    assert "".join(decoder.push(t) for t in ids) + decoder.flush() == "hello"


def test_stop_string_split_across_pushes_is_held_then_dropped() -> None:
    stop = StopFilter(["STOP"])
    assert stop.push("abc S") == "abc "
    assert stop.push("TO") == ""
    assert stop.push("P and more") == ""
    assert stop.stopped and stop.flush() == ""


def test_a_prefix_that_does_not_complete_is_released() -> None:
    stop = StopFilter(["STOP"])
    assert stop.push("ST") == ""
    assert stop.push("ILL") == "STILL"
    assert stop.push("ST") == ""
    assert stop.flush() == "ST"  # end of output: the held prefix was never a stop


def test_earliest_of_several_stops_wins() -> None:
    stop = StopFilter(["world", "lo w"])
    assert stop.push("hello world") == "hel"


def test_stop_through_tokens_never_emits_any_part_of_the_stop() -> None:
    pieces, output = stream_text("The answer is 42.\nObservation: done", stops=("\nObservation:",))
    assert joined(pieces) == "The answer is 42."
    assert output.stopped


def test_tool_call_block_becomes_a_tool_call() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    pieces, _ = stream_text(text, tools=True)
    calls = [p.call for p in pieces if isinstance(p, ToolCallPiece)]
    assert joined(pieces) == "Let me check.\n"
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id == "call_1"


def test_several_tool_calls_and_an_unclosed_final_block() -> None:
    text = (
        '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}'
    )
    pieces, _ = stream_text(text, tools=True)
    calls = [p.call for p in pieces if isinstance(p, ToolCallPiece)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]
    assert joined(pieces) == "\n"


def test_malformed_tool_call_json_is_reported_as_text() -> None:
    text = 'ok <tool_call>{"name": "get_weather", "arguments": {city: Paris}</tool_call> bye'
    pieces, _ = stream_text(text, tools=True)
    assert not any(isinstance(p, ToolCallPiece) for p in pieces)
    assert joined(pieces) == text


def test_tool_markup_is_plain_text_when_the_request_has_no_tools() -> None:
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    pieces, _ = stream_text(text, tools=False)
    assert joined(pieces) == text


def test_tool_open_tag_split_over_pushes() -> None:
    parser = ToolCallParser(True)
    out = parser.push("hi <tool")
    assert out == [TextPiece("hi ")]
    out = parser.push('_call>{"name": "f", "arguments": {}}</tool')
    assert out == []
    out = parser.push("_call> done")
    assert isinstance(out[0], ToolCallPiece) and out[1] == TextPiece(" done")
    assert parser.flush() == []


def test_a_bare_json_answer_naming_an_offered_tool_is_a_tool_call() -> None:
    # Qwen2.5-Coder-0.5B answers a weather question with the JSON alone, without <tool_call> tags.
    pieces, _ = stream_text('{"name": "get_weather", "arguments": {"city": "Paris"}}', tools=True)
    assert [(p.call.name, json.loads(p.call.arguments)) for p in pieces] == [("get_weather", {"city": "Paris"})]
    pieces, _ = stream_text('\n{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"y": 1}}', tools=True)
    assert [p.call.name for p in pieces] == ["a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "unknown_tool", "arguments": {}}',
        '{"city": "Paris"}',
        '{"name": "a", "arguments": {}} and text',
        "{oops",
    ],
)
def test_json_answers_that_are_not_tool_calls_stay_text(text: str) -> None:
    pieces, _ = stream_text(text, tools=True)
    assert joined(pieces) == text and not any(isinstance(p, ToolCallPiece) for p in pieces)
