"""scripts/package.py builds a .difypkg like `dify plugin package`, and the package installs and runs like the daemon
installs and runs it: unzipped into an empty directory, `uv venv .venv --python 3.12`, `uv pip install -r
requirements.txt`, `python -m main`, one protocol exchange.

The install test needs PyPI (or a warm uv cache / PIP index). Offline, set ONNX_LOCAL_SKIP_INSTALL_TEST=1 to skip it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pathspec
import pytest

from tests.plugin.daemon import PluginProcess, model_request, streams

REPO = Path(__file__).resolve().parents[2]
PACKAGE_SCRIPT = REPO / "scripts" / "package.py"
FIXTURE_EMBEDDER = REPO / "tests" / "fixtures" / "models" / "tiny-bert-embedder"
SKIP_INSTALL_ENV = "ONNX_LOCAL_SKIP_INSTALL_TEST"
# Present in the repository, never in the package.
EXCLUDED_PREFIXES = (
    "tests/",
    "bench/",
    "tools/",
    "reference/",
    "scripts/",
    "docs/",
    "dist/",
    ".venv",
    ".git/",
    ".models/",
    ".cache/",
)
EXCLUDED_SUFFIXES = (".pyc", ".onnx", ".onnx.data", ".safetensors", ".gguf", ".difypkg")
EXCLUDED_NAMES = ("Makefile", "pytest.ini", "ruff.toml", "requirements-dev.txt", ".env", ".gitignore")
REQUIRED = (
    "manifest.yaml",
    "main.py",
    "requirements.txt",
    "provider/onnx_local.yaml",
    "provider/onnx_local.py",
    "models/llm/llm.py",
    "models/text_embedding/text_embedding.py",
    "models/rerank/rerank.py",
    "_assets/icon.svg",
    "_assets/icon-dark.svg",
    "PRIVACY.md",
    "engine/api.py",
)


def run_packager(*args: str, root: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGE_SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("dist") / "onnx_local-0.1.0.difypkg"
    result = run_packager("--output", str(output))
    assert result.returncode == 0, result.stderr
    assert str(output) in result.stdout and "onnxlocal/onnx_local:0.1.0@" in result.stdout
    return output


# ---- package contents ----------------------------------------------------------------------------------------------


def test_zip_format_matches_the_go_packager(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        infos = archive.infolist()
        assert archive.comment == b""  # unsigned
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert all(not name.endswith("/") for name in names)  # no directory entries
    assert all("\\" not in name and not name.startswith("/") for name in names)
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos)
    assert len(set(names)) == len(names)


def test_package_has_what_the_plugin_needs(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert set(REQUIRED) <= names, sorted(set(REQUIRED) - names)
    assert any(name.startswith("engine/generation/") for name in names)


def test_difyignore_is_honoured(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    leaked = [
        name
        for name in names
        if name.startswith(EXCLUDED_PREFIXES)
        or name.endswith(EXCLUDED_SUFFIXES)
        or Path(name).name in EXCLUDED_NAMES
        or "__pycache__/" in name
    ]
    assert leaked == []
    lines = (REPO / ".difyignore").read_text(encoding="utf-8").splitlines()
    spec = pathspec.GitIgnoreSpec.from_lines(line.strip() for line in lines if line.strip() and line[0] != "#")
    assert [name for name in names if spec.match_file(name)] == []


def test_every_source_file_is_packaged(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    for tree in ("engine", "models", "provider", "_assets"):
        on_disk = {
            path.relative_to(REPO).as_posix()
            for path in (REPO / tree).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }
        assert on_disk - names == set(), tree


def test_checksum_and_size_like_the_daemon(package: Path) -> None:
    """The daemon identifies a package by sha256(concat(sha256(path) + sha256(content)) sorted by path)."""
    with zipfile.ZipFile(package) as archive:
        digest = hashlib.sha256()
        for name in sorted(archive.namelist()):
            digest.update(hashlib.sha256(name.encode()).digest())
            digest.update(hashlib.sha256(archive.read(name)).digest())
        total = sum(info.file_size for info in archive.infolist())
    result = run_packager("--output", str(package.with_name("again.difypkg")))
    assert f"@{digest.hexdigest()}" in result.stdout
    assert total < 2 * 1024 * 1024  # no weights: far below the API's 15 MiB default limit


def test_build_is_reproducible(package: Path) -> None:
    again = package.with_name("reproduced.difypkg")
    assert run_packager("--output", str(again)).returncode == 0
    assert again.read_bytes() == package.read_bytes()


def test_oversize_package_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "big.difypkg"
    result = run_packager("--output", str(output), "--max-size", "0.01")
    assert result.returncode == 1
    assert "too large" in result.stderr and "1. " in result.stderr  # lists the largest files
    assert not output.exists() and not list(tmp_path.iterdir())


# ---- packager behaviour on a scratch plugin ------------------------------------------------------------------------


def scratch_plugin(tmp_path: Path) -> Path:
    """A copy of the files the plugin declaration needs, to break on purpose."""
    root = tmp_path / "plugin"
    for rel in (*REQUIRED, "_assets/icon-large.svg", "_assets/icon-large-dark.svg"):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return root


def test_invalid_manifest_is_refused(tmp_path: Path) -> None:
    root = scratch_plugin(tmp_path)
    manifest = root / "manifest.yaml"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace("author: onnxlocal", "author: OnnxLocal"))
    result = run_packager("--output", str(tmp_path / "x.difypkg"), root=root)
    assert result.returncode == 1 and "author" in result.stderr
    assert not (tmp_path / "x.difypkg").exists()


def test_ignoring_a_needed_file_is_refused(tmp_path: Path) -> None:
    root = scratch_plugin(tmp_path)
    (root / ".difyignore").write_text("models/\n")
    result = run_packager("--output", str(tmp_path / "x.difypkg"), root=root)
    assert result.returncode == 1 and "models/llm/llm.py" in result.stderr


def test_gitignore_fallback_and_negation(tmp_path: Path) -> None:
    """Without .difyignore the packager reads .gitignore; negated patterns have no effect (as in the daemon)."""
    root = scratch_plugin(tmp_path)
    (root / "junk").mkdir()
    (root / "junk" / "keep.txt").write_text("x")
    (root / "notes.log").write_text("x")
    (root / ".gitignore").write_text("junk/\n*.log\n!notes.log\n")
    output = tmp_path / "x.difypkg"
    result = run_packager("--output", str(output), root=root)
    assert result.returncode == 0, result.stderr
    assert "negated patterns" in result.stderr
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
    assert ".gitignore" in names
    assert not [name for name in names if name.startswith("junk/") or name.endswith(".log")]


# ---- install and run it as the daemon does -------------------------------------------------------------------------


def python312() -> str:
    """A real (non-venv) Python 3.12 interpreter for `uv venv --python`, like the daemon's `--python 3.12`."""
    if os.environ.get("PYTHON312"):
        return os.environ["PYTHON312"]
    if sys.version_info[:2] == (3, 12):
        base = Path(sys.base_prefix) / "bin" / "python3.12"
        if base.exists():
            return str(base)
    found = subprocess.run(
        ["bash", str(REPO / "scripts" / "find_python312.sh")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(f"no Python 3.12 interpreter: {found.stderr}")
    return found.stdout.strip()


def uv_binary() -> str:
    try:
        from uv import find_uv_bin  # the daemon finds uv the same way (uv._find_uv.find_uv_bin)
    except ImportError:
        pytest.fail("uv is a dev dependency: pip install -r requirements-dev.txt")
    return find_uv_bin()


def run_uv(args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(cwd / ".venv"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    result = subprocess.run([uv_binary(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(
            f"`uv {' '.join(args)}` failed (exit {result.returncode}); offline? set {SKIP_INSTALL_ENV}=1 to skip.\n"
            f"{result.stderr[-3000:]}"
        )


@pytest.mark.skipif(bool(os.environ.get(SKIP_INSTALL_ENV)), reason=f"{SKIP_INSTALL_ENV} is set")
def test_installed_package_answers_the_daemon(package: Path, tmp_path: Path) -> None:
    plugin_dir = tmp_path / "cwd" / "onnxlocal" / "onnx_local-0.1.0"
    plugin_dir.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(plugin_dir)
    run_uv(["venv", ".venv", "--python", python312()], plugin_dir)
    run_uv(["pip", "install", "-r", "requirements.txt"], plugin_dir)

    model_root = tmp_path / "models"
    shutil.copytree(FIXTURE_EMBEDDER, model_root / "tiny-bert-embedder")
    process = PluginProcess(
        plugin_dir / ".venv" / "bin" / "python",
        plugin_dir,
        env={"ONNX_LOCAL_MODEL_ROOTS": str(model_root), "ONNX_LOCAL_CACHE_DIR": str(tmp_path / "cache")},
    )
    manifest = process.start()
    try:
        assert (manifest["name"], manifest["version"], manifest["author"]) == ("onnx_local", "0.1.0", "onnxlocal")
        credentials = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}
        records = process.request(
            model_request("get_ai_model_schemas", "text-embedding", "tiny", credentials), timeout=60
        )
        (payload,) = streams(records)
        schema = payload["model_schema"]
        assert schema["model"] == "tiny" and schema["model_type"] == "text-embedding"
        assert schema["fetch_from"] == "customizable-model"
        assert isinstance(schema["model_properties"]["context_size"], int)

        assert_answers_an_embedding(process, credentials)
    finally:
        process.close()


def assert_answers_an_embedding(process: PluginProcess, credentials: dict[str, str]) -> None:
    """An installed plugin embeds one text over the protocol and writes nothing else to stdout."""
    records = process.request(
        model_request(
            "invoke_text_embedding", "text-embedding", "tiny", credentials, texts=["hello"], input_type="query"
        ),
        timeout=60,
    )
    (result,) = streams(records)
    assert len(result["embeddings"]) == 1 and len(result["embeddings"][0]) > 0
    assert process.stray == []
