"""Invalid Unicode in a request is replaced, so the request is still answered (the SDK would drop it)."""

from __future__ import annotations

import json

import pytest

from models.unicode_guard import UnicodeGuard


def through(chunks: list[bytes]) -> bytes:
    guard = UnicodeGuard()
    return b"".join(guard.feed(chunk) for chunk in chunks) + guard.feed(b"", final=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"t": "a \\ud800 b"}', "a \ufffd b"),
        ('{"t": "\\udfff"}', "\ufffd"),
        ('{"t": "pair \\ud83d\\ude00 ok"}', "pair \U0001f600 ok"),
        ('{"t": "escaped \\\\ud800 stays text"}', "escaped \\ud800 stays text"),
        ('{"t": "\\\\\\ud800"}', "\\\ufffd"),
        ('{"t": "high then text \\ud83dx"}', "high then text \ufffdx"),
    ],
)
def test_lone_surrogate_escapes_become_replacement_characters(raw: str, expected: str) -> None:
    assert json.loads(through([raw.encode()]))["t"] == expected
    for split in range(1, len(raw)):  # any chunk boundary gives the same result
        assert json.loads(through([raw[:split].encode(), raw[split:].encode()]))["t"] == expected


def test_invalid_utf8_bytes_become_replacement_characters_even_split() -> None:
    raw = b'{"t": "caf\xc3\xa9 \xff\xfe end"}'
    for split in range(1, len(raw)):
        assert json.loads(through([raw[:split], raw[split:]]))["t"] == "café \ufffd\ufffd end"


def test_valid_input_passes_unchanged() -> None:
    raw = json.dumps({"t": "日本語 \U0001f600 \\ backslash", "n": [1, 2]}, ensure_ascii=False).encode() + b"\n"
    assert through([raw[:7], raw[7:19], raw[19:]]) == raw
