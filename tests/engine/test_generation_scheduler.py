"""The generation scheduler stepped by hand (no worker thread): fairness, admission limits, cancellation, and
the load-time checks of the decoder graph against its config."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from engine.channel import Channel
from engine.errors import ModelBusyError, ModelLoadError
from engine.generation.events import Finished, GenerationEvent, GenerationParams, TextDelta
from engine.generation.loader import build_generator
from engine.generation.sampling import SamplingParams
from engine.generation.scheduler import GenerationScheduler
from engine.model_files import find_model_files
from engine.placement import Placement
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage

ROOT = (Path(__file__).resolve().parents[1] / "fixtures" / "models").resolve()
GREEDY = GenerationParams(SamplingParams(temperature=0.0), max_tokens=16)


def build(directory: Path, root: Path = ROOT, **values: str) -> GenerationScheduler:
    profile = parse_profile({"model_path": directory.name, "intra_op_threads": "1", **values}, "llm", roots=(root,))
    scheduler, _ = build_generator(
        profile, find_model_files(profile.model_dir), Placement(None, 1, False), lambda: None
    )
    return scheduler


def submit(scheduler: GenerationScheduler, text: str, log: list[tuple[int, GenerationEvent]], index: int):
    channel: Channel[GenerationEvent] = Channel()
    original_put = channel.put

    def put(item: GenerationEvent) -> None:  # record the order in which the worker produced items
        log.append((index, item))
        original_put(item)

    channel.put = put  # type: ignore[method-assign]
    return scheduler.submit([ChatMessage("user", text)], [], GREEDY, channel)


def run_until_idle(scheduler: GenerationScheduler, limit: int = 10_000) -> int:
    steps = 0
    while scheduler.step() is not None:
        steps += 1
        assert steps < limit
    return steps


def test_active_sequences_take_turns_and_extra_requests_wait() -> None:
    scheduler = build(ROOT / "tiny-qwen2-decoder", max_concurrent_sequences="2")
    log: list[tuple[int, GenerationEvent]] = []
    for index, text in enumerate(["Hello! What can you do?", "Tell me about rivers.", "A third request."]):
        submit(scheduler, text, log, index)
    scheduler.step()
    assert scheduler.active_sequences == 2  # the third waits for a free slot
    run_until_idle(scheduler)
    finished = [index for index, item in log if isinstance(item, Finished)]
    assert sorted(finished) == [0, 1, 2]
    first_done = next(position for position, (_, item) in enumerate(log) if isinstance(item, Finished))
    before = {index for index, item in log[:first_done] if isinstance(item, TextDelta)}
    # Both admitted sequences produced text before either finished: interleaved, not run one after the other.
    assert before == {0, 1}


def test_a_cancelled_request_is_dropped_at_the_next_step() -> None:
    scheduler = build(ROOT / "tiny-qwen2-decoder")
    log: list[tuple[int, GenerationEvent]] = []
    request = submit(scheduler, "Hello! What can you do?", log, 0)
    for _ in range(3):
        scheduler.step()
    assert scheduler.active_sequences == 1
    request.cancel()
    assert scheduler.step() is None
    assert scheduler.active_sequences == 0


def test_close_fails_waiting_and_active_requests() -> None:
    scheduler = build(ROOT / "tiny-qwen2-decoder", max_concurrent_sequences="1")
    channels = []
    for text in ("one", "two"):
        channel: Channel[GenerationEvent] = Channel()
        scheduler.submit([ChatMessage("user", text)], [], GREEDY, channel)
        channels.append(channel)
    scheduler.step()
    scheduler.close(RuntimeError("unloaded"))
    for channel in channels:
        with pytest.raises(RuntimeError, match="unloaded"):
            list(channel)


@pytest.mark.parametrize(
    ("model", "config", "key", "value", "message"),
    [
        ("tiny-qwen2-decoder", "config.json", "num_key_value_heads", 4, "num_key_value_heads 4"),
        ("tiny-qwen2-decoder", "config.json", "num_hidden_layers", 3, "3 layers"),
        ("tiny-qwen2-decoder-genai", "genai_config.json", "num_key_value_heads", 1, "num_key_value_heads 1"),
    ],
)
def test_kv_shapes_in_the_config_are_checked_against_the_graph(
    tmp_path: Path, model: str, config: str, key: str, value: int, message: str
) -> None:
    source = ROOT / model
    if not source.is_dir():
        pytest.skip(f"{model} fixture missing")
    target = tmp_path / model
    shutil.copytree(source, target)
    data = json.loads((target / config).read_text())
    (data["model"]["decoder"] if config == "genai_config.json" else data)[key] = value
    (target / config).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=message):
        build(target, root=tmp_path.resolve())


def test_chat_mode_without_a_template_is_a_load_error_naming_mode(tmp_path: Path) -> None:
    target = tmp_path / "base"
    shutil.copytree(ROOT / "tiny-qwen2-decoder", target)
    (target / "chat_template.jinja").unlink()
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="^mode: .*completion"):
        build(target, root=tmp_path.resolve())
    scheduler = build(target, root=tmp_path.resolve(), mode="completion")
    assert scheduler.prompts.mode == "completion"


def reference_messages(case: dict) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"]) for m in case["messages"]]


def test_genai_batched_decode_reproduces_each_sequence_exactly() -> None:
    """Sequences decode together in one run per token (shared KV slots), while another one is still being
    prefilled in chunks and while finished sequences leave holes that new ones fill: every output must still
    equal the single-sequence reference."""
    directory = ROOT / "tiny-qwen2-decoder-genai"
    if not directory.is_dir():
        pytest.skip("genai fixture missing")
    expected = json.loads((ROOT / "tiny-qwen2-decoder" / "expected_greedy.json").read_text(encoding="utf-8"))
    cases = {case["name"]: case for case in expected["cases"] if not case.get("tools")}
    scheduler = build(directory, max_concurrent_sequences="3")
    order = ["stops_at_eos", "user_only", "system_user", "unicode_emoji", "user_only", "stops_at_eos"]
    channels = []
    for name in order:
        channel: Channel[GenerationEvent] = Channel()
        params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=32)
        scheduler.submit(reference_messages(cases[name]), [], params, channel)
        channels.append(channel)
    run_until_idle(scheduler)
    assert scheduler.batched_steps > 0
    for name, channel in zip(order, channels):
        finished = list(channel)[-1]
        assert isinstance(finished, Finished)
        assert list(finished.output_ids) == cases[name]["output_ids"], name


def test_genai_batched_decode_alongside_a_chunked_prefill(monkeypatch) -> None:
    from engine.generation import scheduler as scheduler_module

    directory = ROOT / "tiny-qwen2-decoder-genai"
    if not directory.is_dir():
        pytest.skip("genai fixture missing")
    monkeypatch.setattr(scheduler_module, "PREFILL_CHUNK", 16)  # many chunks: decodes run between them
    expected = json.loads((ROOT / "tiny-qwen2-decoder" / "expected_greedy.json").read_text(encoding="utf-8"))
    cases = {case["name"]: case for case in expected["cases"] if not case.get("tools")}
    scheduler = build(directory, max_concurrent_sequences="4")
    order = ["user_only", "system_user", "unicode_emoji", "stops_at_eos"]
    channels = []
    for name in order:
        channel: Channel[GenerationEvent] = Channel()
        scheduler.submit(
            reference_messages(cases[name]),
            [],
            GenerationParams(SamplingParams(temperature=0.0), max_tokens=32),
            channel,
        )
        channels.append(channel)
    run_until_idle(scheduler)
    assert scheduler.batched_steps > 0
    for name, channel in zip(order, channels):
        assert list(list(channel)[-1].output_ids) == cases[name]["output_ids"], name


def test_every_concurrent_sequence_gets_a_batch_slot() -> None:
    directory = ROOT / "tiny-qwen2-decoder-genai"
    if not directory.is_dir():
        pytest.skip("genai fixture missing")
    runner = build(directory, max_concurrent_sequences="3").runner
    caches = [runner.new_cache(64) for _ in range(3)]
    assert sorted(cache.slot for cache in caches) == [0, 1, 2]  # the load-time probe gave its slot back
    runner.release(caches[1])
    assert runner.new_cache(64).slot == 1
    assert runner.new_cache(4096).slot is None  # longer than a slot (context 512 caps it): own buffers


def test_finished_requests_are_counted_in_the_model_statistics() -> None:
    from engine.api import Engine
    from engine.generation.events import GenerationParams
    from engine.generation.sampling import SamplingParams
    from engine.metrics import format_snapshot
    from engine.settings.profile import parse_profile
    from engine.text.messages import ChatMessage
    from tests.conftest import ROOTS, settings

    engine = Engine()
    try:
        profile = parse_profile(settings("tiny-qwen2-decoder"), "llm", roots=ROOTS)
        params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=5)
        for _ in range(2):
            list(engine.generate(profile, [ChatMessage("user", "hello")], params))
        (snapshot,) = engine.stats().values()
        generation = snapshot["generation"]
        assert generation["ttft_ms"]["count"] == 2 and generation["completion_tokens"]["max"] <= 5
        assert "requests=2" in format_snapshot("tiny", snapshot)
    finally:
        engine.close()


def test_waiting_requests_are_bounded_busy_error_at_once() -> None:
    scheduler = build(ROOT / "tiny-qwen2-decoder", max_concurrent_sequences="1")
    log: list[tuple[int, GenerationEvent]] = []
    for index in range(8):  # 8 waiting per sequence slot
        submit(scheduler, f"question {index}", log, index)
    with pytest.raises(ModelBusyError, match="8 requests are waiting"):
        submit(scheduler, "one too many", log, 99)
    scheduler.step()  # one starts: room for one more
    submit(scheduler, "now accepted", log, 100)
    run_until_idle(scheduler)
    finished = [index for index, event in log if isinstance(event, Finished)]
    assert sorted(finished) == [*range(8), 100]


def test_the_deadline_counts_from_submission_and_waiting_requests_expire() -> None:
    scheduler = build(ROOT / "tiny-qwen2-decoder", max_concurrent_sequences="1", max_generation_seconds="0.3")
    channels = []
    for text in ("first", "second"):
        channel: Channel[GenerationEvent] = Channel()
        params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=400)
        scheduler.submit([ChatMessage("user", text)], [], params, channel)
        channels.append(channel)
    scheduler.step()  # the first starts (one prompt chunk); the second waits for the only slot
    time.sleep(0.35)  # past both deadlines, counted from submission
    run_until_idle(scheduler)
    first_events = list(channels[0])
    assert isinstance(first_events[-1], Finished) and first_events[-1].finish_reason == "length"
    assert first_events[-1].completion_tokens <= 2
    with pytest.raises(ModelBusyError, match="waited \\d+s for a free sequence"):
        list(channels[1])
