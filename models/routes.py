"""Requests the SDK itself would not answer clearly get a bad-request error naming what this plugin serves.

The SDK's router answers a request whose action it has no route for with an empty `end` (no result, no error),
and a model request for a model type this provider does not declare fails inside the SDK with a bare KeyError.
Two routes are added: a first one for model requests of an undeclared type, a last one for anything no route
matched.
"""

# No `from __future__ import annotations` here: the SDK's router calls each route's second annotation to build its
# argument, so it must be the real `dict`, not the string "dict".
from typing import Any

from dify_plugin import Plugin
from dify_plugin.errors.model import InvokeBadRequestError

MODEL_TYPES = ("llm", "text-embedding", "rerank")


def _unknown_model_type(data: dict[str, Any]) -> bool:
    return data.get("type") == "model" and "model_type" in data and data.get("model_type") not in MODEL_TYPES


def refuse_model_type(session: object, data: dict) -> None:
    raise InvokeBadRequestError(
        f"model type {data.get('model_type')!r} is not served by this plugin; it serves {', '.join(MODEL_TYPES)}"
    )


def refuse_unknown(session: object, data: dict) -> None:
    raise InvokeBadRequestError(
        f"this plugin has no {data.get('type')!r} action {data.get('action')!r}; it serves model requests for "
        f"{', '.join(MODEL_TYPES)}"
    )


def install(plugin: Plugin) -> None:
    plugin.register_route(refuse_model_type, _unknown_model_type)
    plugin.routes.insert(0, plugin.routes.pop())  # before the SDK's own model routes
    plugin.register_route(refuse_unknown, lambda data: True)  # last: only what nothing else matched
