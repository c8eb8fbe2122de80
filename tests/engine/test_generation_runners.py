"""Decoder runners on graph variants built from the fixture at test time (onnx, no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from engine.channel import Channel
from engine.generation.events import Finished, GenerationEvent, GenerationParams
from engine.generation.loader import build_generator
from engine.generation.runners import OptimumRunner
from engine.generation.sampling import SamplingParams
from engine.model_files import find_model_files
from engine.placement import Placement
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage

ROOT = (Path(__file__).resolve().parents[1] / "fixtures" / "models").resolve()
SOURCE = ROOT / "tiny-qwen2-decoder"
EXPECTED = json.loads((SOURCE / "expected_greedy.json").read_text(encoding="utf-8"))


def merged_with_cache_branch(source: Path, target: Path) -> None:
    """The older Optimum `decoder_model_merged.onnx` shape: an If on a `use_cache_branch` input choosing
    between a no-past and a with-past subgraph. Both branches here are the fixture's own graph (it accepts a
    zero-length past), which is what the runner must feed: the flag, plus the usual inputs."""
    model = onnx.load(str(source))
    graph = model.graph

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(list(graph.node), name, [], list(graph.output))

    flag = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    condition = helper.make_node("Squeeze", ["use_cache_branch"], ["use_cache_branch_scalar"])
    choose = helper.make_node(
        "If",
        ["use_cache_branch_scalar"],
        [output.name for output in graph.output],
        then_branch=branch("with_past"),
        else_branch=branch("without_past"),
    )
    merged = helper.make_graph(
        [condition, choose], "merged", [*graph.input, flag], list(graph.output), list(graph.initializer)
    )
    onnx.save(helper.make_model(merged, opset_imports=model.opset_import, ir_version=model.ir_version), str(target))


def test_merged_decoder_with_use_cache_branch_reproduces_the_reference(tmp_path: Path) -> None:
    directory = tmp_path / "merged"
    shutil.copytree(SOURCE, directory, ignore=shutil.ignore_patterns("*.onnx"))
    merged_with_cache_branch(SOURCE / "model.onnx", directory / "decoder_model_merged.onnx")
    profile = parse_profile({"model_path": "merged", "intra_op_threads": "1"}, "llm", roots=(tmp_path.resolve(),))
    files = find_model_files(profile.model_dir)
    scheduler, info = build_generator(profile, files, Placement(None, 1, False), lambda: None)
    assert info.onnx_file == "decoder_model_merged.onnx"
    assert isinstance(scheduler.runner, OptimumRunner) and scheduler.runner.has_cache_branch
    for case in EXPECTED["cases"]:
        if case.get("tools"):
            continue
        channel: Channel[GenerationEvent] = Channel()
        messages = [ChatMessage(m["role"], m["content"]) for m in case["messages"]]
        scheduler.submit(messages, [], GenerationParams(SamplingParams(temperature=0.0), max_tokens=32), channel)
        while scheduler.step() is not None:
            pass
        finished = list(channel)[-1]
        assert isinstance(finished, Finished)
        assert list(finished.output_ids) == case["output_ids"], case["name"]
