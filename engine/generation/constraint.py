"""Grammar-constrained decoding: a JSON schema (or any JSON object) turned into a per-step token mask.

llguidance (chosen by `bench/grammar.py`: ~0.04 ms per mask on Qwen's 151,936-token vocabulary, no torch) compiles
the schema into a grammar; each sequence gets an `LLMatcher` that says which tokens may come next and follows
the tokens chosen. Tokens the grammar forbids are masked out before sampling, so the output always parses and
validates.

Termination: a model (a random-weight one above all) may keep a string or an array going for ever. When the
tokens left in the budget come near the number needed to close the document (measured by running a closing
policy on a copy of the matcher), the sequence switches to that policy: close strings, arrays and objects as soon
as the grammar allows, so the output still ends as valid JSON inside `max_tokens`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import llguidance
import numpy as np
from tokenizers import Tokenizer

from engine.errors import BadRequestError
from engine.generation.reasoning import THINK_OPEN, ThinkingPhase, prompt_opens_thinking
from engine.text.messages import ChatMessage

log = logging.getLogger(__name__)

# Most of the context window the schema shown in the prompt may take.
_INSTRUCTION_SHARE = 0.25
# Compact JSON: no whitespace between tokens (a model can otherwise spend its whole budget on newlines).
_COMPILE_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}
# The closing policy is simulated only when this few tokens are left (the last tokens of a long budget).
CLOSE_HORIZON = 96
# Tokens kept in hand beyond the simulated closing path (a forced multi-token key, a lookahead miss).
CLOSE_MARGIN = 8
# The simulated closing path gives up beyond this many tokens (the budget then cannot be met anyway).
_SIMULATION_CAP = 512
# Tokens that close something: inside a string, a quote then only closing brackets; outside, closing brackets
# only. The shortest structural step outside a string (a separator, an opening quote, a zero).
_CLOSERS = frozenset(b"]}")
_SHORT_STEP_BYTES = frozenset(b'",:[]{}0')


@dataclass(frozen=True)
class OutputFormat:
    """What the answer must be: `json_object` (any JSON object) or `json_schema` (valid against `schema`)."""

    kind: str
    schema: str = ""  # the JSON schema, as JSON text (kept as text so the dataclass is hashable plain data)

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema"):
            allowed = "text, json_object, json_schema"
            raise BadRequestError(f"response_format {self.kind!r} is not valid; allowed: {allowed}")

    @property
    def schema_object(self) -> dict:
        return json.loads(self.schema) if self.schema else {"type": "object"}

    def grammar(self) -> str:
        """The llguidance grammar; a schema the library cannot handle is a BadRequestError naming the construct."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(self.schema_object, defaults=_COMPILE_OPTIONS)
        except ValueError as error:
            raise BadRequestError(f"json_schema is not a JSON object: {error}") from None
        problem = llguidance.LLMatcher.validate_grammar(grammar)
        if problem:
            raise BadRequestError(f"json_schema cannot be enforced: {_one_line(problem)}")
        return grammar


def _one_line(message: str, limit: int = 400) -> str:
    """llguidance's error message (it may draw a caret under the regex on several lines) as one short line."""
    return " ".join(message.split())[:limit]


