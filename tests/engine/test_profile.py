"""Runtime-profile parsing: every bad setting is refused with a message that names the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import SettingError
from engine.paths import MODEL_ROOTS_ENV, model_roots, resolve_model_dir
from engine.settings.profile import instance_settings, parse_core_list, parse_profile
from engine.settings.table import CALL, SETTINGS, Setting


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "models" / "m1").mkdir(parents=True)
    return tmp_path / "models"


def parse(root: Path, model_type: str = "text-embedding", **values: str):
    return parse_profile({"model_path": "m1", **values}, model_type, roots=(root.resolve(),))


def test_defaults_are_valid_and_hashable(root: Path) -> None:
    profile = parse(root)
    assert profile.session.intra_op_threads is None
    assert profile.placement.mode == "auto"
    assert profile.embedding is not None and profile.embedding.pooling == "auto" and profile.embedding.normalize
    assert profile.model_dir == (root / "m1").resolve()
    assert hash(profile) == hash(parse(root))
    assert profile != parse(root, intra_op_threads="2")


def test_values_arrive_as_strings(root: Path) -> None:
    profile = parse(
        root,
        intra_op_threads="2",
        inter_op_threads="1",
        execution_mode="Parallel",
        spin_wait="off",
        cpu_affinity="0-1",
        normalize="false",
        pooling="cls",
        context_size="128",
        batch_window_ms="0",
        max_batch_size="1",
    )
    assert profile.session.intra_op_threads == 2
    assert profile.session.execution_mode == "parallel"
    assert profile.placement.cores == (0, 1)
    assert profile.embedding is not None and not profile.embedding.normalize
    assert profile.context_size == 128
    assert profile.batching.max_batch_size == 1 and profile.batching.batch_window_ms == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("intra_op_threads", "0"),
        ("intra_op_threads", "many"),
        ("intra_op_threads", "100000"),
        ("inter_op_threads", "-1"),
        ("execution_mode", "turbo"),
        ("graph_optimization_level", "max"),
        ("spin_wait", "sometimes"),
        ("cpu_affinity", "0-x"),
        ("cpu_affinity", "3-1"),
        ("cpu_affinity", "1,,2"),
        ("blas_threads", "0"),
        ("context_size", "-5"),
        ("pooling", "median"),
        ("normalize", "perhaps"),
        ("max_batch_size", "0"),
        ("batch_window_ms", "fast"),
        ("queue_limit", "-1"),
        ("quantization", "int3"),
        ("quant_block_size", "48"),
        ("idle_unload_minutes", "-1"),
    ],
)
def test_bad_value_names_field_and_allowed(root: Path, field: str, value: str) -> None:
    with pytest.raises(SettingError) as caught:
        parse(root, **{field: value})
    message = str(caught.value)
    assert message.startswith(f"{field}:"), message
    assert repr(value) in message and "allowed" in message


def test_threads_more_than_listed_cores(root: Path) -> None:
    with pytest.raises(SettingError, match="^intra_op_threads:.*at most the 1 core"):
        parse(root, intra_op_threads="2", cpu_affinity="0")


def test_rerank_score_mode(root: Path) -> None:
    assert parse(root, "rerank", score_mode="logit").rerank.score_mode == "logit"  # type: ignore[union-attr]
    with pytest.raises(SettingError, match="^score_mode:"):
        parse(root, "rerank", score_mode="odds")


def test_rerank_instruction_is_per_call_and_empty_by_default(root: Path) -> None:
    assert parse(root, "rerank").rerank.instruction == ""  # type: ignore[union-attr]
    custom = parse(root, "rerank", rerank_instruction="  Find code that answers the question ")
    assert custom.rerank.instruction == "Find code that answers the question"  # type: ignore[union-attr]
    assert instance_settings(custom) == instance_settings(parse(root, "rerank"))  # no second loaded instance


def test_core_list_syntax() -> None:
    assert parse_core_list("cpu_affinity", "0-3,8") == (0, 1, 2, 3, 8)
    assert parse_core_list("cpu_affinity", " 2 , 0 ") == (0, 2)


class TestModelPath:
    def test_relative_to_a_root(self, root: Path) -> None:
        assert resolve_model_dir("m1", (root.resolve(),)) == (root / "m1").resolve()

    def test_absolute_inside(self, root: Path) -> None:
        assert resolve_model_dir(str(root / "m1"), (root.resolve(),)) == (root / "m1").resolve()

    @pytest.mark.parametrize("value", ["", "  "])
    def test_empty(self, root: Path, value: str) -> None:
        with pytest.raises(SettingError, match="^model_path:"):
            resolve_model_dir(value, (root.resolve(),))

    def test_missing_directory(self, root: Path) -> None:
        with pytest.raises(SettingError, match="^model_path:.*does not exist"):
            resolve_model_dir("nope", (root.resolve(),))

    def test_outside_absolute(self, root: Path) -> None:
        with pytest.raises(SettingError, match="^model_path:.*allowed model roots"):
            resolve_model_dir("/etc", (root.resolve(),))

    def test_outside_through_dotdot(self, root: Path) -> None:
        (root.parent / "secret").mkdir()
        with pytest.raises(SettingError, match="^model_path:.*allowed model roots"):
            resolve_model_dir("../secret", (root.resolve(),))

    def test_outside_through_symlink(self, root: Path) -> None:
        (root.parent / "elsewhere").mkdir()
        os.symlink(root.parent / "elsewhere", root / "link")
        with pytest.raises(SettingError, match="^model_path:.*allowed model roots"):
            resolve_model_dir("link", (root.resolve(),))

    def test_a_file_is_not_a_directory(self, root: Path) -> None:
        (root / "file.onnx").write_bytes(b"x")
        with pytest.raises(SettingError, match="^model_path:.*a directory"):
            resolve_model_dir("file.onnx", (root.resolve(),))

    def test_roots_from_environment(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(MODEL_ROOTS_ENV, f"{root}{os.pathsep}/nonexistent-root")
        assert model_roots()[0] == root.resolve()


def other_value(setting: Setting) -> str:
    """A valid value different from the setting's default."""
    if setting.options:
        return next(option for option in setting.options if option != setting.default)
    if setting.kind == "cores":
        return "0"
    if setting.kind == "text":
        return "other.onnx" if setting.name == "model_file" else "x: "
    low = int(setting.low or 0) if setting.kind == "integer" else setting.low
    value = 16 if setting.power_of_two else low
    return str(value if str(value) != setting.default else (setting.high if setting.kind == "number" else 2))


@pytest.mark.parametrize("model_type", ["text-embedding", "rerank", "llm"])
def test_instance_key_ignores_exactly_the_per_call_settings(root: Path, model_type: str) -> None:
    base = instance_settings(parse(root, model_type))
    for setting in SETTINGS:
        if setting.name == "model_path" or not setting.applies_to(model_type):
            continue
        changed = instance_settings(parse(root, model_type, **{setting.name: other_value(setting)}))
        if setting.scope == CALL:
            assert changed == base, f"{setting.name} is per call but changes the loaded instance"
        else:
            assert changed != base, f"{setting.name} needs a new instance but does not change the key"
