"""Streaming text: whole characters only, stop strings never leaked, tool-call blocks parsed."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from engine.api import Engine
from engine.errors import BadRequestError
from engine.generation.detokenize import (
    IncrementalDecoder,
    OutputStream,
    StopFilter,
    TextPiece,
    ToolCallParser,
    ToolCallPiece,
)
from engine.generation.events import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, GenerationParams
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage
from engine.text.tokenizer import load_tokenizer
from tests.conftest import ROOTS, settings

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


# ---- bounded work per token: the decoding window and the stop matcher


def old_decoder_pieces(ids: list[int]) -> list[str]:
    """The decoder before its window was bounded (offsets into all ids), kept as the reference output."""
    pieces, prefix_offset, read_offset = [], 0, 0
    for end in range(1, len(ids) + 1):
        prefix = TOKENIZER.decode(ids[prefix_offset:read_offset])
        full = TOKENIZER.decode(ids[prefix_offset:end])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            pieces.append("")
            continue
        pieces.append(full[len(prefix) :])
        prefix_offset, read_offset = max(read_offset, end - 5), end
    prefix = TOKENIZER.decode(ids[prefix_offset:read_offset])
    full = TOKENIZER.decode(ids[prefix_offset:])
    return [*pieces, full[len(prefix) :] if len(full) > len(prefix) else ""]


def decoder_pieces(ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(TOKENIZER)
    return [*(decoder.push(token) for token in ids), decoder.flush()]


SPECIAL = TOKENIZER.token_to_id("<|im_start|>")
BYTE_F0 = TOKENIZER.token_to_id("ð")  # byte 0xF0: the first of a 4-byte character, never completed here
EMOJI_BYTES = [TOKENIZER.token_to_id(c) for c in "ðŁĺĢ"]  # 0xF0 0x9F 0x98 0x80, one token each: 😀


@pytest.mark.parametrize(
    "ids",
    [
        TOKENIZER.encode(
            "こんにちは 👋 你好，世界 🌍 Ça va? def f(x):\n    return x ** 2", add_special_tokens=False
        ).ids,
        [*TOKENIZER.encode("Hello", add_special_tokens=False).ids, SPECIAL, SPECIAL, *EMOJI_BYTES, SPECIAL],
        [*EMOJI_BYTES[:2], SPECIAL, *EMOJI_BYTES[2:], *TOKENIZER.encode(" ok", add_special_tokens=False).ids],
        [BYTE_F0, BYTE_F0, *EMOJI_BYTES, *TOKENIZER.encode("👨‍👩‍👧", add_special_tokens=False).ids],
    ],
)
def test_the_bounded_decoder_emits_what_the_unbounded_one_did(ids: list[int]) -> None:
    assert decoder_pieces(ids) == old_decoder_pieces(ids)


def decode_lengths(monkeypatch) -> list[int]:
    lengths: list[int] = []
    decode = IncrementalDecoder._decode
    monkeypatch.setattr(IncrementalDecoder, "_decode", lambda self, ids: lengths.append(len(ids)) or decode(self, ids))
    return lengths


def test_thousands_of_tokens_that_print_nothing_decode_in_a_bounded_window(monkeypatch) -> None:
    lengths = decode_lengths(monkeypatch)
    ids = [*TOKENIZER.encode("Hello", add_special_tokens=False).ids, *[SPECIAL] * 10_000]
    ids += TOKENIZER.encode(" world 👋", add_special_tokens=False).ids
    started = time.perf_counter()
    text = "".join(decoder_pieces(ids))
    assert text == "Hello world 👋"
    assert max(lengths) <= 5 + 17  # context + pending; it grew to 10,000 tokens (quadratic: 4 s) before
    assert time.perf_counter() - started < 0.5


def test_thousands_of_bytes_that_never_complete_decode_in_a_bounded_window(monkeypatch) -> None:
    lengths = decode_lengths(monkeypatch)
    ids = [*[BYTE_F0] * 10_000, *EMOJI_BYTES, *TOKENIZER.encode(" ok 你好", add_special_tokens=False).ids]
    started = time.perf_counter()
    pieces = decoder_pieces(ids)
    text = "".join(pieces)
    assert text == TOKENIZER.decode(ids) == "\ufffd" * 10_000 + "😀 ok 你好"  # invalid bytes: one U+FFFD each
    assert "".join(pieces[:10_000]).count("\ufffd") < 10_000  # released while the run goes on, not at the end
    assert max(lengths) <= 5 + 17
    assert time.perf_counter() - started < 0.5


def test_a_character_split_over_tokens_after_garbage_is_not_broken() -> None:
    for garbage in range(30):  # every position of the 4 bytes relative to the release points
        ids = [*[BYTE_F0] * garbage, *EMOJI_BYTES, *EMOJI_BYTES]
        assert "".join(decoder_pieces(ids)) == "\ufffd" * garbage + "😀😀"  # no 😀 cut into U+FFFDs


class OldStopFilter:
    """The stop filter before the automaton (each stop scanned per push), kept as the reference output."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.held, self.stopped = tuple(s for s in stops if s), "", False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self.held + text
        hits = [index for stop in self.stops if (index := buffer.find(stop)) >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buffer[: min(hits)]
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:size]):
                    keep = size
                    break
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.stopped else held