def parse_json_schema(text: str) -> OutputFormat:
    """A `json_schema` parameter: the schema itself, or OpenAI's wrapper {"name": …, "schema": {…}} that Dify
    sends; checked now, so a bad schema fails the call before it queues."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise BadRequestError(f"json_schema is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequestError("json_schema must be a JSON object (a JSON schema)")
    if isinstance(value.get("schema"), dict) and "type" not in value and "properties" not in value:
        value = value["schema"]
    output = OutputFormat("json_schema", json.dumps(value, ensure_ascii=False))
    output.grammar()
    return output


def tool_call_grammar(tools: Sequence[tuple[str, dict]], close_token: int | None) -> str:
    """The body of a `<tool_call>` block: {"name": one offered tool, "arguments": valid for that tool's schema},
    then the closing tag (a special token when the tokenizer has one)."""
    choices = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in tools
    ]
    schema = json.dumps({"anyOf": choices}, ensure_ascii=False)
    close = f"<[{close_token}]>" if close_token is not None else json.dumps("</tool_call>")
    options = json.dumps(_COMPILE_OPTIONS)
    lark = f'start: "\\n"? body "\\n"? {close}\nbody: %json {{ "x-guidance": {options}, {schema[1:]}'
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise BadRequestError(f"a tool's parameters cannot be enforced: {_one_line(problem)}")
    return grammar


class GrammarVocabulary:
    """A model's vocabulary as llguidance sees it, and which tokens close or shorten a JSON document. Built once
    per model on the worker, on the first constrained request (~1 s for Qwen)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: frozenset[int]) -> None:
        self.vocab_size = vocab_size
        self.eos_ids = np.asarray(sorted(i for i in eos_ids if i < vocab_size), dtype=np.int64)
        # llguidance 1.6 takes one end-of-sequence token: the grammar allows that one when the document is done.
        self.tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab_size, eos_token=int(self.eos_ids[0]))
        self.closes_string = np.zeros(vocab_size, dtype=bool)
        self.closes_structure = np.zeros(vocab_size, dtype=bool)
        self.short_step = np.zeros(vocab_size, dtype=bool)
        self.token_bytes: list[bytes] = []
        for token in range(vocab_size):
            text = b"" if self.tokenizer.is_special_token(token) else self.tokenizer.decode_bytes([token])
            self.token_bytes.append(text)
            if not text:
                continue
            if text[:1] == b'"' and _CLOSERS.issuperset(text[1:]):
                self.closes_string[token] = True
            if _CLOSERS.issuperset(text):
                self.closes_structure[token] = True
            if _SHORT_STEP_BYTES.issuperset(text):
                self.short_step[token] = True
        self.words = (vocab_size + 31) // 32
        # The same sets packed like llguidance's masks (bit i of word i // 32), so the closing policy works on
        # ~4,700 words instead of 151,936 booleans.
        self.packed_closes_string = self._packed(self.closes_string)
        self.packed_closes_structure = self._packed(self.closes_structure)
        self.packed_short_step = self._packed(self.short_step)
        token_ids = tokenizer.get_vocab(with_added_tokens=True)
        self.tool_call_open = token_ids.get("<tool_call>")
        self.tool_call_close = token_ids.get("</tool_call>")

    def _packed(self, members: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.words * 32, dtype=bool)
        padded[: members.shape[0]] = members
        return np.packbits(padded, bitorder="little").view(np.int32)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise BadRequestError(f"the output format cannot be enforced: {matcher.get_error()}")
        return matcher


class _Mask:
    """One sequence's allowed-token bitmask, filled by the matcher in place."""

    def __init__(self, words: int, vocab_size: int) -> None:
        self.bits = np.zeros(words, dtype=np.int32)
        self.vocab_size = vocab_size

    def fill(self, matcher: llguidance.LLMatcher) -> np.ndarray:
        matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        return self.bits

    def allows(self, token: int) -> bool:
        return bool((int(self.bits[token >> 5]) >> (token & 31)) & 1)

    def allowed(self) -> np.ndarray:
        return np.unpackbits(self.bits.view(np.uint8), bitorder="little")[: self.vocab_size].view(bool)

    def ids_in(self, packed: np.ndarray) -> np.ndarray:
        """The allowed ids of a packed set, ascending (only the words where both have bits are unpacked)."""
        both = self.bits & packed
        words = np.flatnonzero(both)
        if not words.shape[0]:
            return words
        bits = np.unpackbits(both[words].view(np.uint8), bitorder="little").reshape(words.shape[0], 32)
        rows, columns = np.nonzero(bits)
        return words[rows] * 32 + columns

    def lowest(self) -> int | None:
        words = np.flatnonzero(self.bits)
        if not words.shape[0]:
            return None
        word = int(self.bits[words[0]]) & 0xFFFFFFFF
        return int(words[0]) * 32 + ((word & -word).bit_length() - 1)


class _JsonLexer:
    """Whether the JSON text so far ends inside a string (what a closing token means depends on it)."""

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.escaped:
                self.escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string

    def copy(self) -> _JsonLexer:
        other = _JsonLexer()
        other.in_string, other.escaped = self.in_string, self.escaped
        return other


def _closing_choice(vocab: GrammarVocabulary, mask: _Mask, lexer: _JsonLexer, logits: np.ndarray | None) -> int | None:
    """The closing policy's token: end of sequence when the document is complete, else one that closes the
    string (then brackets), else brackets, else the shortest structural step outside a string; the model's
    favourite among those (the first in a simulation). None: only content is allowed (a required key's
    letters, a string's minimum length)."""
    for eos in vocab.eos_ids:
        if mask.allows(int(eos)):
            return int(eos)
    if lexer.in_string:
        tiers = (vocab.packed_closes_string,)
    else:
        tiers = (vocab.packed_closes_structure, vocab.packed_short_step)
    for tier in tiers:
        ids = mask.ids_in(tier)
        if ids.shape[0]:
            return int(ids[np.argmax(logits[ids])] if logits is not None else ids[0])
    return None


def _forced(matcher: llguidance.LLMatcher) -> int | None:
    """The first token of the text the grammar forces from here (a required key), in its canonical tokenization;
    None when nothing is forced."""
    tokens = matcher.compute_ff_tokens()
    return tokens[0] if tokens else None


