"""Model download (`python -m engine pull`, `hf:` model paths) against a local stand-in for the Hub
(tests/engine/fake_hub.py): only the chosen variant's files, resume after an interrupted transfer, offline mode,
tokens, and the engine's own `auto` choice."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from engine.api import Engine
from engine.errors import SettingError
from engine.hub import STATE_DIR, RepoFile, Selection, choose_graph, is_metadata
from engine.model_files import find_model_files
from engine.settings.profile import parse_profile
from tests.conftest import FIXTURES, REPO
from tests.engine.fake_hub import FakeHub

REPO_ID = "Xenova/tiny-embedder"
EMBEDDER = FIXTURES / "tiny-bert-embedder"
DATA_BYTES = 24 * 2**20  # over huggingface_hub's 10 MiB download chunk, so an interrupted transfer keeps a chunk
CHUNK = 10 * 2**20
METADATA = {
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
}


def _external(model: onnx.ModelProto, path: Path, location: str, pad_to: int = 0) -> None:
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    data = path.parent / location
    if pad_to > data.stat().st_size:  # trailing bytes no tensor refers to: a larger file, same model
        with open(data, "ab") as handle:
            handle.write(b"\0" * (pad_to - data.stat().st_size))


def make_repository(folder: Path) -> Path:
    """A transformers.js-style repository: configs at the root, eight ONNX variants under onnx/, external data
    for two of them (one named after the graph, one not), files no variant needs (README, vocab.txt)."""
    for path in EMBEDDER.rglob("*"):
        if path.is_file() and path.suffix != ".onnx":
            target = folder / path.relative_to(EMBEDDER)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    (folder / "README.md").write_text("# tiny embedder\n")
    (folder / ".gitattributes").write_text("*.onnx filter=lfs\n")
    onnx_dir = folder / "onnx"
    onnx_dir.mkdir()
    model = onnx.load(str(EMBEDDER / "model.onnx"))
    for name in ("model_q4", "model_int8", "model_uint8", "model_quantized", "model_q4f16", "model_bnb4"):
        model.doc_string = name  # distinct bytes per variant
        onnx.save_model(model, str(onnx_dir / f"{name}.onnx"))
    model.doc_string = "fp32"
    _external(onnx.load(str(EMBEDDER / "model.onnx")), onnx_dir / "model.onnx", "model.onnx_data", DATA_BYTES)
    _external(onnx.load(str(EMBEDDER / "model.onnx")), onnx_dir / "model_fp16.onnx", "fp16.weights")
    return folder


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("hub") / "tiny-embedder")


@pytest.fixture()
def hub(repository: Path) -> Iterator[FakeHub]:
    server = FakeHub().start()
    server.add(REPO_ID, repository)
    yield server
    server.stop()


def run_pull(hub: FakeHub, root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ONNX_LOCAL_"))},
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root.parent / "hf-home"),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ONNX_LOCAL_MODEL_ROOTS": str(root),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "engine", "pull", REPO_ID, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pull_downloads_only_the_chosen_variant(hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "models"
    done = run_pull(hub, root)
    assert done.returncode == 0, done.stderr
    target = root / "tiny-embedder"
    assert hub.downloads() == METADATA | {"onnx/model_q4.onnx"}  # auto: the engine's CPU preference
    assert "model_path for the 'add model' form: tiny-embedder" in done.stdout
    assert "onnx/model_q4.onnx" in done.stdout and "(q4)" in done.stdout
    assert "downloading 8 file(s)" in done.stderr  # progress goes to stderr
    assert not (target / "README.md").exists() and not (target / "vocab.txt").exists()
    # the token from the environment reached every request to the Hub
    assert {r.authorization for r in hub.requests} == {"Bearer hf_test_token"}
    assert [r.path for r in hub.requests if r.path.startswith("/api/")] == [f"/api/models/{REPO_ID}"]
    # what was pulled is what the engine's auto choice loads
    assert find_model_files(target.resolve()).onnx_path == (target / "onnx/model_q4.onnx").resolve()
    embedded = subprocess.run(
        [sys.executable, "-m", "engine", "embed", str(target), "hello", "--intra_op_threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert embedded.returncode == 0, embedded.stderr
    assert "dimension  64" in embedded.stdout

    # again: nothing new comes over the wire
    hub.served.clear()
    again = run_pull(hub, root)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and hub.downloads() == set()

    # another variant: only its graph and data; the previous graph goes
    fp32 = run_pull(hub, root, "--variant", "fp32")
    assert fp32.returncode == 0, fp32.stderr
    assert hub.downloads() == {"onnx/model.onnx", "onnx/model.onnx_data"}
    assert not (target / "onnx/model_q4.onnx").exists()
    assert "removed onnx/model_q4.onnx" in fp32.stdout
    assert sorted(p.name for p in (target / "onnx").iterdir()) == ["model.onnx", "model.onnx_data"]

    hub.served.clear()
    int8 = run_pull(hub, root, "--variant", "int8")
    assert int8.returncode == 0, int8.stderr
    assert hub.downloads() == {"onnx/model_int8.onnx"}  # int8 before uint8 and quantized, as model_files ranks

    hub.served.clear()
    fp16 = run_pull(hub, root, "--variant", "fp16", "--json")
    assert fp16.returncode == 0, fp16.stderr
    assert hub.downloads() == {"onnx/model_fp16.onnx", "onnx/fp16.weights"}  # data named by the graph itself
    assert not (target / STATE_DIR / "partial").exists()


def test_interrupted_transfer_resumes_on_the_next_pull(hub: FakeHub, repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = "onnx/model.onnx_data"
    hub.drop_once[data] = 15 * 2**20  # the connection closes after 15 MiB, and the retry fails
    first = run_pull(hub, root, "--variant", "fp32")
    assert first.returncode == 1
    assert "the next pull resumes there" in first.stderr, first.stderr
    target = root / "tiny-embedder"
    assert not (target / "onnx").exists()  # nothing half-done shows in the model directory
    partials = list((target / STATE_DIR / "partial").rglob("*.part"))
    assert len(partials) == 1 and partials[0].stat().st_size == CHUNK  # whole chunks reached the disk

    sent_before = hub.served[data]
    second = run_pull(hub, root, "--variant", "fp32")
    assert second.returncode == 0, second.stderr
    ranges = [r.range for r in hub.requests if r.path.endswith(data) and r.range]
    assert ranges[-1] == f"bytes={CHUNK}-"  # asked for the rest, not the whole file
    assert hub.served[data] - sent_before == DATA_BYTES - CHUNK
    assert "kept from an interrupted pull" in second.stdout
    expected = hashlib.sha256((repository / data).read_bytes()).hexdigest()
    assert hashlib.sha256((target / data).read_bytes()).hexdigest() == expected
    assert not list((target / STATE_DIR).rglob("*.part"))


def test_offline_mode_uses_what_is_there_and_downloads_nothing(hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert run_pull(hub, root).returncode == 0
    count = len(hub.requests)
    offline = run_pull(hub, root, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert "offline" in offline.stdout and len(hub.requests) == count
    elsewhere = run_pull(hub, tmp_path / "empty", HF_HUB_OFFLINE="1")
    assert elsewhere.returncode == 1 and "HF_HUB_OFFLINE" in elsewhere.stderr
    assert len(hub.requests) == count


def test_pull_refuses_a_directory_it_did_not_create_and_unknown_repositories(hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "tiny-embedder").mkdir(parents=True)
    (root / "tiny-embedder" / "mine.txt").write_text("someone's file")
    refused = run_pull(hub, root)
    assert refused.returncode == 1 and "pull did not download" in refused.stderr
    assert (root / "tiny-embedder" / "mine.txt").read_text() == "someone's file"
    missing = subprocess.run(
        [sys.executable, "-m", "engine", "pull", "nobody/nothing", "--into", str(tmp_path / "other")],
        cwd=REPO,
        env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "no such model repository" in missing.stderr


def test_hf_model_path_downloads_on_first_load_with_progress_in_the_log(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = (tmp_path / "models").resolve()
    monkeypatch.setenv("ONNX_LOCAL_ALLOW_HF_PULL", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    values = {"model_path": f"hf:{REPO_ID}", "intra_op_threads": "1", "cpu_affinity": "none"}
    profile = parse_profile(values, "text-embedding", roots=(root,))
    assert profile.model_dir == root / "tiny-embedder" and profile.hub is not None
    caplog.set_level(logging.INFO, logger="engine")
    engine = Engine()
    try:
        assert len(engine.embed(profile, ["hello world"]).vectors[0]) == 64
        assert engine.embed(profile, ["hello again"]).tokens > 0  # the same loaded instance serves on
        assert len(engine.registry.loaded()) == 1
    finally:
        engine.close()
    assert hub.downloads() == METADATA | {"onnx/model_q4.onnx"}
    log = "\n".join(record.getMessage() for record in caplog.records)
    assert f"model_path hf:{REPO_ID}: downloading into {root / 'tiny-embedder'}" in log
    assert "onnx/model_q4.onnx at c0ffeec0ffee ready in" in log and "downloading 8 file(s), 0.7 MB" in log

    # a later load (another process, a restart) uses the complete directory without the network
    count = len(hub.requests)
    engine = Engine()
    try:
        engine.embed(profile, ["hello"])
    finally:
        engine.close()
    assert len(hub.requests) == count


def test_hf_model_path_needs_the_administrators_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ONNX_LOCAL_ALLOW_HF_PULL", raising=False)
    with pytest.raises(SettingError) as refused:
        parse_profile({"model_path": f"hf:{REPO_ID}"}, "text-embedding", roots=(tmp_path,))
    assert refused.value.field == "model_path"
    assert "ONNX_LOCAL_ALLOW_HF_PULL" in str(refused.value)
    monkeypatch.setenv("ONNX_LOCAL_ALLOW_HF_PULL", "1")
    for bad in ("hf:no-slash", "hf:a/b/c", "hf:../x", "hf:owner/name@", "hf:owner/na..me"):
        with pytest.raises(SettingError, match="model_path"):
            parse_profile({"model_path": bad}, "text-embedding", roots=(tmp_path,))
    profile = parse_profile({"model_path": "hf:owner/name@v1.0"}, "text-embedding", roots=(tmp_path,))
    assert profile.hub is not None and (profile.hub.repo_id, profile.hub.revision) == ("owner/name", "v1.0")


# ---- the choice, without a server

TRANSFORMERS_JS = [
    "onnx/model.onnx",
    "onnx/model.onnx_data",
    "onnx/model_bnb4.onnx",
    "onnx/model_fp16.onnx",
    "onnx/model_fp16.onnx_data",
    "onnx/model_int8.onnx",
    "onnx/model_q4.onnx",
    "onnx/model_q4.onnx_data",
    "onnx/model_q4f16.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_uint8.onnx",
    "config.json",
    "tokenizer.json",
    "README.md",
]


def listing(names: list[str]) -> list[RepoFile]:
    return [RepoFile(name, 1, remote_path=name) for name in names]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("auto", "onnx/model_q4.onnx"),
        ("q4", "onnx/model_q4.onnx"),
        ("int8", "onnx/model_int8.onnx"),
        ("fp32", "onnx/model.onnx"),
        ("fp16", "onnx/model_fp16.onnx"),
    ],
)
def test_variant_choice(variant: str, expected: str) -> None:
    assert choose_graph(listing(TRANSFORMERS_JS), Selection(variant)).path == expected


def test_choice_details() -> None:
    files = listing(TRANSFORMERS_JS)
    assert choose_graph(files, Selection("auto", "model_quantized.onnx")).path == "onnx/model_quantized.onnx"
    merged = listing(["onnx/decoder_model.onnx", "onnx/decoder_model_merged.onnx", "onnx/decoder_with_past_model.onnx"])
    assert choose_graph(merged, Selection()).path == "onnx/decoder_model_merged.onnx"
    genai = listing(["genai_config.json", "model.onnx", "model.onnx.data", "model_int4.onnx"])
    assert choose_graph(genai, Selection(), genai_filename="model.onnx").path == "model.onnx"
    with pytest.raises(Exception, match="no int8 variant.*model.onnx \\(fp32\\)"):
        choose_graph(listing(["onnx/model.onnx", "onnx/model_fp16.onnx"]), Selection("int8"))
    with pytest.raises(Exception, match="--subfolder"):
        choose_graph(listing(["cpu/int4/model.onnx", "cpu/int4/genai_config.json"]), Selection())
    assert [f for f in TRANSFORMERS_JS if is_metadata(f)] == ["config.json", "tokenizer.json"]
    assert is_metadata("1_Pooling/config.json") and is_metadata("chat_template.jinja")
    assert not is_metadata("model.safetensors.index.json") and not is_metadata("onnx/config.json")


def test_auto_choice_matches_the_engines(tmp_path: Path) -> None:
    """With every variant on disk, model_files' `auto` loads the file that pull's `auto` downloads."""
    names = [n for n in TRANSFORMERS_JS if n.endswith(".onnx")]
    model = onnx.load(str(EMBEDDER / "model.onnx"))
    (tmp_path / "onnx").mkdir()
    for name in names:
        onnx.save_model(model, str(tmp_path / name))
    for keep in (names, [n for n in names if "q4" not in n and "bnb4" not in n], ["onnx/model.onnx"]):
        for path in (tmp_path / "onnx").iterdir():
            if f"onnx/{path.name}" not in keep:
                path.unlink()
        chosen = find_model_files(tmp_path.resolve()).onnx_path.relative_to(tmp_path.resolve()).as_posix()
        assert chosen == choose_graph(listing(keep), Selection()).path
