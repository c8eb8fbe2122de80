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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from engine.text.messages import ToolCall

_REPLACEMENT = "\ufffd"
# Tokens decoded again before the new ones: enough context for decoders whose output of a token depends on
# its neighbours (SentencePiece leading spaces), the same window vLLM and TGI use.
_CONTEXT_TOKENS = 5
# Tokens held while they end in a partial character. One character is at most 4 UTF-8 bytes, so at most 4
# tokens; past this the run holds bytes that can never complete (or tokens that print nothing), and is
# released so each push decodes a bounded window instead of everything since the last text.
_MAX_PENDING = 16
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


class IncrementalDecoder:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self._context: list[int] = []  # the last tokens already emitted, decoded again for their effect
        self._context_text = ""
        self._pending: list[int] = []  # tokens whose text is not emitted yet

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special)

    def push(self, token: int) -> str:
        """Text completed by this token ('' while a character is still partial)."""
        self._pending.append(token)
        full = self._decode(self._context + self._pending)
        if full.endswith(_REPLACEMENT):
            return self._release_garbage() if len(self._pending) > _MAX_PENDING else ""
        if len(full) <= len(self._context_text):
            if full == self._context_text:
                self._pending.clear()  # they print nothing here (skipped special tokens): nothing to wait for
            elif len(self._pending) > _MAX_PENDING:
                return self._emit(len(self._pending), full)
            return ""
        return self._emit(len(self._pending), full)

    def flush(self) -> str:
        """At the end: whatever is still held (a truly invalid byte sequence comes out as U+FFFD)."""
        full = self._decode(self._context + self._pending)
        return self._emit(len(self._pending), full)

    def _emit(self, count: int, full: str) -> str:
        """The text of the first `count` pending tokens (`full` decodes the context and them); like vLLM and
        TGI, the last of them (at most `_CONTEXT_TOKENS`) become the context of what follows."""
        new_text = full[len(self._context_text) :] if len(full) > len(self._context_text) else ""
        self._context = self._pending[:count][-_CONTEXT_TOKENS:]
        self._pending = self._pending[count:]
        self._context_text = self._decode(self._context)
        return new_text

    def _release_garbage(self) -> str:
        """Too many tokens end in a partial character: release the longest run that ends on a whole one;
        if none does, all but the last 3 tokens (a partial character has at most 3 bytes so far, so its
        start is among them and it can still complete), with no context left to join bytes across the cut."""
        for count in range(len(self._pending) - 1, 0, -1):
            full = self._decode(self._context + self._pending[:count])
            if not full.endswith(_REPLACEMENT) and len(full) > len(self._context_text):
                return self._emit(count, full)
        count = len(self._pending) - 3
        text = self._emit(count, self._decode(self._context + self._pending[:count]))
        self._context, self._context_text = [], ""
        return text


def _held_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


class _StopAutomaton:
    """Aho-Corasick over the stop strings: fed one character at a time, its state is the longest suffix of the
    text so far that begins some stop, so each character costs the same however many stops there are (the
    text a scan of every stop would hold back is exactly that state's depth)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.goto: list[dict[str, int]] = [{}]  # the trie of the stops; state 0 is the empty text
        self.depth = [0]
        ends = set()
        for stop in stops:
            state = 0
            for char in stop:
                child = self.goto[state].get(char)
                if child is None:
                    child = len(self.goto)
                    self.goto[state][char] = child
                    self.goto.append({})
                    self.depth.append(self.depth[state] + 1)
                state = child
            ends.add(state)
        self.fail = [0] * len(self.goto)  # the longest proper suffix of a state's text that is a state too
        # The longest stop that ends a state's text (0: none), so a match is one lookup per character.
        self.longest = [self.depth[state] if state in ends else 0 for state in range(len(self.goto))]
        queue = deque(self.goto[0].values())
        while queue:  # breadth first: a state's fail link is known before its children's
            state = queue.popleft()
            for char, child in self.goto[state].items():
                self.fail[child] = self.step(self.fail[state], char)
                self.longest[child] = self.longest[child] or self.longest[self.fail[child]]
                queue.append(child)

    def step(self, state: int, char: str) -> int:
        while state and char not in self.goto[state]:
            state = self.fail[state]
        return self.goto[state].get(char, 0)


class StopFilter:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._automaton = _StopAutomaton(self.stops) if self.stops else None
        self._state = 0  # the automaton after all text pushed so far; its depth is len(self._held)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text safe to emit; sets `stopped` when a stop string completes (it and all after it are dropped).
        Where stops overlap, the one starting first wins; text that could still become a stop is held."""
        if self.stopped:
            return ""
        buffer = self._held + text
        if self._automaton is None:
            self._held = ""
            return buffer
        automaton, state, first = self._automaton, self._state, len(buffer)
        for index, char in enumerate(text, start=len(self._held)):
            state = automaton.step(state, char)
            if automaton.longest[state]:
                first = min(first, index + 1 - automaton.longest[state])
        if first < len(buffer):
            self.stopped = True
            self._held = ""
            return buffer[:first]
        self._state = state
        keep = automaton.depth[state]
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
        self._buffer = ""  # text outside a block not emitted yet: at most a partial "<tool_call>"
        # Text kept whole until it is decided (leading whitespace, an open block, a bare JSON answer), as parts
        # so each push appends instead of copying everything so far; `_tail` ends an open block, to find a
        # "</tool_call>" split over pushes without searching the whole block again.
        self._parts: list[str] = []
        self._tail = ""
        self._inside = False
        self._leading = True  # nothing but whitespace seen so far
        self._bare = False  # the answer started with "{": decided at the end
        self._prefix = call_id_prefix
        self.calls = 0

    def push(self, text: str) -> list[TextPiece | ToolCallPiece]:
        if not self.enabled:
            return [TextPiece(text)] if text else []
        if self._leading:
            if not text.strip():
                self._parts.append(text)
                return []
            text, self._parts, self._leading = "".join(self._parts) + text, [], False
            self._bare = text.lstrip().startswith("{")
        if self._bare:
            self._parts.append(text)
            return []
        pieces: list[TextPiece | ToolCallPiece] = []
        while True:
            if self._inside:
                window = self._tail + text
                close = window.find(TOOL_CLOSE)
                if close < 0:
                    self._parts.append(text)
                    self._tail = window[-(len(TOOL_CLOSE) - 1) :]
                    return pieces
                cut = close + len(TOOL_CLOSE) - len(self._tail)  # where the block ends in `text`
                block, text = "".join(self._parts) + text[:cut], text[cut:]
                self._parts, self._tail, self._inside = [], "", False
                pieces.append(self._parse(block, block[len(TOOL_OPEN) : -len(TOOL_CLOSE)]))
                continue
            buffer, self._buffer = self._buffer + text, ""
            start = buffer.find(TOOL_OPEN)
            if start < 0:
                keep = _held_suffix(buffer, (TOOL_OPEN,))
                self._buffer = buffer[len(buffer) - keep :]
                if len(buffer) > keep:
                    pieces.append(TextPiece(buffer[: len(buffer) - keep]))
                return pieces
            if start:
                pieces.append(TextPiece(buffer[:start]))
            text, self._inside = buffer[start:], True

    def flush(self) -> list[TextPiece | ToolCallPiece]:
        """End of output: an unclosed block still counts when its JSON is complete (models often stop at EOS
        right after the closing brace); otherwise it is text."""
        buffer = self._buffer + "".join(self._parts)
        self._buffer, self._parts, self._tail = "", [], ""
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