def _closing_token(
    vocab: GrammarVocabulary, mask: _Mask, lexer: _JsonLexer, matcher: llguidance.LLMatcher, logits: np.ndarray | None
) -> int | None:
    """The closing policy's token, or the forced text's next token when only content is allowed."""
    token = _closing_choice(vocab, mask, lexer, logits)
    return _forced(matcher) if token is None else token


def closing_distance(
    vocab: GrammarVocabulary, matcher: llguidance.LLMatcher, lexer: _JsonLexer, cap: int = _SIMULATION_CAP
) -> int:
    """Tokens the closing policy needs to finish the document from `matcher`'s state (EOS included)."""
    probe, lexer = matcher.deep_copy(), lexer.copy()
    mask = _Mask(vocab.words, vocab.vocab_size)
    for steps in range(1, cap + 1):
        mask.fill(probe)
        token = _closing_token(vocab, mask, lexer, probe, None)
        if token is None:
            token = mask.lowest()  # a single byte in byte-level vocabularies
        if token is None or token in vocab.eos_ids or not probe.consume_token(token) or probe.is_stopped():
            return steps
        lexer.feed(vocab.token_bytes[token])
    return cap


class TokenConstraint:
    """One sequence's grammar: masks each step's logits and follows the chosen tokens. `budget`: the most tokens
    the sequence may still generate (max_tokens, or the context's room)."""

    def __init__(self, vocab: GrammarVocabulary, grammar: str, budget: int) -> None:
        self.vocab = vocab
        self.matcher = vocab.matcher(grammar)
        self.remaining = budget
        self.closing = False
        self._recheck = 0  # steps until the closing distance is simulated again
        self.lexer = _JsonLexer()
        self._mask = _Mask(vocab.words, vocab.vocab_size)

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    def choose(self, logits: np.ndarray, pick: Callable[[np.ndarray], int]) -> int:
        """The next token: `pick` (the sampler) over the allowed tokens, or the closing policy near the end."""
        self._mask.fill(self.matcher)
        if not self.closing and self.remaining <= CLOSE_HORIZON and self._recheck <= 0:
            slack = self.remaining - closing_distance(self.vocab, self.matcher, self.lexer) - CLOSE_MARGIN
            self.closing = slack <= 0
            # The distance grows by a few tokens per step at most (a new key, an array item): checked again once
            # half of the slack is spent, so a long budget simulates a few times, not at every token.
            self._recheck = slack // 2
        self._recheck -= 1
        token = None
        if self.closing:
            token = _closing_token(self.vocab, self._mask, self.lexer, self.matcher, logits)
        if token is None:
            # The sampler's own choice first, kept when the grammar allows it (as llama.cpp does): one bit test
            # instead of masking 151,936 logits (~0.5 ms); only a refused choice pays for the mask and a
            # second pick. Greedy is exact either way; sampling draws from the filtered distribution restricted
            # to the allowed tokens whenever it has any.
            token = pick(logits)
            if not self._mask.allows(token):
                token = pick(self._masked(logits))
        self.accept(token)
        return token

    def _masked(self, logits: np.ndarray) -> np.ndarray:
        size = min(logits.shape[0], self.vocab.vocab_size)
        return np.where(self._mask.allowed()[:size], logits[:size], np.float32(-np.inf)).astype(np.float32)

    def accept(self, token: int) -> None:
        self.remaining -= 1
        self.lexer.feed(self.vocab.token_bytes[token])
        if not self.matcher.consume_token(token):
            # Cannot happen for a token taken from the mask; a matcher error would mean a library bug.
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")


def with_format_instruction(messages: Sequence[ChatMessage], instruction: str) -> list[ChatMessage]:
    """The conversation with `instruction` at the end of the system message (one is added first)."""
    if messages and messages[0].role == "system" and isinstance(messages[0].content, str):
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{instruction}".lstrip()), *messages[1:]]
    return [ChatMessage("system", instruction), *messages]


_JSON_ONLY = "Answer with a single JSON object and nothing else."


def format_instruction(output: OutputFormat) -> str:
    """What the model is told, so the values are good and not only valid."""
    if output.kind == "json_object":
        return _JSON_ONLY
    return f"{_JSON_ONLY} It must be valid against this JSON schema:\n{output.schema}"


