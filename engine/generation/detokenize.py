"""Streaming text from generated token ids: whole characters only, stop strings never leaked, tool calls parsed.

Three stages, each holding back only what it must:
1. `IncrementalDecoder` — byte-level BPE splits an emoji or a CJK character over several tokens; text is
   released only once it no longer ends in a partial character (U+FFFD from the decoder).
2. `StopFilter` — text that could still become a stop string is held until it is ruled out; a completed
   stop string ends the stream and is not emitted.
3. `ToolCallParser` — `<tool_call>{json}</tool_call>` blocks (Qwen / Hermes), or an answer made only of JSON
   objects naming offered tools, become tool calls; a block whose JSON is malformed is passed on as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from engine.text.messages import ToolCall

_REPLACEMENT = "\ufffd"
# Tokens decoded again before the new ones: enough context for decoders whose output of a token depends on
# its neighbours (SentencePiece leading spaces), the same window vLLM and TGI use.
_CONTEXT_TOKENS = 5
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


class IncrementalDecoder:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # tokens before this are already emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special)

    def push(self, token: int) -> str:
        """Text completed by this token ('' while a character is still partial)."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""
        new_text = full[len(prefix) :]
        self._prefix_offset = max(self._read_offset, len(self.ids) - _CONTEXT_TOKENS)
        self._read_offset = len(self.ids)
        return new_text

    def flush(self) -> str:
        """At the end: whatever is still held (a truly invalid byte sequence comes out as U+FFFD)."""
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


def _held_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


class StopFilter:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text safe to emit; sets `stopped` when a stop string completes (it and all after it are dropped)."""
        if self.stopped:
            return ""
        buffer = self._held + text
        if not self.stops:
            self._held = ""
            return buffer
        hits = [index for stop in self.stops if (index := buffer.find(stop)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[: min(hits)]
        keep = _held_suffix(buffer, self.stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class ToolCallPiece:
    call: ToolCall


class ToolCallParser:
    """Splits text into plain text and parsed tool calls; `enabled=False` passes text through.

    Two shapes are recognised: `<tool_call>{json}</tool_call>` blocks anywhere (Qwen / Hermes), and an answer
    that is nothing but JSON objects naming offered tools (small models such as Qwen2.5-Coder-0.5B often drop
    the tags). An answer that starts with `{` is therefore held until it ends when tools were offered."""

    def __init__(self, enabled: bool, call_id_prefix: str = "call", tool_names: Sequence[str] = ()) -> None:
        self.enabled = enabled
        self.tool_names = frozenset(tool_names)
        self._buffer = ""
        self._inside = False
        self._leading = True  # nothing but whitespace seen so far
        self._bare = False  # the answer started with "{": decided at the end
        self._prefix = call_id_prefix
        self.calls = 0

    def push(self, text: str) -> list[TextPiece | ToolCallPiece]:
        if not self.enabled:
            return [TextPiece(text)] if text else []
        self._buffer += text
        if self._leading:
            stripped = self._buffer.lstrip()
            if not stripped:
                return []
            self._leading = False
            self._bare = stripped.startswith("{")
        if self._bare:
            return []
        pieces: list[TextPiece | ToolCallPiece] = []
        while True:
            if not self._inside:
                start = self._buffer.find(TOOL_OPEN)
                if start < 0:
                    keep = _held_suffix(self._buffer, (TOOL_OPEN,))
                    emit = self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(emit) :]
                    if emit:
                        pieces.append(TextPiece(emit))
                    return pieces
                if start:
                    pieces.append(TextPiece(self._buffer[:start]))
                self._buffer = self._buffer[start:]
                self._inside = True
            end = self._buffer.find(TOOL_CLOSE)
            if end < 0:
                return pieces
            block = self._buffer[: end + len(TOOL_CLOSE)]
            self._buffer = self._buffer[end + len(TOOL_CLOSE) :]
            self._inside = False
            pieces.append(self._parse(block, block[len(TOOL_OPEN) : end]))

    def flush(self) -> list[TextPiece | ToolCallPiece]:
        """End of output: an unclosed block still counts when its JSON is complete (models often stop at EOS
        right after the closing brace); otherwise it is text."""
        buffer, self._buffer = self._buffer, ""
        if not buffer:
            return []
        if self._bare:
            return self._parse_bare(buffer)
        if self._inside:
            self._inside = False
            return [self._parse(buffer, buffer[len(TOOL_OPEN) :])]
        return [TextPiece(buffer)]

    def _parse_bare(self, text: str) -> list[TextPiece | ToolCallPiece]:
        """All-JSON answer: tool calls only if every object names an offered tool, else the text unchanged."""
        decoder = json.JSONDecoder()
        values: list[object] = []
        position = 0
        try:
            while position < len(text):
                while position < len(text) and text[position].isspace():
                    position += 1
                if position == len(text):
                    break
                value, position = decoder.raw_decode(text, position)
                values.append(value)
        except ValueError:
            return [TextPiece(text)]
        if not values or not all(self._names_offered_tool(value) for value in values):
            return [TextPiece(text)]
        return [self._call(value) for value in values]  # type: ignore[arg-type]

    def _names_offered_tool(self, value: object) -> bool:
        return (
            isinstance(value, dict)
            and value.get("name") in self.tool_names
            and ("arguments" in value or "parameters" in value)
        )

    def _parse(self, block: str, body: str) -> TextPiece | ToolCallPiece:
        try:
            value = json.loads(body)
        except ValueError:
            return TextPiece(block)
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return TextPiece(block)
        return self._call(value)

    def _call(self, value: dict) -> ToolCallPiece:
        arguments = value.get("arguments", value.get("parameters", {}))
        arguments_text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        self.calls += 1
        return ToolCallPiece(ToolCall(f"{self._prefix}_{self.calls}", value["name"], arguments_text))


class OutputStream:
    """The three stages chained for one sequence: feed token ids, get text pieces and tool calls."""

    def __init__(
        self, tokenizer: Tokenizer, stops: Sequence[str], tool_names: Sequence[str], call_id_prefix: str
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop = StopFilter(stops)
        self.tools = ToolCallParser(bool(tool_names), call_id_prefix, tool_names)

    @property
    def stopped(self) -> bool:
        return self.stop.stopped

    def push(self, token: int) -> list[TextPiece | ToolCallPiece]:
        return self.tools.push(self.stop.push(self.decoder.push(token)))

    def finish(self) -> list[TextPiece | ToolCallPiece]:
        text = self.stop.push(self.decoder.flush()) if not self.stop.stopped else ""
        pieces = self.tools.push(text + self.stop.flush())
        return pieces + self.tools.flush()
