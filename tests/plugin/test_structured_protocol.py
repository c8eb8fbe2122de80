"""Structured output, reasoning templates, polling and truthful schemas through the real plugin process over the
daemon's stdio protocol (tiny random-weight decoders: the grammar alone makes their output valid)."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest

from tests.plugin.daemon import PluginProcess, error_of, model_request, streams

LLM = {"model_path": "tiny-qwen2-decoder", "intra_op_threads": "1", "cpu_affinity": "none"}
THINKING = {**LLM, "model_path": "tiny-qwen2-decoder-thinking"}
# Nested objects, arrays, enums, required fields, bounds.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "pets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
                "required": ["kind"],
            },
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "colour", "address", "tags"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person."}]


def invoke(plugin: PluginProcess, credentials: dict[str, Any], messages: list[dict[str, Any]], **parameters: Any):
    return plugin.request(
        model_request(
            "invoke_llm",
            "llm",
            "tiny",
            credentials,
            prompt_messages=messages,
            model_parameters=parameters,
            stop=None,
            tools=None,
            stream=True,
        )
    )


def text_of(records: list[dict[str, Any]]) -> str:
    return "".join(chunk["delta"]["message"]["content"] for chunk in streams(records))


def test_fifty_schema_generations_parse_and_validate(plugin: PluginProcess) -> None:
    schema_text = json.dumps(PERSON)
    finishes = set()
    for seed in range(50):
        records = invoke(
            plugin,
            LLM,
            ASK,
            temperature=1.0,
            seed=seed,
            max_tokens=96,
            response_format="json_schema",
            json_schema=schema_text,
        )
        text = text_of(records)
        jsonschema.validate(json.loads(text), PERSON)  # raises on an invalid answer
        finishes.add(streams(records)[-1]["delta"]["finish_reason"])
    assert finishes == {"stop"}


def test_dify_wrapped_schema_and_a_tight_budget_still_close_the_document(plugin: PluginProcess) -> None:
    wrapped = json.dumps({"name": "llm_response", "schema": PERSON, "strict": True})
    records = invoke(
        plugin, LLM, ASK, temperature=1.5, seed=7, max_tokens=72, response_format="json_schema", json_schema=wrapped
    )
    jsonschema.validate(json.loads(text_of(records)), PERSON)


def test_a_json_schema_parameter_alone_constrains_and_text_format_turns_it_off(plugin: PluginProcess) -> None:
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    alone = text_of(invoke(plugin, LLM, ASK, temperature=1.0, seed=2, max_tokens=24, json_schema=schema))
    assert isinstance(json.loads(alone)["ok"], bool)
    free = text_of(invoke(plugin, LLM, ASK, temperature=0.0, max_tokens=24, json_schema=schema, response_format="text"))
    with pytest.raises(ValueError):
        json.loads(free)


def test_json_object_mode_gives_a_json_object(plugin: PluginProcess) -> None:
    for seed in range(5):
        value = json.loads(
            text_of(invoke(plugin, LLM, ASK, temperature=1.0, seed=seed, max_tokens=40, response_format="json_object"))
        )
        assert isinstance(value, dict)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"not": {"type": "string"}}, "not"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"type": "strng"}, "strng"),
    ],
)
def test_a_schema_the_grammar_cannot_enforce_is_a_bad_request_naming_it(
    plugin: PluginProcess, schema: dict[str, Any], named: str
) -> None:
    records = invoke(plugin, LLM, ASK, max_tokens=8, response_format="json_schema", json_schema=json.dumps(schema))
    error = error_of(records)
    assert error["error_type"] == "InvokeBadRequestError" and named in error["message"]
    assert text_of(invoke(plugin, LLM, ASK, max_tokens=4)) is not None  # still serving


def test_json_schema_format_without_a_schema_is_a_bad_request(plugin: PluginProcess) -> None:
    error = error_of(invoke(plugin, LLM, ASK, max_tokens=8, response_format="json_schema"))
    assert error["error_type"] == "InvokeBadRequestError" and "json_schema" in error["message"]


def test_thinking_template_streams_the_opened_think_block(plugin: PluginProcess) -> None:
    text = text_of(invoke(plugin, THINKING, ASK, temperature=0.0, max_tokens=12))
    assert text.startswith("<think>\n")


def test_enable_thinking_false_renders_the_template_without_thinking(plugin: PluginProcess) -> None:
    thinking = invoke(plugin, THINKING, ASK, temperature=0.0, max_tokens=12, enable_thinking=True)
    plain = invoke(plugin, THINKING, ASK, temperature=0.0, max_tokens=12, enable_thinking=False)
    assert not text_of(plain).startswith("<think>")
    # The template wrote "<think>\n\n</think>\n\n" into the prompt instead of opening the block.
    usage = streams(plain)[-1]["delta"]["usage"]
    assert usage["prompt_tokens"] > streams(thinking)[-1]["delta"]["usage"]["prompt_tokens"]


def test_thinking_budget_closes_the_block(plugin: PluginProcess) -> None:
    text = text_of(invoke(plugin, THINKING, ASK, temperature=1.0, seed=3, max_tokens=40, thinking_budget=4))
    assert text.startswith("<think>\n") and "</think>" in text


def test_structured_output_on_a_thinking_model_thinks_then_answers_valid_json(plugin: PluginProcess) -> None:
    text = text_of(
        invoke(
            plugin,
            THINKING,
            ASK,
            temperature=1.0,
            seed=5,
            max_tokens=120,
            thinking_budget=8,
            response_format="json_schema",
            json_schema=json.dumps(PERSON),
        )
    )
    assert text.startswith("<think>\n")
    jsonschema.validate(json.loads(text.split("</think>", 1)[1]), PERSON)


def schema_of(plugin: PluginProcess, credentials: dict[str, Any]) -> dict[str, Any]:
    return streams(plugin.request(model_request("get_ai_model_schemas", "llm", "tiny", credentials)))[0]["model_schema"]


def test_schemas_declare_only_what_the_files_support(plugin: PluginProcess) -> None:
    tools = schema_of(plugin, LLM)
    thinking = schema_of(plugin, THINKING)
    tool_rules = {rule["name"] for rule in tools["parameter_rules"]}
    thinking_rules = {rule["name"] for rule in thinking["parameter_rules"]}
    assert "tool-call" in tools["features"] and "tool-call" not in thinking["features"]
    assert {"enable_thinking", "thinking_budget"} <= thinking_rules
    assert not {"enable_thinking", "thinking_budget"} & tool_rules
    for schema in (tools, thinking):
        assert {"structured-output", "polling"} <= set(schema["features"])
        assert {"response_format", "json_schema"} <= {rule["name"] for rule in schema["parameter_rules"]}
        assert schema["model_properties"]["context_size"] == 512


def start_polling(plugin: PluginProcess, messages: list[dict[str, Any]], **parameters: Any) -> dict[str, Any]:
    start = plugin.request(
        model_request(
            "start_polling",
            "llm",
            "tiny",
            LLM,
            prompt_messages=messages,
            model_parameters=parameters,
            stop=None,
            tools=None,
            stream=False,
        )
    )
    started = streams(start)[0]
    assert started["status"] == "running" and started["next_check_after_seconds"] >= 1
    return started["plugin_state"]


def poll_until_done(plugin: PluginProcess, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        result = streams(plugin.request(model_request("check_polling", "llm", "tiny", LLM, plugin_state=state)))[0]
        if result["status"] != "running":
            return result, state
        assert time.monotonic() < deadline
        state = result["plugin_state"]
        time.sleep(0.05)


def test_polling_reports_a_generation_that_fails_as_failed(plugin: PluginProcess) -> None:
    long_prompt = [{"role": "user", "content": "word " * 2000}]  # beyond the 512-token context
    result, _ = poll_until_done(plugin, start_polling(plugin, long_prompt, max_tokens=8))
    assert result["status"] == "failed" and "context window" in result["error"]


def test_polling_start_check_until_done_gives_the_text_and_usage(plugin: PluginProcess) -> None:
    state = start_polling(plugin, ASK, temperature=0.0, max_tokens=200, response_format="json_object")
    result, state = poll_until_done(plugin, state)
    assert result["status"] == "succeeded", result
    message, usage = result["result"]["message"], result["result"]["usage"]
    assert isinstance(json.loads(message["content"]), dict)
    assert (
        usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    # Collected: the job is gone, and a later check says so.
    gone = error_of(plugin.request(model_request("check_polling", "llm", "tiny", LLM, plugin_state=state)))
    assert gone["error_type"] == "InvokeBadRequestError" and "polling job" in gone["message"]