def test_the_stop_automaton_emits_and_holds_exactly_what_scanning_every_stop_did() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        alphabet = rng.choice(["ab", "abc ", "aé👋\n"])
        stops = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        new, old = StopFilter(stops), OldStopFilter(stops)
        position = 0
        while position < len(text) and not old.stopped:
            size = rng.randint(0, 5)
            chunk, position = text[position : position + size], position + size
            assert new.push(chunk) == old.push(chunk), (stops, text)
            assert new.stopped == old.stopped
        assert new.flush() == old.flush()


def test_ten_thousand_stops_cost_microseconds_per_token() -> None:
    rng = random.Random(0)
    stops = [
        "".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(10_000)
    ]
    stop = StopFilter([s + "\0" for s in stops])  # never completes: every push scans and holds
    text = "the quick brown fox jumps over the lazy dog " * 20
    started = time.perf_counter()
    for index in range(0, 800, 4):
        stop.push(text[index : index + 4])
    per_token = (time.perf_counter() - started) / 200
    assert not stop.stopped and per_token < 100e-6  # 26 ms per token when each stop was scanned


def test_the_number_and_length_of_stop_sequences_are_capped(engine: Engine) -> None:
    assert len(GenerationParams(stop=("x" * MAX_STOP_LENGTH,) * MAX_STOP_SEQUENCES).stop) == 64
    with pytest.raises(BadRequestError, match="65 stop sequences were given; at most 64 are allowed"):
        GenerationParams(stop=("x",) * 65)
    with pytest.raises(BadRequestError, match="a stop sequence of 257 characters was given; at most 256"):
        GenerationParams(stop=("y" * 257,))
    profile = parse_profile(settings("tiny-qwen2-decoder"), "llm", roots=ROOTS)
    with pytest.raises(BadRequestError, match="at most 64"):  # the call's stops join the parameters' ones
        engine.generate(profile, [ChatMessage("user", "hi")], GenerationParams(stop=("a",) * 60), stop=["b"] * 5)


class OldToolCallParser(ToolCallParser):
    """The parser before it kept open blocks as parts (each push searched and copied the whole block)."""

    def push(self, text: str) -> list[TextPiece | ToolCallPiece]:
        self._buffer += text
        if self._leading:
            stripped = self._buffer.lstrip()
            if not stripped:
                return []
            self._leading, self._bare = False, stripped.startswith("{")
        if self._bare:
            return []
        pieces: list[TextPiece | ToolCallPiece] = []
        while True:
            if not self._inside:
                start = self._buffer.find("<tool_call>")
                if start < 0:
                    keep = next((n for n in range(10, 0, -1) if self._buffer.endswith("<tool_call>"[:n])), 0)
                    emit = self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(emit) :]
                    return [*pieces, TextPiece(emit)] if emit else pieces
                if start:
                    pieces.append(TextPiece(self._buffer[:start]))
                self._buffer, self._inside = self._buffer[start:], True
            end = self._buffer.find("</tool_call>")
            if end < 0:
                return pieces
            block, self._buffer = self._buffer[: end + 12], self._buffer[end + 12 :]
            self._inside = False
            pieces.append(self._parse(block, block[11:end]))

    def flush(self) -> list[TextPiece | ToolCallPiece]:
        buffer, self._buffer = self._buffer, ""
        if not buffer:
            return []
        if self._bare:
            return self._parse_bare(buffer)
        if self._inside:
            self._inside = False
            return [self._parse(buffer, buffer[11:])]
        return [TextPiece(buffer)]


def merged(pieces: list) -> list:
    """Adjacent text pieces joined: where a parser splits plain text is not part of its output."""
    out: list = []
    for piece in pieces:
        if isinstance(piece, TextPiece) and out and isinstance(out[-1], TextPiece):
            out[-1] = TextPiece(out[-1].text + piece.text)
        else:
            out.append(piece)
    return out


@pytest.mark.parametrize(
    "text",
    [
        'Let me check.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\nand <tool_call>{"name": "b"',
        '  \n {"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"y": 1}}',
        "<tool_<tool_call>{oops}</tool_call></tool_call> <tool_call>",
        '\n\n<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
    ],
)
def test_the_tool_call_parser_splits_text_as_before(text: str) -> None:
    rng = random.Random(3)
    for _ in range(200):
        new, old = ToolCallParser(True, "c", ["a", "b", "get_weather"]), OldToolCallParser(True, "c", ["a", "b"])
        old.tool_names = new.tool_names
        got, expected, position = [], [], 0
        while position < len(text):
            size = rng.randint(1, 7)
            chunk, position = text[position : position + size], position + size
            got += new.push(chunk)
            expected += old.push(chunk)
        assert merged(got + new.flush()) == merged(expected + old.flush())


def test_a_long_tool_call_streams_without_copying_it_per_token() -> None:
    for opening in ('<tool_call>{"name": "a", "arguments": {"x": "', '{"name": "a", "arguments": {"x": "'):
        parser = ToolCallParser(True, "c", ["a"])
        started = time.perf_counter()
        parser.push(opening)
        for _ in range(30_000):  # 1.5 s inside a block (0.5 s for a bare answer) when each push searched it all
            assert parser.push("abcd") == []
        pieces = parser.push('"}}' + ("</tool_call>" if opening.startswith("<") else "")) + parser.flush()
        assert time.perf_counter() - started < 0.3
        assert len(pieces) == 1 and json.loads(pieces[0].call.arguments) == {"x": "abcd" * 30_000}
