"""The Optimum decoder's attention rewritten onto GroupQueryAttention at load (engine/generation/attention_rewrite.py):
Hugging Face's greedy ids on the tiny fixture, batched decode, the on-disk cache, and graphs that stay as exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.channel import Channel
from engine.generation import attention_rewrite
from engine.generation.attention_rewrite import AttentionRewrite, Unrewritable, rewrite_attention
from engine.generation.events import Finished, GenerationEvent, GenerationParams
from engine.generation.kv_layout import read_kv_layout
from engine.generation.last_logits import takes_logits_count
from engine.generation.loader import build_generator
from engine.generation.runners import GenaiRunner, OptimumRunner
from engine.generation.sampling import SamplingParams
from engine.generation.scheduler import GenerationScheduler
from engine.model_files import find_model_files
from engine.model_info import ModelInfo
from engine.placement import Placement
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage
from tests.engine.test_generation_runners import merged_with_cache_branch

ROOT = (Path(__file__).resolve().parents[1] / "fixtures" / "models").resolve()
SOURCE = ROOT / "tiny-qwen2-decoder"
CONFIG = json.loads((SOURCE / "config.json").read_text(encoding="utf-8"))
CASES = {
    case["name"]: case
    for case in json.loads((SOURCE / "expected_greedy.json").read_text(encoding="utf-8"))["cases"]
    if not case.get("tools")
}


def load(directory: Path, root: Path = ROOT, **values: str) -> tuple[GenerationScheduler, ModelInfo]:
    profile = parse_profile({"model_path": directory.name, "intra_op_threads": "1", **values}, "llm", roots=(root,))
    return build_generator(profile, find_model_files(profile.model_dir), Placement(None, 1, False), lambda: None)


def session(source: bytes | str, folder: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def greedy(runner: GenaiRunner | OptimumRunner, prompt: list[int], steps: int) -> list[int]:
    cache = runner.new_cache(256)
    logits = runner.forward(cache, prompt)
    out = []
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = runner.forward(cache, [out[-1]])
    runner.release(cache)
    return out


def generate(scheduler: GenerationScheduler, names: list[str]) -> list[list[int]]:
    channels = []
    for name in names:
        channel: Channel[GenerationEvent] = Channel()
        messages = [ChatMessage(m["role"], m["content"]) for m in CASES[name]["messages"]]
        scheduler.submit(messages, [], GenerationParams(SamplingParams(temperature=0.0), max_tokens=32), channel)
        channels.append(channel)
    while scheduler.step() is not None:
        pass
    finished = [list(channel)[-1] for channel in channels]
    assert all(isinstance(f, Finished) for f in finished)
    return [list(f.output_ids) for f in finished]  # type: ignore[union-attr]


def test_the_optimum_fixture_loads_rewritten_and_reproduces_hugging_face_greedy_ids() -> None:
    scheduler, info = load(SOURCE)
    assert isinstance(scheduler.runner, GenaiRunner)
    assert info.layout == "optimum" and "KV cache in place" in info.describe()
    for name, case in CASES.items():
        assert generate(scheduler, [name]) == [case["output_ids"]], name


def test_the_rewritten_graph_decodes_like_the_exported_one() -> None:
    """Same greedy ids as the graph as exported (run by OptimumRunner), token for token, and close logits."""
    model = onnx.load(str(SOURCE / "model.onnx"))
    assert rewrite_attention(model, CONFIG) == 2
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops
    assert "position_ids" not in {i.name for i in model.graph.input}  # the kernel derives positions
    rewritten = session(model.SerializeToString())
    exported = session(str(SOURCE / "model.onnx"))
    candidate = GenaiRunner(rewritten, read_kv_layout(rewritten, SOURCE, "optimum"))
    reference = OptimumRunner(exported, read_kv_layout(exported, SOURCE, "optimum"))
    for case in CASES.values():
        assert greedy(candidate, case["input_ids"], 24) == greedy(reference, case["input_ids"], 24)
    caches = candidate.new_cache(64), reference.new_cache(64)
    for chunk in ([5, 17, 300, 2, 9], [44], [7, 8, 9], [1000]):  # a prefill in chunks, then decode steps
        np.testing.assert_allclose(candidate.forward(caches[0], chunk), reference.forward(caches[1], chunk), atol=1e-4)


def test_rewritten_sequences_decode_together_in_batches() -> None:
    scheduler, _ = load(SOURCE, max_concurrent_sequences="3")
    order = ["stops_at_eos", "user_only", "system_user", "unicode_emoji", "user_only"]
    assert generate(scheduler, order) == [CASES[name]["output_ids"] for name in order]
    assert scheduler.batched_steps > 0


def test_a_big_graph_is_rewritten_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNX_LOCAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(attention_rewrite, "CACHE_EMBEDDED_BYTES", 0)  # the fixture counts as big
    first = AttentionRewrite(CONFIG)
    edited = first(SOURCE / "model.onnx")
    assert first.applied and not first.from_cache
    assert edited is not None and edited.path is not None and edited.path.is_relative_to(tmp_path / "cache")
    assert (edited.path.parent / "model.onnx.data").is_file()  # weights as external data beside the graph
    second = AttentionRewrite(CONFIG)
    again = second(SOURCE / "model.onnx")
    assert second.applied and second.from_cache and again is not None and again.path == edited.path
    cached = session(str(edited.path))
    assert takes_logits_count(cached)  # composed with the last-position edit
    runner = GenaiRunner(cached, read_kv_layout(cached, SOURCE, "optimum"))
    case = CASES["user_only"]
    assert greedy(runner, case["input_ids"], len(case["output_ids"])) == case["output_ids"]


def test_a_sliding_window_model_keeps_the_optimum_layout_and_says_why(tmp_path: Path) -> None:
    directory = tmp_path / "windowed"
    shutil.copytree(SOURCE, directory)
    config = {**CONFIG, "use_sliding_window": True, "sliding_window": 64}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    scheduler, info = load(directory, root=tmp_path.resolve())
    assert isinstance(scheduler.runner, OptimumRunner)
    assert "kept Optimum layout: the model uses sliding-window attention" in info.describe()
    assert generate(scheduler, ["user_only"]) == [CASES["user_only"]["output_ids"]]  # window 64 > these lengths


def test_an_if_merged_decoder_keeps_the_optimum_layout_and_says_why(tmp_path: Path) -> None:
    directory = tmp_path / "merged"
    shutil.copytree(SOURCE, directory, ignore=shutil.ignore_patterns("*.onnx"))
    merged_with_cache_branch(SOURCE / "model.onnx", directory / "decoder_model_merged.onnx")
    scheduler, info = load(directory, root=tmp_path.resolve())
    assert isinstance(scheduler.runner, OptimumRunner)
    assert info.details["kv_cache"] == "kept Optimum layout: 0 Softmax nodes at the top level for 2 layers"


def test_an_unexpected_attention_shape_is_refused_before_any_change() -> None:
    model = onnx.load(str(SOURCE / "model.onnx"))
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    # The mask subtracted from the scores instead of added: not the recognised pattern.
    scores = next(node for node in model.graph.node if softmax.input[0] in node.output)
    scores.op_type = "Sub"
    before = model.SerializeToString()
    with pytest.raises(Unrewritable, match="attention scores: expected Add, found Sub"):
        rewrite_attention(model, CONFIG)
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sliding_window": 64, "use_sliding_window": None}, "sliding-window"),  # Mistral: a window given applies
        ({"sliding_window": 64, "use_sliding_window": False}, None),  # Qwen2: the flag decides
        ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding-window attention"),
        ({"max_position_embeddings": None}, "lacks num_attention_heads or max_position_embeddings"),
    ],
)
def test_the_config_decides_what_attention_is_rewritten(changes: dict, reason: str | None) -> None:
    model = onnx.load(str(SOURCE / "model.onnx"))
    config = {key: value for key, value in {**CONFIG, **changes}.items() if value is not None}  # None: absent
    if reason is None:
        assert rewrite_attention(model, config) == 2
    else:
        with pytest.raises(Unrewritable, match=reason):
            rewrite_attention(model, config)


def test_a_float16_graph_is_kept_as_exported() -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(SOURCE / "model.onnx")), keep_io_types=False)
    with pytest.raises(Unrewritable, match="float16"):
        rewrite_attention(model, CONFIG)


def test_a_mask_that_is_not_the_inputs_causal_mask_is_refused() -> None:
    """An additive bias from a weight (ALiBi-like) instead of the attention_mask: GQA would drop it."""
    model = onnx.load(str(SOURCE / "model.onnx"))
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    add = next(node for node in model.graph.node if softmax.input[0] in node.output)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "bias"))
    add.input[1] = "bias"
    with pytest.raises(Unrewritable, match="attention mask: computed from constants"):
        rewrite_attention(model, CONFIG)
