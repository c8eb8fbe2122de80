"""Generation through the engine on the real Qwen2.5-Coder-0.5B-Instruct int4 models built by `make models`.

Slow (model loads of seconds): runs only when ONNX_LOCAL_REAL_MODELS points at the built models directory,
e.g. `ONNX_LOCAL_REAL_MODELS=.models .venv/bin/python -m pytest tests/real/test_generation_real.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.api import Engine
from engine.generation.events import Finished, GenerationParams, TextDelta, ToolCallDelta
from engine.generation.sampling import SamplingParams
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage, ToolCall, ToolSpec

REAL = os.environ.get("ONNX_LOCAL_REAL_MODELS")
pytestmark = pytest.mark.skipif(not REAL, reason="set ONNX_LOCAL_REAL_MODELS=.models to run the real-model checks")
LAYOUTS = ["qwen2.5-coder-0.5b-instruct-optimum", "qwen2.5-coder-0.5b-instruct-genai"]
GREEDY = GenerationParams(SamplingParams(temperature=0.0), max_tokens=64)
WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}, "required": ["city"]},
)


@pytest.fixture(scope="module")
def engine():
    eng = Engine()
    yield eng
    eng.close()


def profile(name: str):
    root = Path(REAL or ".").resolve()
    if not (root / name / ".build-complete.json").is_file():
        pytest.skip(f"{root / name} is not built; run `make models`")
    return parse_profile({"model_path": name, "intra_op_threads": "2"}, "llm", roots=(root,))


def answer(engine: Engine, name: str, messages: list[ChatMessage], tools: list[ToolSpec] | None = None):
    events = list(engine.generate(profile(name), messages, GREEDY, tools or ()))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e.call for e in events if isinstance(e, ToolCallDelta)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    return text, calls, finished


@pytest.mark.parametrize("name", LAYOUTS)
def test_capital_of_france(engine: Engine, name: str) -> None:
    text, calls, finished = answer(engine, name, [ChatMessage("user", "What is the capital of France?")])
    assert "Paris" in text and not calls
    assert finished.finish_reason == "stop"


@pytest.mark.parametrize("name", LAYOUTS)
def test_weather_question_becomes_a_tool_call_and_the_result_goes_back(engine: Engine, name: str) -> None:
    question = ChatMessage("user", "What is the weather like in Paris right now?")
    text, calls, finished = answer(engine, name, [question], [WEATHER])
    assert finished.finish_reason == "tool_calls" and text.strip() == ""
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    history = [
        question,
        ChatMessage("assistant", "", (ToolCall(calls[0].id, "get_weather", calls[0].arguments),)),
        ChatMessage("tool", '{"temperature_celsius": 18, "sky": "sunny"}', tool_call_id=calls[0].id),
    ]
    text, calls, finished = answer(engine, name, history, [WEATHER])
    assert "18" in text and not calls