class SequenceConstraint:
    """Everything that overrides free sampling for one sequence, in order: the thinking phase (free, but closed
    when its budget runs out), then the answer's grammar (the output format), and, when tools were offered,
    each `<tool_call>` block's grammar from the moment the model opens one."""

    def __init__(
        self,
        vocab: GrammarVocabulary,
        budget: int,
        answer_grammar: str | None,
        tool_grammar: str | None,
        thinking: ThinkingPhase | None,
    ) -> None:
        self.vocab = vocab
        self.remaining = budget
        self.answer_grammar = answer_grammar
        self.tool_grammar = tool_grammar
        self.thinking = thinking
        self.active: TokenConstraint | None = None
        self._tail = b""  # the last bytes of free text, to see "<tool_call>" opened
        self._tool_open = vocab.tool_call_open
        if answer_grammar is not None and (thinking is None or thinking.done):
            self.active = TokenConstraint(vocab, answer_grammar, budget)
            self.answer_grammar = None

    def choose(self, logits: np.ndarray, pick: Callable[[np.ndarray], int]) -> int:
        self.remaining -= 1
        if self.thinking is not None and not self.thinking.done:
            token = self.thinking.choose(logits, pick)
            if self.thinking.done and self.answer_grammar is not None:
                self.active = TokenConstraint(self.vocab, self.answer_grammar, self.remaining)
                self.answer_grammar = None
            return token
        if self.active is not None:
            token = self.active.choose(logits, pick)
            if self.active.done and self.tool_grammar is not None and self.answer_grammar is None:
                self.active = None  # a tool call's block closed: free text (or another call) follows
            return token
        token = pick(logits)
        if self.tool_grammar is not None and self._opens_tool_call(token):
            self.active = TokenConstraint(self.vocab, self.tool_grammar, self.remaining)
        return token

    def _opens_tool_call(self, token: int) -> bool:
        if token == self._tool_open:
            return True
        if self.vocab.tokenizer.is_special_token(token):
            self._tail = b""
            return False
        self._tail = (self._tail + self.vocab.tokenizer.decode_bytes([token]))[-32:]
        if self._tail.endswith(b"<tool_call>"):
            self._tail = b""
            return True
        return False


class OutputShaping:
    """A model's maker of sequence constraints (on its worker): builds the grammar vocabulary on first need and
    gives each request what overrides its sampling, and the text its stream starts with."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_ids: frozenset[int],
        thinks: bool = False,
        thinking_switch: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.thinks = thinks  # the chat template writes <think> blocks
        self.thinking_switch = thinking_switch  # … and reads enable_thinking
        self._vocab: GrammarVocabulary | None = None

    def instructed(
        self, messages: Sequence[ChatMessage], output: OutputFormat | None, context: int
    ) -> Sequence[ChatMessage]:
        """The conversation with the output format's instruction, the schema included when it takes at most
        `_INSTRUCTION_SHARE` of the context (the grammar enforces it anyway; a small window keeps its room)."""
        if output is None:
            return messages
        instruction = format_instruction(output)
        if len(self.tokenizer.encode(instruction, add_special_tokens=False).ids) > context * _INSTRUCTION_SHARE:
            instruction = _JSON_ONLY
        return with_format_instruction(messages, instruction)

    def template_options(self, enable_thinking: bool | None) -> dict[str, bool]:
        """Template variables for the request (enable_thinking only where the template reads it)."""
        return {"enable_thinking": enable_thinking} if self.thinking_switch and enable_thinking is not None else {}

    @property
    def vocab(self) -> GrammarVocabulary:
        if self._vocab is None:
            try:
                self._vocab = GrammarVocabulary(self.tokenizer, self.vocab_size, self.eos_ids)
            except Exception as error:  # a tokenizer llguidance cannot read: this model has no structured output
                raise BadRequestError(
                    f"structured output is not available for this model's tokenizer: {type(error).__name__}: "
                    f"{_one_line(str(error))}"
                ) from None
        return self._vocab

    def for_request(
        self,
        output: OutputFormat | None,
        tools: Sequence[tuple[str, dict]],
        prompt: Sequence[int],
        budget: int,
        thinking_budget: int | None,
    ) -> tuple[SequenceConstraint | None, str]:
        """(the sequence's constraint or None, text to stream first: "<think>\\n" when the prompt opened it)."""
        thinks = self.thinks
        opened = thinks and prompt_opens_thinking(self.tokenizer, prompt)
        # With an answer grammar, thinking is free only inside a block the prompt opened: a first token left free
        # to see whether the model opens one would escape the grammar.
        free_thinking = opened or (thinks and output is None)
        thinking = ThinkingPhase(self.tokenizer, opened, thinking_budget) if free_thinking else None
        answer = output.grammar() if output is not None else None
        tool = None
        if tools and output is None:
            try:
                tool = tool_call_grammar(tools, self.vocab.tool_call_close)
            except BadRequestError as error:  # the calls stay free (and are parsed as before)
                log.warning("tool calls are not constrained: %s", error)
        if answer is None and tool is None and (thinking is None or thinking_budget is None):
            return None, THINK_OPEN + "\n" if opened else ""
        constraint = SequenceConstraint(self.vocab, budget, answer, tool, thinking)
        return constraint, THINK_OPEN + "\n" if opened else ""
