"""Chat templates: render a model's jinja2 chat template safely, with the conventions HF templates rely on.

A template is data downloaded from the internet: it runs in jinja2's immutable sandbox, so it cannot reach
Python internals or mutate the objects it is given. The environment mirrors transformers'
`apply_chat_template` (trim_blocks, lstrip_blocks, loopcontrols, a `tojson` that keeps non-ASCII text,
`raise_exception`, `strftime_now`, the `{% generation %}` marker).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import BadRequestError, ModelLoadError
from engine.model_config import read_optional_json
from engine.text.messages import ChatMessage, ToolSpec

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TemplateError(BadRequestError):
    """The template refused the conversation (raise_exception) or failed while rendering it."""


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template rejected the conversation: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Like transformers: no HTML escaping, non-ASCII kept (jinja2's own tojson escapes <, >, & and ').
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationMarker(Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering keeps the body."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_keep", []), [], [], body).set_lineno(lineno)

    def _keep(self, caller: Any) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationMarker, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as text or as a serialized AddedToken ({"content": …})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _select_template(raw: Any, directory: Path) -> tuple[str | None, str | None]:
    """(default template, tool-use template) from tokenizer_config's chat_template (text or named list)."""
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        default = named.get("default")
        tool_use = named.get("tool_use")
        return (default if isinstance(default, str) else None), (tool_use if isinstance(tool_use, str) else None)
    if raw is not None:
        raise ModelLoadError("model_path", f"chat_template in {directory / 'tokenizer_config.json'} is not text")
    return None, None


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    tool_source: str | None
    special_tokens: tuple[tuple[str, str], ...]  # (name, text) for bos_token, eos_token, …

    @classmethod
    def load(cls, directory: Path) -> ChatTemplate | None:
        """The model's template: chat_template.jinja wins over tokenizer_config.json (as in transformers).
        None when the model has no template (a base model: use completion mode)."""
        config = read_optional_json(directory / "tokenizer_config.json")
        default, tool_use = _select_template(config.get("chat_template"), directory)
        jinja_file = directory / "chat_template.jinja"
        if jinja_file.is_file():
            try:
                default = jinja_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise ModelLoadError(
                    "model_path", f"{jinja_file.name} in {directory} could not be read as UTF-8"
                ) from None
        if default is None and tool_use is None:
            return None
        tokens = tuple((key, text) for key in SPECIAL_TOKEN_KEYS if (text := _token_text(config.get(key))) is not None)
        template = cls(default or tool_use or "", tool_use, tokens)
        template.compile()  # a syntax error is a load error, not a per-request one
        return template

    def compile(self, tools: bool = False) -> jinja2.Template:
        source = self.tool_source if tools and self.tool_source else self.source
        try:
            return _compiled(source)
        except jinja2.TemplateSyntaxError as error:
            raise ModelLoadError(
                "model_path", f"the chat template has a syntax error on line {error.lineno}: {error.message}"
            ) from None

    @property
    def accepts_tools(self) -> bool:
        """True when the template reads a `tools` variable (so tool definitions reach the model)."""
        source = self.tool_source or self.source
        env = _environment()
        try:
            return "tools" in meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError:
            return False

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        add_generation_prompt: bool = True,
    ) -> str:
        template = self.compile(bool(tools))
        context: dict[str, Any] = dict(self.special_tokens)
        context.update(
            messages=[m.as_template_dict() for m in messages],
            tools=[t.as_template_dict() for t in tools] or None,
            add_generation_prompt=add_generation_prompt,
        )
        try:
            return template.render(**context)
        except BadRequestError:
            raise
        except jinja2.exceptions.SecurityError:
            raise TemplateError("the chat template tried an operation the sandbox forbids") from None
        except Exception as error:  # a template bug for this conversation: say so, without a traceback
            raise TemplateError(
                f"the chat template failed on this conversation: {type(error).__name__}: {error}"
            ) from None


_CACHE: dict[str, jinja2.Template] = {}


def _compiled(source: str) -> jinja2.Template:
    template = _CACHE.get(source)
    if template is None:
        template = _environment().from_string(source)
        _CACHE[source] = template
    return template


def completion_prompt(messages: Sequence[ChatMessage]) -> str:
    """Completion mode (base models, no template): the messages' text, in order."""
    return "\n".join(message.text() for message in messages)
