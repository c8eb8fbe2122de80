"""Requests whose text is not valid Unicode still get an answer.

The SDK parses each stdin line with pydantic, which rejects invalid UTF-8 and JSON escapes of lone surrogates
(`"\\ud800"`); it then writes an error without the request's session id, so the daemon never hears back about
that request. The plugin cleans the bytes before the SDK sees them: invalid UTF-8 and lone-surrogate escapes
become U+FFFD (the Unicode replacement character), and the request is served with that text. Chunks from the
pipe may split a character or an escape; the guard holds such a tail back until the next chunk.
"""

from __future__ import annotations

import codecs
import re

REPLACEMENT_ESCAPE = "\\ufffd"
# A \\uXXXX escape preceded by an even number of backslashes (an odd one would make it literal text).
_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")
_HIGH = range(0xD800, 0xDC00)
_HIGH_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW = range(0xDC00, 0xE000)
# Longest tail that might still become part of an escape pair: "\uXXXX\uXXX" (11 characters) plus backslashes.
_HOLD = 16


def _fix_surrogates(text: str) -> tuple[str, int]:
    """Lone-surrogate escapes replaced; returns the text and how many were replaced."""
    out: list[str] = []
    position = 0
    replaced = 0
    matches = list(_ESCAPE.finditer(text))
    index = 0
    while index < len(matches):
        match = matches[index]
        code = int(match.group(2), 16)
        keep = True
        if code in _HIGH:
            following = matches[index + 1] if index + 1 < len(matches) else None
            paired = (
                following is not None
                and following.start() == match.end()
                and not following.group(1)
                and int(following.group(2), 16) in _LOW
            )
            if paired:
                index += 2
                continue
            keep = False
        elif code in _LOW:
            keep = False
        if not keep:
            out.append(text[position : match.start()] + match.group(1) + REPLACEMENT_ESCAPE)
            position = match.end()
            replaced += 1
        index += 1
    out.append(text[position:])
    return "".join(out), replaced


class UnicodeGuard:
    """Feed stdin chunks in order; get back bytes that are valid UTF-8 without lone-surrogate escapes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.replaced = 0  # characters or escapes replaced so far

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        text = self._held + self._decoder.decode(chunk, final)
        self.replaced += text.count("\ufffd") - self._held.count("\ufffd")
        cut = len(text) if final else self._safe_cut(text)
        ready, self._held = text[:cut], text[cut:]
        ready, fixed = _fix_surrogates(ready)
        self.replaced += fixed
        return ready.encode("utf-8")

    @staticmethod
    def _safe_cut(text: str) -> int:
        """Where to cut so that no escape (or surrogate pair) is split: before a trailing backslash run that
        could start one, never beyond a newline (a complete line goes through at once)."""
        tail_start = max(text.rfind("\n") + 1, len(text) - _HOLD)
        cut = text.find("\\", tail_start)
        if cut < 0:
            return len(text)
        before = text[max(0, cut - 6) : cut]
        if _HIGH_ESCAPE.fullmatch(before):  # a high surrogate whose low half may be the held escape
            cut -= 6
        while cut > 0 and text[cut - 1] == "\\":  # keep a run of backslashes together (their parity matters)
            cut -= 1
        return cut
