"""scripts/package_offline.py: the package carries every wheel for Linux x86_64 (this machine; aarch64 is built the same
way) and a requirements.txt that installs from them with no index. Installed like the daemon installs it — unzipped into
an empty directory, `uv venv .venv --python 3.12`, `uv pip install -i <mirror> -r requirements.txt` — with a dead
mirror, every proxy dead and an empty uv cache, the plugin answers one embedding request.

The first run downloads ~75 MB of wheels from PyPI into .cache/offline-wheels (ignored by git and .difyignore); later
runs resolve and build from that cache without network. Offline with a cold cache, set ONNX_LOCAL_SKIP_INSTALL_TEST=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.plugin.daemon import PluginProcess
from tests.plugin.test_package import assert_answers_an_embedding, python312, uv_binary

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "package_offline.py"
FIXTURE_EMBEDDER = REPO / "tests" / "fixtures" / "models" / "tiny-bert-embedder"
SKIP_INSTALL_ENV = "ONNX_LOCAL_SKIP_INSTALL_TEST"
DEAD = "http://127.0.0.1:9"  # the discard port: any connection attempt fails at once
_PROXIES = {"HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD, "ALL_PROXY": DEAD, "NO_PROXY": ""}
NO_NETWORK = {**_PROXIES, **{key.lower(): value for key, value in _PROXIES.items()}}  # every request fails

pytestmark = pytest.mark.skipif(bool(os.environ.get(SKIP_INSTALL_ENV)), reason=f"{SKIP_INSTALL_ENV} is set")


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "_", match[1]).lower()] = match[2]
    return pins


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("dist") / "onnx_local-0.1.0-offline-x86_64.difypkg"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--platform", "x86_64", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"no PyPI and a cold cache? set {SKIP_INSTALL_ENV}=1\n{result.stderr[-3000:]}"
    return output, result.stdout


def test_package_is_the_plugin_plus_wheels(built: tuple[Path, str], tmp_path: Path) -> None:
    package, _ = built
    ordinary = tmp_path / "plain.difypkg"
    plain = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "package.py"), "--output", str(ordinary)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert plain.returncode == 0, plain.stderr
    with zipfile.ZipFile(package) as archive:
        infos = archive.infolist()
        requirements = archive.read("requirements.txt").decode()
    with zipfile.ZipFile(ordinary) as archive:
        plain_names = set(archive.namelist())
    names = [info.filename for info in infos]
    assert names == sorted(names) and all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos)
    assert all(not name.endswith("/") for name in names)
    wheels = [name for name in names if name.startswith("wheels/")]
    assert set(names) - set(wheels) == plain_names  # the same plugin files as `make package`
    assert all(name.endswith(".whl") and name.count("/") == 1 for name in wheels)
    platforms = {tag for name in wheels for tag in name.removesuffix(".whl").split("-")[-1].split(".")}
    assert {tag for tag in platforms if tag != "any" and not re.fullmatch(r"manylinux[0-9_]+_x86_64", tag)} == set()
    assert not [name for name in wheels if re.search(r"-cp3(?!12)\d+-cp3\d+-", name)]  # CPython 3.12 or abi3/none

    # every pinned requirement is there, at its pinned version
    packaged = {}
    for name in wheels:
        distribution, version = Path(name).name.split("-")[:2]
        packaged[distribution.lower()] = version
    for distribution, version in requirement_pins().items():
        assert packaged.get(distribution) == version, distribution

    # requirements.txt: no index, the bundled wheels, then the plugin's own requirements unchanged
    lines = [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[:2] == ["--no-index", "--find-links ./wheels"]
    assert requirements.endswith((REPO / "requirements.txt").read_text(encoding="utf-8"))


def test_size_is_printed_against_the_limits(built: tuple[Path, str]) -> None:
    package, stdout = built
    with zipfile.ZipFile(package) as archive:
        uncompressed = sum(info.file_size for info in archive.infolist())
    assert str(package) in stdout
    assert f"uncompressed {uncompressed} bytes" in stdout and f"packed {package.stat().st_size} bytes" in stdout
    assert "MAX_PLUGIN_PACKAGE_SIZE, default" in stdout and "52428800" in stdout
    assert "PLUGIN_MAX_PACKAGE_SIZE, default in code" in stdout and "15728640" in stdout
    if uncompressed > 52428800:
        assert "OVER by" in stdout and "PLUGIN_MAX_PACKAGE_SIZE=" in stdout  # says what to raise
    assert "onnxlocal/onnx_local:0.1.0@" in stdout


def test_installs_with_no_index_and_answers_the_daemon(built: tuple[Path, str], tmp_path: Path) -> None:
    package, _ = built
    plugin_dir = tmp_path / "cwd" / "onnxlocal" / "onnx_local-0.1.0"
    plugin_dir.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(plugin_dir)

    env = {
        **os.environ,
        **NO_NETWORK,
        "VIRTUAL_ENV": str(plugin_dir / ".venv"),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),  # empty: nothing comes from an earlier install
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "PIP_NO_INDEX": "1",
    }
    # No UV_NO_INDEX / UV_OFFLINE: the package's requirements.txt alone must keep uv off every index, as on the daemon
    # (offline, uv silently skips an index it cannot reach: that would hide a missing --no-index). Every connection
    # fails here (dead proxies, dead mirror), so a passing install needed no network.
    for key in ("UV_OFFLINE", "UV_NO_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL"):
        env.pop(key, None)
    env.pop("UV_FIND_LINKS", None)

    def uv(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [uv_binary(), *args], cwd=plugin_dir, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, f"uv {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result

    uv("venv", ".venv", "--python", python312())
    # As the daemon runs it with PIP_MIRROR_URL set: `-i <mirror>` must be ignored (the mirror here is dead).
    uv("pip", "install", "-i", f"{DEAD}/simple", "-r", "requirements.txt")
    shutil.rmtree(tmp_path / "uv-cache")

    model_root = tmp_path / "models"
    shutil.copytree(FIXTURE_EMBEDDER, model_root / "tiny-bert-embedder")
    process = PluginProcess(
        plugin_dir / ".venv" / "bin" / "python",
        plugin_dir,
        env={**NO_NETWORK, "ONNX_LOCAL_MODEL_ROOTS": str(model_root), "ONNX_LOCAL_CACHE_DIR": str(tmp_path / "cache")},
    )
    manifest = process.start()
    try:
        assert (manifest["name"], manifest["version"]) == ("onnx_local", "0.1.0")
        credentials = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}
        assert_answers_an_embedding(process, credentials)
    finally:
        process.close()
