"""Prompt building: `prompt_overflow=truncate_oldest` keeps exactly the turns the one-turn-at-a-time loop kept,
with a handful of renders instead of one per dropped turn."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.errors import BadRequestError
from engine.generation.prompt import PromptBuilder
from engine.text.chat_template import ChatTemplate
from engine.text.messages import ChatMessage, ToolCall, ToolSpec
from engine.text.tokenizer import load_tokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-qwen2-decoder"
TOKENIZER = load_tokenizer(FIXTURE)
TEMPLATE = ChatTemplate.load(FIXTURE)
TOOLS = [ToolSpec("get_weather", "Weather.", {"type": "object", "properties": {"city": {"type": "string"}}})]


def reference_build(builder: PromptBuilder, messages: list[ChatMessage], tools: list[ToolSpec]) -> list[int]:
    """The implementation before the one-pass search: drop one turn, render and tokenize, repeat."""

    def drop_oldest_turn(messages: list[ChatMessage]) -> list[ChatMessage] | None:
        system = [m for m in messages[:1] if m.role == "system"]
        rest = messages[len(system) :]
        if len(rest) <= 1:
            return None
        rest = rest[1:]
        while len(rest) > 1 and rest[0].role != "user":
            rest = rest[1:]
        return system + rest

    ids = builder.encode(messages, tools)
    if len(ids) < builder.context:
        return ids
    if builder.overflow == "truncate_oldest":
        kept = list(messages)
        while len(ids) >= builder.context and (shorter := drop_oldest_turn(kept)) is not None:
            kept = shorter
            ids = builder.encode(kept, tools)
        if len(ids) < builder.context:
            return ids
    raise BadRequestError(f"too long: {len(ids)}")


def chat(turns: int, system: bool = True, tools_every: int = 0, seed: int = 0) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are terse.")] if system else []
    for i in range(turns):
        messages.append(ChatMessage("user", f"question {i} " + "word " * ((i * 7 + seed) % 23)))
        if tools_every and i % tools_every == 0:
            call = ToolCall(f"c{i}", "get_weather", json.dumps({"city": f"city {i}"}))
            messages.append(ChatMessage("assistant", "", (call,)))
            messages.append(ChatMessage("tool", json.dumps({"temperature": i}), tool_call_id=f"c{i}"))
            messages.append(ChatMessage("tool", "second result " * (i % 5), tool_call_id=f"c{i}"))
        messages.append(ChatMessage("assistant", f"answer {i} " + "text " * ((i * 13 + seed) % 31)))
    return messages


CONVERSATIONS = {
    "short turns": chat(40),
    "no system message": chat(40, system=False, seed=3),
    "tool calls and results": chat(30, tools_every=2, seed=5),
    "consecutive users and an assistant first": [
        ChatMessage("assistant", "Hello, how can I help? " * 5),
        *[ChatMessage("user", f"more {i} " * (i % 9 + 1)) for i in range(25)],
        ChatMessage("assistant", "ok " * 20),
        ChatMessage("user", "final question"),
    ],
    "one huge old turn": [
        ChatMessage("system", "s"),
        ChatMessage("user", "long " * 400),
        ChatMessage("assistant", "long answer " * 300),
        *chat(10, system=False, seed=7),
    ],
    "last message alone too long": [ChatMessage("user", "a"), ChatMessage("user", "huge " * 500)],
}


@pytest.mark.parametrize("mode", ["chat", "completion"])
@pytest.mark.parametrize("context", [40, 150, 600])
@pytest.mark.parametrize("name", CONVERSATIONS)
def test_truncation_keeps_exactly_what_the_turn_by_turn_loop_kept(name: str, context: int, mode: str) -> None:
    builder = PromptBuilder(TOKENIZER, TEMPLATE, mode, context, "truncate_oldest")
    for tools in ([], TOOLS):
        messages = CONVERSATIONS[name]
        try:
            expected: list[int] | str = reference_build(builder, messages, tools)
        except BadRequestError as error:
            expected = str(error)
        per_call = PromptBuilder(TOKENIZER, TEMPLATE, mode, context, "error")  # the call's setting wins
        for built, overflow in ((builder, None), (per_call, "truncate_oldest")):
            try:
                got: list[int] | str = built.build(messages, tools, overflow)
            except BadRequestError as error:
                got = f"too long: {str(error).split()[3]}"  # the same token count in the message
            assert got == expected


def test_a_thousand_turns_truncate_with_a_few_renders_well_under_a_second(monkeypatch) -> None:
    builder = PromptBuilder(TOKENIZER, TEMPLATE, "chat", 200, "truncate_oldest")
    messages = [ChatMessage("system", "sys")] + [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} hello") for i in range(1000)
    ]  # the turn-by-turn loop rendered and tokenized 900 conversations here: 8 s
    encoded: list[tuple[list[ChatMessage], list[int]]] = []
    encode = builder.encode

    def spy(conversation: list[ChatMessage], tools: tuple = (), options: dict | None = None) -> list[int]:
        encoded.append((conversation, encode(conversation, tools, options)))
        return encoded[-1][1]

    monkeypatch.setattr(builder, "encode", spy)
    started = time.perf_counter()
    ids = builder.build(messages)
    seconds = time.perf_counter() - started
    kept = next(conversation for conversation, result in encoded if result is ids)
    assert len(ids) < 200 and kept[0] == messages[0] and kept[1:] == messages[-(len(kept) - 1) :]
    one_more_turn = [messages[0], *messages[-(len(kept) + 1) :]]  # what the loop tried just before: too long
    assert kept[1].role == "user" and len(encode(one_more_turn)) >= 200
    assert len(encoded) <= 10, [len(conversation) for conversation, _ in encoded]
    assert seconds < 1.0


def test_the_error_gives_the_shortest_prompt_and_the_window() -> None:
    builder = PromptBuilder(TOKENIZER, TEMPLATE, "chat", 30, "truncate_oldest")
    messages = [ChatMessage("system", "s " * 40), *chat(5, system=False)]
    with pytest.raises(BadRequestError, match=r"the prompt is \d+ tokens but the model's context window is 30"):
        builder.build(messages)


def test_a_history_far_longer_than_the_context_is_never_encoded_whole(monkeypatch) -> None:
    builder = PromptBuilder(TOKENIZER, TEMPLATE, "chat", 100, "truncate_oldest")
    messages = chat(5000)  # ~300,000 characters for a 100-token window
    sizes: list[int] = []
    encode = builder.encode
    monkeypatch.setattr(builder, "encode", lambda m, t=(), o=None: sizes.append(len(m)) or encode(m, t, o))
    ids = builder.build(messages)
    assert max(sizes) < 20 and len(sizes) <= 10, sizes  # small conversations only
    kept = next(n for n in sizes if encode([messages[0], *messages[len(messages) - n + 1 :]]) == ids)
    assert len(encode([messages[0], *messages[len(messages) - kept - 1 :]])) >= 100  # nor with one more turn
    with pytest.raises(BadRequestError, match="far more than the model's context window of 100 tokens can hold"):
        PromptBuilder(TOKENIZER, TEMPLATE, "chat", 100, "error").build(messages)
