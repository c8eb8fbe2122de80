"""Turn a request's messages into prompt token ids that fit the context window."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import Any

from tokenizers import Tokenizer

from engine.errors import BadRequestError
from engine.text.chat_template import ChatTemplate, completion_prompt
from engine.text.messages import ChatMessage, ToolSpec
from engine.text.tokenizer import MAX_CHARS_PER_TOKEN


class PromptBuilder:
    def __init__(
        self, tokenizer: Tokenizer, template: ChatTemplate | None, mode: str, context: int, overflow: str
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.mode = mode
        self.context = context
        self.overflow = overflow

    def render(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (), options: Mapping[str, Any] | None = None
    ) -> str:
        if not messages:
            raise BadRequestError("the request has no messages")
        if self.mode == "completion" or self.template is None:
            return completion_prompt(messages)
        return self.template.render(messages, tools, add_generation_prompt=True, options=options)

    def encode(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (), options: Mapping[str, Any] | None = None
    ) -> list[int]:
        text = self.render(messages, tools, options)
        # A chat template writes its own special tokens; completion mode lets the tokenizer add BOS if it does.
        chat = self.mode == "chat" and self.template is not None
        # encode_batch releases the GIL while it tokenizes (encode does not): a 2 MB prompt would otherwise stop
        # the protocol thread, heartbeats included, for seconds.
        return self.tokenizer.encode_batch([text], add_special_tokens=not chat)[0].ids

    def _far_too_long(self, messages: Sequence[ChatMessage]) -> bool:
        """More characters than the context has tokens × MAX_CHARS_PER_TOKEN: cannot fit whatever the tokenizer
        does, so there is no need to render and tokenize megabytes to find out."""
        return sum(len(message.text()) for message in messages) > self.context * MAX_CHARS_PER_TOKEN

    def build(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        overflow: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Prompt ids leaving room for at least one generated token; per `overflow` (the call's prompt_overflow,
        else the model's), the oldest turns are dropped until it fits, or the request fails giving both numbers."""
        overflow = overflow or self.overflow
        kept, starts = _kept_from(messages)
        truncate = overflow == "truncate_oldest" and len(starts) > 1
        far_too_long = self._far_too_long(messages)
        if far_too_long and not truncate:
            characters = sum(len(message.text()) for message in messages)
            raise BadRequestError(
                f"the prompt has {characters} characters, far more than the model's context window of "
                f"{self.context} tokens can hold; shorten the conversation or set prompt_overflow to truncate_oldest"
            )
        ids = None if far_too_long else self.encode(messages, tools, options)  # a long history is never encoded whole
        if ids is not None and len(ids) < self.context:
            return ids
        if truncate:
            encoded = {} if ids is None else {0: ids}  # by index in `starts`; index 0 is known not to fit

            def fits(index: int) -> bool:
                if index not in encoded:
                    encoded[index] = self.encode([*messages[:kept], *messages[starts[index] :]], tools, options)
                return len(encoded[index]) < self.context

            last = len(starts) - 1
            found = _first_fit(fits, last, self._guess(messages, kept, starts, None if ids is None else len(ids)))
            if found is not None:
                return encoded[found]
            ids = encoded[last]  # the shortest conversation, for the message (fits() encoded it)
        assert ids is not None  # only a truncation skips encoding the whole conversation
        raise BadRequestError(
            f"the prompt is {len(ids)} tokens but the model's context window is {self.context} tokens "
            f"(the prompt must be shorter, to leave room for the answer); shorten the conversation"
            + ("" if overflow == "truncate_oldest" else " or set prompt_overflow to truncate_oldest")
        )

    def _guess(self, messages: Sequence[ChatMessage], kept: int, starts: list[int], total: int | None) -> int:
        """The first conversation whose prompt should fit if the `total` tokens were spread over the messages by
        their length (plus a few characters of template per message). Costs no tokenizing; the search starts
        here and corrects the guess with a few more encodings when the template's own text skews it. Without
        a total (a history too long to encode), one token per character: that starts from too few messages,
        so the search grows from small conversations instead of encoding large ones."""
        weights = [len(message.text()) + _TEMPLATE_CHARS for message in messages]
        after = list(accumulate(reversed(weights), initial=0))[::-1]  # weight of messages[i:]
        scale = total / (after[0] or 1) if total else 1.0
        for index, start in enumerate(starts):
            if (after[0] - after[kept] + after[start]) * scale < self.context:
                return index
        return len(starts) - 1


_TEMPLATE_CHARS = 16  # a chat template's own text per message (role markers, separators), roughly


def _kept_from(messages: Sequence[ChatMessage]) -> tuple[int, list[int]]:
    """The conversations `prompt_overflow=truncate_oldest` tries in turn, as (k, starts): the first k messages
    (the system message, if first) and messages[start:] for each start. Each drops the oldest remaining
    message and the assistant/tool replies that depended on it, so it again starts with a user turn, down
    to the last message; the first is the whole conversation."""
    kept = 1 if messages and messages[0].role == "system" else 0
    start, starts = kept, [kept]
    while len(messages) - start > 1:
        start += 1
        while len(messages) - start > 1 and messages[start].role != "user":
            start += 1
        starts.append(start)
    return kept, starts


def _first_fit(fits: Callable[[int], bool], last: int, guess: int) -> int | None:
    """The smallest index in 1..last that fits, or None, when index 0 does not fit and a shorter conversation
    never has a longer prompt. Probes from `guess` outwards in doubling steps, then bisects: two encodings
    when the guess is right, about 2·log2(error) otherwise, instead of one per dropped turn."""
    guess, step = min(max(guess, 1), last), 1
    if fits(guess):
        high = guess
        while True:
            low = max(high - step, 0)
            if low == 0 or not fits(low):
                break
            high, step = low, step * 2
    else:
        low = guess
        while True:
            if low == last:
                return None
            high = min(low + step, last)
            if fits(high):
                break
            low, step = high, step * 2
    while high - low > 1:  # low does not fit, high does
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high
