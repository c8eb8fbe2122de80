"""Reasoning ("thinking") models: templates that think in a `<think>…</think>` block before the answer.

What a template supports is read from its source: it thinks when it writes `<think>`, and it has a per-request
switch when it reads `enable_thinking` (Qwen3 style: false renders an empty think block). When the generation
prompt already opens the block, the model's output lacks the opening tag: the stream is given one, so Dify's
reasoning display (and its "separated" format) sees the whole block. A thinking budget closes the block by
forcing the closing tag once the model has thought that many tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Prompt tokens read back to see whether the generation prompt ends inside an open think block.
_PROMPT_TAIL_TOKENS = 8


def template_thinks(source: str) -> bool:
    return THINK_OPEN in source and THINK_CLOSE in source


def template_has_switch(source: str) -> bool:
    return template_thinks(source) and "enable_thinking" in source


def prompt_opens_thinking(tokenizer: Tokenizer, prompt: Sequence[int]) -> bool:
    """True when the rendered prompt ends with an open `<think>` (the model starts inside the block)."""
    tail = tokenizer.decode(list(prompt[-_PROMPT_TAIL_TOKENS:]), skip_special_tokens=False).rstrip()
    return tail.endswith(THINK_OPEN)


class ThinkingPhase:
    """Follows one sequence's thinking: open from the start (`opened`) or when its first text is `<think>`, over
    once `</think>` is generated; past `budget` thinking tokens the closing tag is forced, token by token."""

    def __init__(self, tokenizer: Tokenizer, opened: bool, budget: int | None) -> None:
        self.tokenizer = tokenizer
        self.inside = opened
        self.undecided = not opened  # no text yet: the model may still open a block itself
        self.done = False
        self.budget = budget
        self.thought = 0
        self._tail = ""
        self._forced: list[int] = []

    def choose(self, logits: np.ndarray, pick: Callable[[np.ndarray], int]) -> int:
        if self._forced:
            token = self._forced.pop(0)
        elif self.inside and self.budget is not None and self.thought >= self.budget:
            self._forced = self.tokenizer.encode("\n" + THINK_CLOSE + "\n\n", add_special_tokens=False).ids
            token = self._forced.pop(0)
        else:
            token = pick(logits)
        self._follow(token)
        return token

    def _follow(self, token: int) -> None:
        text = self.tokenizer.decode([token], skip_special_tokens=False)
        self._tail = (self._tail + text)[-64:]
        if self.undecided:
            stripped = self._tail.lstrip()
            if not stripped or THINK_OPEN.startswith(stripped):
                return  # whitespace, or "<think>" still coming
            self.undecided = False
            self.inside = stripped.startswith(THINK_OPEN)
            if not self.inside:
                self.done = True
                return
        self.thought += 1
        if THINK_CLOSE in self._tail and not self._forced:
            self.done = True
            self.inside = False
