"""Dify adapter for chat / completion models: Dify entities → engine generation → LLMResultChunk stream."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator, Sequence
from decimal import Decimal
from typing import Literal

from dify_plugin import LargeLanguageModel
from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import (
    AIModelEntity,
    FetchFrom,
    ModelFeature,
    ModelPropertyKey,
    ModelType,
)
from dify_plugin.entities.model.llm import (
    LLMMode,
    LLMPollingResult,
    LLMPollingStatus,
    LLMResult,
    LLMResultChunk,
    LLMResultChunkDelta,
    LLMUsage,
)
from dify_plugin.entities.model.message import (
    AssistantPromptMessage,
    PromptMessage,
    PromptMessageTool,
    TextPromptMessageContent,
    ToolPromptMessage,
)
from dify_plugin.errors.model import InvokeError
from pydantic import JsonValue

from engine.errors import BadRequestError, EngineError, InferenceError
from engine.generation.constraint import OutputFormat, parse_json_schema
from engine.generation.events import Finished, GenerationEvent, GenerationParams, TextDelta, ToolCallDelta
from engine.generation.loader import ModelTraits
from engine.generation.sampling import SamplingParams
from engine.model_config import DEFAULT_CONTEXT
from engine.text.messages import ChatMessage, ContentPart, ToolCall, ToolSpec
from models.common import INVOKE_ERROR_MAPPING, engine, profile_for, validate_model
from models.llm.parameters import SAMPLING_PARAMETERS, parameter_rules
from models.llm.polling import CHECK_AFTER_S, PollingJobs

# Dify's role names → the roles chat templates know (OpenAI's "developer" is a system message).
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
DEFAULT_MAX_TOKENS = 512
FALLBACK_CONTEXT = DEFAULT_CONTEXT["llm"]  # schema of a model whose settings are invalid
_JOBS = PollingJobs()  # this process's polling generations


def to_engine_messages(prompt_messages: Sequence[PromptMessage]) -> list[ChatMessage]:
    messages = []
    for message in prompt_messages:
        role = _ROLES.get(message.role.value, message.role.value)
        content: str | tuple[ContentPart, ...]
        if isinstance(message.content, list):
            content = tuple(
                ContentPart("text", part.data)
                if isinstance(part, TextPromptMessageContent)
                else ContentPart(part.type.value)
                for part in message.content
            )
        else:
            content = message.content or ""
        calls: tuple[ToolCall, ...] = ()
        if isinstance(message, AssistantPromptMessage):
            calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls)
        call_id = message.tool_call_id if isinstance(message, ToolPromptMessage) else ""
        messages.append(ChatMessage(role, content, calls, call_id, message.name or ""))
    return messages


def to_engine_tools(tools: Sequence[PromptMessageTool] | None) -> list[ToolSpec]:
    return [ToolSpec(tool.name, tool.description, dict(tool.parameters)) for tool in tools or ()]


def output_format(model_parameters: dict, json_schema: dict | None = None) -> OutputFormat | None:
    """response_format / json_schema parameters (or the polling call's json_schema) → the answer's format. A
    json_schema alone is enough (Dify sends it so when the rules offer it); response_format text turns it off."""
    kind = model_parameters.get("response_format") or ""
    schema = model_parameters.get("json_schema")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat(kind)
    if json_schema:
        return parse_json_schema(json.dumps(json_schema))
    if isinstance(schema, str) and schema.strip():
        return parse_json_schema(schema)
    if kind == "json_schema":
        raise BadRequestError("response_format json_schema needs the json_schema parameter (a JSON schema)")
    return None if not kind else OutputFormat(kind)  # an unknown kind: OutputFormat names the allowed ones


def to_params(model_parameters: dict, stop: Sequence[str] | None, json_schema: dict | None = None) -> GenerationParams:
    """The request's sampling values are laid over the model's generation_config defaults by the engine."""
    overrides = tuple(
        (name, model_parameters[name]) for name in SAMPLING_PARAMETERS if model_parameters.get(name) is not None
    )
    max_tokens = model_parameters.get("max_tokens")
    thinking_budget = model_parameters.get("thinking_budget")
    enable_thinking = model_parameters.get("enable_thinking")
    return GenerationParams(
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        stop=tuple(s for s in stop or () if s),
        overrides=overrides,
        output_format=output_format(model_parameters, json_schema),
        enable_thinking=bool(enable_thinking) if enable_thinking is not None else None,
        thinking_budget=int(thinking_budget) if thinking_budget is not None else None,
    )


def _usage(finished: Finished, latency: float) -> LLMUsage:
    zero = Decimal("0.0")
    return LLMUsage(
        prompt_tokens=finished.prompt_tokens,
        prompt_unit_price=zero,
        prompt_price_unit=zero,
        prompt_price=zero,
        completion_tokens=finished.completion_tokens,
        completion_unit_price=zero,
        completion_price_unit=zero,
        completion_price=zero,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
        total_price=zero,
        currency="USD",
        latency=latency,
    )


def _dify_call(call: ToolCall) -> AssistantPromptMessage.ToolCall:
    return AssistantPromptMessage.ToolCall(
        id=call.id,
        type="function",
        function=AssistantPromptMessage.ToolCall.ToolCallFunction(name=call.name, arguments=call.arguments),
    )


def _generate(
    credentials: dict,
    prompt_messages: list[PromptMessage],
    model_parameters: dict,
    tools: list[PromptMessageTool] | None,
    stop: list[str] | None,
    user: str | None,
    json_schema: dict[str, JsonValue] | None = None,
) -> Iterator[GenerationEvent]:
    """The engine's event stream for one call (streamed, collected or polled), after the caller's rate check."""
    engine().admit(user)
    return engine().generate(
        profile_for(credentials, ModelType.LLM),
        to_engine_messages(prompt_messages),
        to_params(model_parameters, stop, json_schema),
        to_engine_tools(tools),
    )


class OnnxLocalLargeLanguageModel(LargeLanguageModel):
    def _invoke(
        self,
        model: str,
        credentials: dict,
        prompt_messages: list[PromptMessage],
        model_parameters: dict,
        tools: list[PromptMessageTool] | None = None,
        stop: list[str] | None = None,
        stream: bool = True,
        user: str | None = None,
    ) -> LLMResult | Generator[LLMResultChunk, None, None]:
        events = _generate(credentials, prompt_messages, model_parameters, tools, stop, user)
        if stream:
            return self._stream(model, events)
        return self._collect(model, prompt_messages, events)

    def _start_polling(
        self,
        model: str,
        credentials: dict,
        prompt_messages: list[PromptMessage],
        model_parameters: dict,
        tools: list[PromptMessageTool] | None = None,
        stop: list[str] | None = None,
        stream: Literal[False] = False,
        user: str | None = None,
        *,
        json_schema: dict[str, JsonValue] | None = None,
    ) -> LLMPollingResult:
        """A generation that may outlast the request timeouts: started here, collected by _check_polling."""
        events = _generate(credentials, prompt_messages, model_parameters, tools, stop, user, json_schema)
        return LLMPollingResult(
            status=LLMPollingStatus.RUNNING,
            plugin_state={"job": _JOBS.start(events)},
            next_check_after_seconds=CHECK_AFTER_S,
        )

    def _check_polling(
        self, model: str, credentials: dict, plugin_state: dict[str, JsonValue], user: str | None = None
    ) -> LLMPollingResult:
        job_id = plugin_state.get("job")
        job = _JOBS.get(job_id)
        if not job.done:
            return LLMPollingResult(
                status=LLMPollingStatus.RUNNING, plugin_state=plugin_state, next_check_after_seconds=CHECK_AFTER_S
            )
        _JOBS.collect(str(job_id))
        if job.error is not None or job.finished is None:
            error = job.error or InferenceError("the generation ended without a result")
            return LLMPollingResult(status=LLMPollingStatus.FAILED, error=f"{type(error).__name__}: {error}")
        message = AssistantPromptMessage(content="".join(job.texts), tool_calls=[_dify_call(c) for c in job.calls])
        latency = (job.ended_at or 0.0) - job.started if job.ended_at else 0.0
        result = LLMResult(model=model, message=message, usage=_usage(job.finished, max(latency, 0.0)))
        return LLMPollingResult(status=LLMPollingStatus.SUCCEEDED, result=result)

    def _stream(self, model: str, events) -> Generator[LLMResultChunk, None, None]:  # type: ignore[no-untyped-def]
        try:
            yield from self._chunks(model, events)
        except Exception as error:  # raised while streaming, after invoke()'s own error translation
            raise self._transform_invoke_error(error) from error

    def _chunks(self, model: str, events) -> Generator[LLMResultChunk, None, None]:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        for index, event in enumerate(events):
            if isinstance(event, TextDelta):
                message = AssistantPromptMessage(content=event.text)
            elif isinstance(event, ToolCallDelta):
                message = AssistantPromptMessage(content="", tool_calls=[_dify_call(event.call)])
            else:
                assert isinstance(event, Finished)
                usage = _usage(event, time.perf_counter() - started)
                delta = LLMResultChunkDelta(
                    index=index,
                    message=AssistantPromptMessage(content=""),
                    usage=usage,
                    finish_reason=event.finish_reason,
                )
                yield LLMResultChunk(model=model, delta=delta)
                return
            yield LLMResultChunk(model=model, delta=LLMResultChunkDelta(index=index, message=message))

    def _collect(self, model: str, prompt_messages: list[PromptMessage], events) -> LLMResult:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        texts: list[str] = []
        calls: list[AssistantPromptMessage.ToolCall] = []
        usage = LLMUsage.empty_usage()
        for event in events:
            if isinstance(event, TextDelta):
                texts.append(event.text)
            elif isinstance(event, ToolCallDelta):
                calls.append(_dify_call(event.call))
            elif isinstance(event, Finished):
                usage = _usage(event, time.perf_counter() - started)
        message = AssistantPromptMessage(content="".join(texts), tool_calls=calls)
        return LLMResult(model=model, prompt_messages=prompt_messages, message=message, usage=usage)

    def get_num_tokens(
        self,
        model: str,
        credentials: dict,
        prompt_messages: list[PromptMessage],
        tools: list[PromptMessageTool] | None = None,
    ) -> int:
        profile = profile_for(credentials, ModelType.LLM)
        return engine().count_prompt_tokens(profile, to_engine_messages(prompt_messages), to_engine_tools(tools))

    def validate_credentials(self, model: str, credentials: dict) -> None:
        validate_model(credentials, ModelType.LLM)

    def get_customizable_model_schema(self, model: str, credentials: dict) -> AIModelEntity:
        try:
            traits = engine().traits(profile_for(credentials, ModelType.LLM))
        except EngineError:
            traits = None  # invalid settings are reported by validation; still describe the model
        return llm_schema(model, traits if isinstance(traits, ModelTraits) else None)

    @property
    def _invoke_error_mapping(self) -> dict[type[InvokeError], list[type[Exception]]]:
        return INVOKE_ERROR_MAPPING


def shown_features(traits: ModelTraits | None) -> frozenset[str]:
    """The optional parameter groups (parameters.py `shown_for`) the model's files support."""
    if traits is None:
        return frozenset()
    flags = {"structured_output": True, "thinks": traits.thinks, "thinking_switch": traits.thinking_switch}
    return frozenset(name for name, on in flags.items() if on)


def llm_schema(model: str, traits: ModelTraits | None) -> AIModelEntity:
    context = traits.context_size if traits else FALLBACK_CONTEXT
    defaults = traits.defaults if traits else SamplingParams(temperature=0.7)
    max_default = min(
        context, (traits.default_max_tokens if traits and traits.default_max_tokens else DEFAULT_MAX_TOKENS)
    )
    rules = parameter_rules(defaults, max_default, context, shown_features(traits))
    features = [ModelFeature.POLLING]
    if traits is not None:
        features.append(ModelFeature.STRUCTURED_OUTPUT)
    if traits is not None and traits.accepts_tools:
        features += [ModelFeature.TOOL_CALL, ModelFeature.MULTI_TOOL_CALL, ModelFeature.STREAM_TOOL_CALL]
    mode = LLMMode.COMPLETION if traits is not None and traits.mode == "completion" else LLMMode.CHAT
    return AIModelEntity(
        model=model,
        label=I18nObject(en_US=model),
        model_type=ModelType.LLM,
        fetch_from=FetchFrom.CUSTOMIZABLE_MODEL,
        model_properties={ModelPropertyKey.MODE: mode.value, ModelPropertyKey.CONTEXT_SIZE: context},
        parameter_rules=rules,
        features=features,
    )
