"""Generation through the engine on the tiny Llama 3, Gemma 3, Phi-3, Qwen3 and Mistral decoders, in each layout
they are built in (Optimum `model.onnx`, onnxruntime-genai folder), on real ORT sessions.

Each fixture's `expected_greedy.json` holds the ids Hugging Face `generate(do_sample=False)` produced with the
architecture's quirks in play (explicit head_dim, tied embeddings, partial rotary, llama3 RoPE scaling, sliding
windows shorter than the prompts, several EOS ids, a BOS the tokenizer adds): the engine must reproduce them, in
chat mode and in completion mode (a base model's call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.api import Engine
from engine.generation.events import Finished, GenerationParams
from engine.generation.sampling import SamplingParams
from engine.settings.profile import RuntimeProfile, parse_profile
from engine.text.messages import ToolSpec
from tests.engine.test_generation_engine import messages_of

ROOT = (Path(__file__).resolve().parents[1] / "fixtures" / "models").resolve()
FAMILIES = ("llama", "gemma3", "phi3", "qwen3", "mistral")
LAYOUT_SUFFIXES = ("", "-genai")
FIXTURES = [f"tiny-{family}-decoder{suffix}" for family in FAMILIES for suffix in LAYOUT_SUFFIXES]


def expected(fixture: str) -> dict[str, Any]:
    return json.loads((ROOT / fixture / "expected_greedy.json").read_text(encoding="utf-8"))


CASES = [(fixture, case["name"]) for fixture in FIXTURES for case in expected(fixture)["cases"]]


def profile(fixture: str, mode: str, **values: str) -> RuntimeProfile:
    values = {"model_path": fixture, "intra_op_threads": "1", "mode": mode, **values}
    return parse_profile(values, "llm", roots=(ROOT,))


@pytest.fixture(scope="module")
def engine():
    eng = Engine()
    yield eng
    eng.close()


def test_every_family_has_both_layouts_and_a_completion_case() -> None:
    for fixture in FIXTURES:
        names = {case["name"] for case in expected(fixture)["cases"]}
        assert {"completion", "stops_at_eos", "user_only"} <= names, fixture
    assert any((ROOT / f / "genai_config.json").is_file() for f in FIXTURES)


@pytest.mark.parametrize(("fixture", "name"), CASES)
def test_greedy_ids_match_hugging_face_generate(engine: Engine, fixture: str, name: str) -> None:
    reference = expected(fixture)
    case = next(c for c in reference["cases"] if c["name"] == name)
    prof = profile(fixture, case.get("mode", "chat"))
    msgs = messages_of(case)
    tools = [ToolSpec.from_definition(tool) for tool in case.get("tools") or ()]
    # Our template + tokenizer (BOS included, once) = transformers'.
    assert engine.registry.get(prof).scheduler.prompts.encode(msgs, tools) == case["input_ids"]
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=reference["generate"]["max_new_tokens"])
    events = list(engine.generate(prof, msgs, params, tools=tools))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert list(finished.output_ids) == case["output_ids"]
    assert finished.finish_reason == ("stop" if case["stopped_at_eos"] else "length")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_model_info_reports_the_architectures_geometry(engine: Engine, fixture: str) -> None:
    config = json.loads((ROOT / fixture / "config.json").read_text(encoding="utf-8"))
    details = engine.model_info(profile(fixture, "chat")).details
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert details["kv_heads"] == config["num_key_value_heads"]
    assert details["head_dim"] == head_dim
    assert details["eos_token_ids"] == sorted(expected(fixture)["eos_token_ids"])


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if "gemma3" in f or "mistral" in f])
def test_sliding_window_survives_chunked_prefill(engine: Engine, fixture: str, monkeypatch) -> None:
    # Prefill chunks shorter than the window (16), then longer: the window must slide across chunk borders.
    from engine.generation import scheduler

    reference = expected(fixture)
    case = next(c for c in reference["cases"] if c["name"] == "system_user")
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=reference["generate"]["max_new_tokens"])
    for chunk in (5, 24):
        monkeypatch.setattr(scheduler, "PREFILL_CHUNK", chunk)
        finished = list(engine.generate(profile(fixture, "chat"), messages_of(case), params))[-1]
        assert list(finished.output_ids) == case["output_ids"], chunk


@pytest.mark.parametrize("fixture", ["tiny-gemma3-decoder-genai", "tiny-mistral-decoder-genai"])
def test_genai_sliding_window_layers_get_at_least_a_window_of_cache(engine: Engine, fixture: str) -> None:
    # One sequence at a time: no shared pool (whose slots are long anyway), every cache sized to its request.
    prof = profile(fixture, "chat", max_concurrent_sequences="1")
    case = next(c for c in expected(fixture)["cases"] if c["name"] == "user_only")
    params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=2)
    finished = list(engine.generate(prof, messages_of(case), params))[-1]  # a cache of prompt + 2 positions
    assert list(finished.output_ids) == case["output_ids"][:2]
    runner = engine.registry.get(prof).scheduler.runner
    assert runner.layout.min_cache_positions == 16
    cache = runner.new_cache(4)  # GroupQueryAttention refuses a sliding layer's buffer shorter than the window
    try:
        assert cache.capacity >= 16
        assert runner.forward(cache, [5, 6, 7]).shape[-1] == runner.layout.vocab_size
    finally:
        runner.release(cache)
