"""The LLM through the real plugin process over the daemon's stdio protocol (tiny Qwen2 decoder fixture)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tokenizers import Tokenizer

from tests.conftest import FIXTURES
from tests.plugin.daemon import PluginProcess, error_of, model_request, streams

LLM = {"model_path": "tiny-qwen2-decoder", "intra_op_threads": "1", "cpu_affinity": "none"}
EXPECTED = json.loads((FIXTURES / "tiny-qwen2-decoder" / "expected_greedy.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in EXPECTED["cases"]}
TOKENIZER = Tokenizer.from_file(str(FIXTURES / "tiny-qwen2-decoder" / "tokenizer.json"))
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def invoke(
    plugin: PluginProcess, messages: list[dict[str, Any]], credentials: dict[str, Any] = LLM, **fields: Any
) -> list[dict[str, Any]]:
    fields.setdefault("model_parameters", {"temperature": 0.0, "max_tokens": 32})
    fields.setdefault("stop", None)
    fields.setdefault("tools", None)
    fields.setdefault("stream", True)
    return plugin.request(model_request("invoke_llm", "llm", "tiny", credentials, prompt_messages=messages, **fields))


def check_chunks(chunks: list[dict[str, Any]]) -> None:
    """What the daemon re-validates: content never null, an index on every delta, complete usage at the end."""
    for chunk in chunks:
        assert chunk["model"] == "tiny"
        assert isinstance(chunk["delta"]["index"], int)
        assert isinstance(chunk["delta"]["message"]["content"], str)
    last = chunk["delta"]
    usage = last["usage"]
    assert usage is not None and last["finish_reason"] in ("stop", "length", "tool_calls")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["delta"]["usage"] is None and c["delta"]["finish_reason"] is None for c in chunks[:-1])


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(chunk["delta"]["message"]["content"] for chunk in chunks)


def expected_text(name: str, tokens: int | None = None) -> str:
    return TOKENIZER.decode(CASES[name]["output_ids"][:tokens], skip_special_tokens=True)


def test_streaming_chat_reproduces_the_reference_greedy_text(plugin: PluginProcess) -> None:
    chunks = streams(invoke(plugin, CASES["system_user"]["messages"]))
    check_chunks(chunks)
    assert len(chunks) > 2
    assert text_of(chunks) == expected_text("system_user")
    usage = chunks[-1]["delta"]["usage"]
    assert usage["prompt_tokens"] == len(CASES["system_user"]["input_ids"]) and usage["completion_tokens"] == 32
    assert chunks[-1]["delta"]["finish_reason"] == "length"


def test_non_streaming_chat_is_one_chunk_with_the_whole_text(plugin: PluginProcess) -> None:
    chunks = streams(invoke(plugin, CASES["stops_at_eos"]["messages"], stream=False))
    assert len(chunks) == 1
    assert chunks[0]["delta"]["message"]["content"] == expected_text("stops_at_eos")


def test_daemon_shaped_request_with_list_content(plugin: PluginProcess) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "base64_data": "",
                    "url": "",
                    "data": "Hello! What can you do?",
                    "encode_format": "",
                    "format": "",
                    "mime_type": "",
                    "detail": "",
                    "filename": "",
                }
            ],
            "name": "",
            "tool_calls": [],
            "tool_call_id": "",
        }
    ]
    data = model_request(
        "invoke_llm",
        "llm",
        "tiny",
        LLM,
        prompt_messages=messages,
        model_parameters={"temperature": 0.0, "max_tokens": 32},
        tools=None,
        stop=None,
        json_schema=None,
        stream=True,
    )
    chunks = streams(plugin.request(data, full_envelope=True))
    check_chunks(chunks)
    assert text_of(chunks) == expected_text("user_only")


def test_stop_sequence_ends_the_answer_without_emitting_it(plugin: PluginProcess) -> None:
    full = expected_text("system_user")
    stop = full[10:14]
    chunks = streams(invoke(plugin, CASES["system_user"]["messages"], stop=[stop]))
    check_chunks(chunks)
    assert text_of(chunks) == full[: full.index(stop)]
    assert chunks[-1]["delta"]["finish_reason"] == "stop"


def test_max_tokens(plugin: PluginProcess) -> None:
    chunks = streams(
        invoke(plugin, CASES["user_only"]["messages"], model_parameters={"temperature": 0.0, "max_tokens": 5})
    )
    check_chunks(chunks)
    assert chunks[-1]["delta"]["usage"]["completion_tokens"] == 5
    assert chunks[-1]["delta"]["finish_reason"] == "length"
    assert text_of(chunks) == expected_text("user_only", 5)


def test_seeded_sampling_reproduces(plugin: PluginProcess) -> None:
    params = {"temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 16}
    first = text_of(streams(invoke(plugin, CASES["user_only"]["messages"], model_parameters=params)))
    second = text_of(streams(invoke(plugin, CASES["user_only"]["messages"], model_parameters=params)))
    assert first == second


def test_tool_call_round_trip_messages_are_accepted(plugin: PluginProcess) -> None:
    messages = [
        {"role": "system", "content": "You help with the weather."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"temperature": 18}', "tool_call_id": "call_1", "name": "get_weather"},
    ]
    chunks = streams(invoke(plugin, messages, tools=[WEATHER]))
    check_chunks(chunks)
    # Tool definitions and the tool result went through the template: the prompt is longer than without tools.
    with_tools = num_tokens(plugin, messages, [WEATHER])
    assert chunks[-1]["delta"]["usage"]["prompt_tokens"] == with_tools > num_tokens(plugin, messages, None)
    for chunk in chunks:
        for call in chunk["delta"]["message"]["tool_calls"]:
            json.loads(call["function"]["arguments"])


def num_tokens(plugin: PluginProcess, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    records = plugin.request(
        model_request("get_llm_num_tokens", "llm", "tiny", LLM, prompt_messages=messages, tools=tools)
    )
    (payload,) = streams(records)
    return payload["num_tokens"]


def test_get_num_tokens_uses_the_template_and_tokenizer(plugin: PluginProcess) -> None:
    assert num_tokens(plugin, CASES["system_user"]["messages"], None) == len(CASES["system_user"]["input_ids"])


def test_too_long_prompt_error_gives_both_numbers(plugin: PluginProcess) -> None:
    error = error_of(
        invoke(
            plugin,
            CASES["system_user"]["messages"],
            credentials={**LLM, "context_size": "30"},
            model_parameters={"temperature": 0.0, "max_tokens": 8},
        )
    )
    assert error["error_type"] == "InvokeBadRequestError"
    assert "48 tokens" in error["message"] and "30 tokens" in error["message"]


def test_image_content_is_a_bad_request(plugin: PluginProcess) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "data": "What is in this picture?"},
                {"type": "image", "format": "png", "mime_type": "image/png", "base64_data": "iVBORw0KGgo=", "url": ""},
            ],
        }
    ]
    error = error_of(invoke(plugin, messages))
    assert error["error_type"] == "InvokeBadRequestError"
    assert "image" in error["message"]


def test_schema_declares_parameters_context_and_tool_features(plugin: PluginProcess) -> None:
    records = plugin.request(model_request("get_ai_model_schemas", "llm", "tiny", LLM))
    schema = streams(records)[0]["model_schema"]
    rules = {rule["name"]: rule for rule in schema["parameter_rules"]}
    assert set(rules) >= {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "seed",
        "max_tokens",
    }
    assert rules["max_tokens"]["max"] == 512 and rules["max_tokens"]["default"] == 256
    assert rules["temperature"]["default"] == 0.0  # generation_config.json: do_sample false
    assert schema["model_properties"] == {"mode": "chat", "context_size": 512}
    assert set(schema["features"]) == {
        "tool-call",
        "multi-tool-call",
        "stream-tool-call",
        "structured-output",
        "polling",
    }
    assert rules["response_format"]["options"] == ["text", "json_object", "json_schema"]
    assert rules["json_schema"]["type"] == "text"
    assert "enable_thinking" not in rules and "thinking_budget" not in rules  # its template does not think


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        ({**LLM, "mode": "poem"}, "mode"),
        ({**LLM, "max_concurrent_sequences": "0"}, "max_concurrent_sequences"),
        ({**LLM, "context_size": "100000"}, "context_size"),
    ],
)
def test_validate_llm_credentials(plugin: PluginProcess, credentials: dict[str, str], field: str) -> None:
    good = plugin.request(model_request("validate_model_credentials", "llm", "tiny", LLM))
    assert streams(good)[0]["result"] is True
    error = error_of(plugin.request(model_request("validate_model_credentials", "llm", "tiny", credentials)))
    assert error["error_type"] == "CredentialsValidateFailedError" and field in error["message"]


def test_concurrent_streams_all_complete_with_their_own_text(plugin: PluginProcess) -> None:
    names = ["user_only", "system_user", "unicode_emoji", "stops_at_eos"]
    sessions = []
    for name in names:
        data = model_request(
            "invoke_llm",
            "llm",
            "tiny",
            {**LLM, "max_concurrent_sequences": "2"},
            prompt_messages=CASES[name]["messages"],
            model_parameters={"temperature": 0.0, "max_tokens": 32},
            stop=None,
            tools=None,
            stream=True,
        )
        sessions.append(plugin.send(data))
    for name, session in zip(names, sessions):
        chunks = streams(plugin.collect(session))
        check_chunks(chunks)
        assert text_of(chunks) == expected_text(name)


def test_later_turns_and_speculation_keep_the_text_through_the_plugin(plugin: PluginProcess) -> None:
    """A three-turn chat through the plugin: with the prefix cache (default) and speculative decoding on, every
    turn's text and usage equal those of another instance with both off."""
    cached = {**LLM, "model_path": "tiny-qwen2-decoder-genai"}
    plain = {**cached, "prefix_cache_mb": "0", "speculative_decoding": "off"}
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse. " * 8}]
    for turn in range(3):
        messages.append({"role": "user", "content": f"Question {turn}: what comes after {turn * 7}?"})
        got = streams(invoke(plugin, messages, cached))
        expected = streams(invoke(plugin, messages, plain))
        check_chunks(got)
        assert text_of(got) == text_of(expected), turn
        assert got[-1]["delta"]["usage"] == {
            **got[-1]["delta"]["usage"],
            **{key: expected[-1]["delta"]["usage"][key] for key in ("prompt_tokens", "completion_tokens")},
        }
        messages.append({"role": "assistant", "content": text_of(got)})
