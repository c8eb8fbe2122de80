"""Engine-level chat messages and tools: plain data the adapter builds from Dify's entities."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.errors import BadRequestError

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ContentPart:
    """One part of a list content; only `text` parts are supported by text-only models."""

    type: str
    text: str = ""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI and Dify carry it


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    definition: dict[str, Any] | None = field(default=None, compare=False)  # an OpenAI-shaped dict, kept verbatim

    @classmethod
    def from_definition(cls, definition: dict[str, Any]) -> ToolSpec:
        """From an OpenAI/HF tool dict ({"type": "function", "function": {...}}), rendered exactly as given."""
        function = definition.get("function", definition)
        return cls(function["name"], function.get("description", ""), function.get("parameters", {}), definition)

    def as_template_dict(self) -> dict[str, Any]:
        """The OpenAI/HF tool shape chat templates expect."""
        if self.definition is not None:
            return self.definition
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | tuple[ContentPart, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""

    def text(self) -> str:
        """The message's text; non-text parts (images, audio, …) are a client error for a text-only model."""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != "text":
                raise BadRequestError(
                    f"{part.type} content is not supported: this model reads text only; remove the {part.type} "
                    "or use a model with that input type"
                )
            texts.append(part.text)
        return "\n".join(texts)

    def as_template_dict(self) -> dict[str, Any]:
        if self.role not in ROLES:
            raise BadRequestError(f"message role {self.role!r} is not supported; allowed: {', '.join(ROLES)}")
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": _arguments(call)}}
                for call in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message


def _arguments(call: ToolCall) -> Any:
    # HF templates expect a dict (they apply `tojson`); keep text that is not a JSON object as it is.
    try:
        value = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        return call.arguments
    return value if isinstance(value, dict) else call.arguments
