"""The tiny Llama 3, Gemma 3, Phi-3, Qwen3 and Mistral decoders through the real plugin process, in each layout
they are built in: chat mode and completion mode (a base model's call) reproduce Hugging Face `generate`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tokenizers import Tokenizer

from tests.conftest import FIXTURES
from tests.plugin.daemon import PluginProcess, model_request, streams

FAMILIES = ("llama", "gemma3", "phi3", "qwen3", "mistral")
MODELS = [f"tiny-{family}-decoder{suffix}" for family in FAMILIES for suffix in ("", "-genai")]


def reference(model: str, name: str) -> dict[str, Any]:
    expected = json.loads((FIXTURES / model / "expected_greedy.json").read_text(encoding="utf-8"))
    return next(case for case in expected["cases"] if case["name"] == name)


@pytest.mark.parametrize("name", ["system_user", "stops_at_eos", "completion"])
@pytest.mark.parametrize("model", MODELS)
def test_plugin_reproduces_the_reference_greedy_text(plugin: PluginProcess, model: str, name: str) -> None:
    case = reference(model, name)
    credentials = {
        "model_path": model,
        "intra_op_threads": "1",
        "cpu_affinity": "none",
        "mode": case.get("mode", "chat"),
    }
    request = model_request(
        "invoke_llm",
        "llm",
        "tiny",
        credentials,
        prompt_messages=case["messages"],
        model_parameters={"temperature": 0.0, "max_tokens": 32},
        stop=None,
        tools=None,
        stream=True,
    )
    chunks = streams(plugin.request(request))
    tokenizer = Tokenizer.from_file(str(FIXTURES / model / "tokenizer.json"))
    text = "".join(chunk["delta"]["message"]["content"] for chunk in chunks)
    assert text == tokenizer.decode(case["output_ids"], skip_special_tokens=True)
    usage = chunks[-1]["delta"]["usage"]
    assert usage["prompt_tokens"] == len(case["input_ids"])
    assert usage["completion_tokens"] == len(case["output_ids"])
    assert chunks[-1]["delta"]["finish_reason"] == ("stop" if case["stopped_at_eos"] else "length")
