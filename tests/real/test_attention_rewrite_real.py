"""The real Optimum Qwen2.5-Coder-0.5B loaded with its attention rewritten onto GroupQueryAttention decodes the
same greedy ids as the graph as exported (plain ONNX Runtime, reference/ort_greedy.py), for the 4-bit and the
fp32 file. Slow (model loads of seconds); runs when ONNX_LOCAL_REAL_MODELS points at the built models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.channel import Channel
from engine.generation.events import Finished, GenerationEvent, GenerationParams
from engine.generation.loader import build_generator
from engine.generation.runners import GenaiRunner
from engine.generation.sampling import SamplingParams
from engine.model_files import find_model_files
from engine.placement import Placement
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage
from reference import ort_greedy
from tests.real.helpers import session

REAL = os.environ.get("ONNX_LOCAL_REAL_MODELS")
pytestmark = pytest.mark.skipif(not REAL, reason="set ONNX_LOCAL_REAL_MODELS=.models to run the real-model checks")
NAME = "qwen2.5-coder-0.5b-instruct-optimum"
PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is the capital of France?",
    "Explain in two sentences what a hash map is.",
]
NEW_TOKENS = 40


@pytest.mark.parametrize("model_file", ["onnx/model_q4.onnx", "onnx/model.onnx"])
def test_rewritten_graph_decodes_the_exported_graphs_greedy_ids(model_file: str) -> None:
    root = Path(REAL or ".").resolve()
    if not (root / NAME / ".build-complete.json").is_file():
        pytest.skip(f"{root / NAME} is not built; run `make models`")
    profile = parse_profile(
        {"model_path": NAME, "model_file": model_file, "intra_op_threads": "2", "cpu_affinity": "none"},
        "llm",
        roots=(root,),
    )
    files = find_model_files(profile.model_dir, profile.model_file)
    scheduler, info = build_generator(profile, files, Placement(None, 2, False), lambda: None)
    assert isinstance(scheduler.runner, GenaiRunner), info.details["kv_cache"]
    assert info.details["kv_cache"].startswith("KV cache in place")
    prompts = [scheduler.prompts.encode([ChatMessage("user", text)], []) for text in PROMPTS]
    channels = []
    for text in PROMPTS:
        channel: Channel[GenerationEvent] = Channel()
        params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=NEW_TOKENS)
        scheduler.submit([ChatMessage("user", text)], [], params, channel)
        channels.append(channel)
    while scheduler.step() is not None:  # the three decode together (batched)
        pass
    got = []
    for channel in channels:
        finished = list(channel)[-1]
        assert isinstance(finished, Finished)
        got.append(list(finished.output_ids))
    eos = set(scheduler.eos_ids)
    del scheduler  # one model in memory at a time (fp32: 2.5 GB)
    exported = session(profile.model_dir / model_file)
    for prompt, ids in zip(prompts, got):
        assert ids == ort_greedy.greedy(exported, prompt, NEW_TOKENS, eos)
