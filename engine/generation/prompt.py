"""Turn a request's messages into prompt token ids that fit the context window."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from engine.errors import BadRequestError
from engine.text.chat_template import ChatTemplate, completion_prompt
from engine.text.messages import ChatMessage, ToolSpec


class PromptBuilder:
    def __init__(
        self, tokenizer: Tokenizer, template: ChatTemplate | None, mode: str, context: int, overflow: str
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.mode = mode
        self.context = context
        self.overflow = overflow

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        if not messages:
            raise BadRequestError("the request has no messages")
        if self.mode == "completion" or self.template is None:
            return completion_prompt(messages)
        return self.template.render(messages, tools, add_generation_prompt=True)

    def encode(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> list[int]:
        text = self.render(messages, tools)
        # A chat template writes its own special tokens; completion mode lets the tokenizer add BOS if it does.
        chat = self.mode == "chat" and self.template is not None
        return self.tokenizer.encode(text, add_special_tokens=not chat).ids

    def build(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (), overflow: str | None = None
    ) -> list[int]:
        """Prompt ids leaving room for at least one generated token; per `overflow` (the call's prompt_overflow,
        else the model's), the oldest turns are dropped until it fits, or the request fails giving both numbers."""
        overflow = overflow or self.overflow
        ids = self.encode(messages, tools)
        if len(ids) < self.context:
            return ids
        if overflow == "truncate_oldest":
            kept = list(messages)
            while len(ids) >= self.context and (shorter := _drop_oldest_turn(kept)) is not None:
                kept = shorter
                ids = self.encode(kept, tools)
            if len(ids) < self.context:
                return ids
        raise BadRequestError(
            f"the prompt is {len(ids)} tokens but the model's context window is {self.context} tokens "
            f"(the prompt must be shorter, to leave room for the answer); shorten the conversation"
            + ("" if overflow == "truncate_oldest" else " or set prompt_overflow to truncate_oldest")
        )


def _drop_oldest_turn(messages: list[ChatMessage]) -> list[ChatMessage] | None:
    """Without the oldest non-system message (and the assistant/tool replies that depended on it), so the
    conversation again starts with a user turn; None when only the last message is left."""
    system = [m for m in messages[:1] if m.role == "system"]
    rest = messages[len(system) :]
    if len(rest) <= 1:
        return None
    rest = rest[1:]
    while len(rest) > 1 and rest[0].role != "user":
        rest = rest[1:]
    return system + rest
