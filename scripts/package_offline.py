"""Build dist/<name>-<version>-offline[-<platform>].difypkg: the plugin plus every wheel it needs, installable with no
package index (air-gapped Dify servers).

The plugin daemon installs a plugin's dependencies with `uv pip install [-i $PIP_MIRROR_URL] -r requirements.txt` in the
unpacked package (dify-plugin-daemon `internal/core/local_runtime/setup_python_environment.go`). The offline package
is the ordinary package (scripts/package.py: same files, same zip format, same checks) with
- `wheels/`: every wheel of the resolved dependency tree for CPython 3.12 on Linux x86_64 and/or aarch64 (manylinux,
  glibc >= 2.28: onnxruntime's own floor; the daemon's docker image is Ubuntu 24.04, glibc 2.39);
- `requirements.txt`: the repository's requirements.txt under two lines, `--no-index` and `--find-links ./wheels`. uv
  reads both from a requirements file (relative links resolve against the file's directory); `--no-index` also makes
  uv ignore the index the daemon passes with `-i` when PIP_MIRROR_URL is set, so no index is ever contacted.

Wheels are resolved with `pip install --dry-run --report` for the target platform (pip's `--platform`,
`--python-version`, `--implementation`, `--only-binary=:all:`), fetched with `pip download`, checked against the
index's sha256 and kept in a cache (default ROOT/.cache/offline-wheels, ignored by git and by .difyignore). The
resolution is cached per requirements.txt content and platform, so a warm rebuild needs no network (--refresh resolves
again). Before zipping, `uv pip compile` resolves the package's requirements.txt offline for each platform (uv
evaluates the target's markers, pip's dry run this machine's) and must pick exactly the packaged wheels.

The size is reported against every upload limit (the package must fit each): the plugin daemon's
MAX_PLUGIN_PACKAGE_SIZE (default 52428800; it counts the upload and the sum of uncompressed entries), the Dify API's
PLUGIN_MAX_PACKAGE_SIZE (15728640 in code, 52428800 in Dify's docker/.env, where the same variable also sets the
daemon's) and nginx's NGINX_CLIENT_MAX_BODY_SIZE (100M in docker/.env). The wheels alone are far above 50 MiB
(onnxruntime + numpy + onnx: ~48 MB per platform), so the package is written anyway and the output says what to raise;
--max-size refuses it instead.

Usage: python scripts/package_offline.py [--platform x86_64|aarch64|both] [--root DIR] [--output FILE]
                                         [--cache-dir DIR] [--refresh] [--max-size MB]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from package import (
    PackageError,
    PackageFile,
    PackageResult,
    check_size,
    default_output,
    finish_package,
    plugin_files,
    validate,
)

PYTHON_VERSION = "3.12"  # the daemon creates the plugin's venv with `uv venv --python 3.12`
ABI = "cp312"
MACHINES = ("x86_64", "aarch64")
GLIBC_MAX_MINOR = 28  # manylinux_2_28 = glibc 2.28, what onnxruntime's Linux wheels need anyway
WHEELS_DIR = "wheels"
RESOLUTION_FORMAT = 1

DAEMON_MAX_PACKAGE_SIZE = 52428800  # dify-plugin-daemon internal/types/app/default.go, MAX_PLUGIN_PACKAGE_SIZE
API_MAX_PACKAGE_SIZE = 15728640  # dify api/configs/feature/__init__.py PLUGIN_MAX_PACKAGE_SIZE (docker/.env: 52428800)
API_MAX_PACKAGE_SIZE_DOCKER = 52428800
NGINX_MAX_BODY_SIZE_DOCKER = 100 * 1024 * 1024  # docker/.env NGINX_CLIENT_MAX_BODY_SIZE=100M (packed file size)

DEAD_URL = "http://127.0.0.1:9"  # the discard port: every connection is refused at once
_PROXIES = {"HTTP_PROXY": DEAD_URL, "HTTPS_PROXY": DEAD_URL, "ALL_PROXY": DEAD_URL, "NO_PROXY": ""}
NO_NETWORK = {**_PROXIES, **{key.lower(): value for key, value in _PROXIES.items()}}  # every request fails

OFFLINE_HEADER = """\
# Offline package (scripts/package_offline.py): every dependency is a wheel in ./wheels ({platforms}; CPython {python},
# manylinux glibc >= 2.{glibc}). No package index is contacted, not even the daemon's PIP_MIRROR_URL (-i): --no-index
# wins over it. The lines after these two are the plugin's requirements.txt.
--no-index
--find-links ./{wheels}
"""


@dataclass(frozen=True)
class Wheel:
    name: str  # normalized (PEP 503)
    version: str
    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class OfflineResult:
    package: PackageResult
    machines: tuple[str, ...]
    wheels: dict[str, tuple[Wheel, ...]]  # per machine
    wheel_sizes: dict[str, int]  # filename -> bytes

    def platform_bytes(self, machine: str) -> int:
        return sum(self.wheel_sizes[w.filename] for w in self.wheels[machine])


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_tags(machine: str) -> list[str]:
    """pip's --platform values, most preferred first: pip matches tags literally and does not expand manylinux."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MAX_MINOR, 4, -1)]
    tags.append(f"manylinux2014_{machine}")  # = manylinux_2_17, the spelling some wheels carry alone (protobuf)
    if machine == "x86_64":
        tags += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def pip_target_args(machine: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", ABI]
    for tag in platform_tags(machine):
        args += ["--platform", tag]
    return args


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_pip(args: list[str], what: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(f"{what} failed (pip exit {result.returncode}):\n{result.stderr[-4000:]}")


def resolve(requirements: Path, machine: str, cache_dir: Path, refresh: bool) -> list[Wheel]:
    """The wheels `pip install -r requirements` picks for CPython 3.12 on Linux <machine>, cached per content."""
    key = hashlib.sha256(
        json.dumps(
            [RESOLUTION_FORMAT, requirements.read_bytes().decode("utf-8"), PYTHON_VERSION, platform_tags(machine)]
        ).encode()
    ).hexdigest()[:16]
    cached = cache_dir / f"resolution-{machine}-{key}.json"
    if cached.is_file() and not refresh:
        return [Wheel(**item) for item in json.loads(cached.read_text(encoding="utf-8"))["wheels"]]
    print(f"resolving {requirements.name} for CPython {PYTHON_VERSION} Linux {machine} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="onnx-local-resolve-") as tmp:
        report_path = Path(tmp) / "report.json"
        run_pip(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report_path),
                "--target",
                str(Path(tmp) / "target"),
                *pip_target_args(machine),
                "-r",
                str(requirements),
            ],
            f"resolving the dependencies for {machine}",
        )
        report = json.loads(report_path.read_text(encoding="utf-8"))
    wheels = []
    for item in report["install"]:
        info = item["download_info"]
        url = info["url"]
        sha256 = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
        filename = url.rsplit("/", 1)[-1].split("#", 1)[0]
        if not filename.endswith(".whl") or not sha256:
            raise PackageError(f"{item['metadata']['name']}: no wheel with a sha256 for {machine} ({url})")
        wheels.append(Wheel(normalize(item["metadata"]["name"]), item["metadata"]["version"], filename, url, sha256))
    wheels.sort(key=lambda w: w.filename)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}")
    partial.write_text(
        json.dumps({"machine": machine, "wheels": [w.__dict__ for w in wheels]}, indent=1), encoding="utf-8"
    )
    partial.replace(cached)
    return wheels


def fetch(wheels: list[Wheel], machine: str, cache_dir: Path) -> dict[str, Path]:
    """Each wheel's file in cache_dir/files, downloaded (pip download, sha256-checked) if missing or corrupt."""
    files_dir = cache_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    paths = {w.filename: files_dir / w.filename for w in wheels}
    missing = [w for w in wheels if not paths[w.filename].is_file() or sha256_file(paths[w.filename]) != w.sha256]
    if missing:
        total = len(missing)
        print(f"downloading {total} wheel(s) for {machine} into {files_dir} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
            run_pip(
                [
                    "download",
                    "--no-deps",
                    "--quiet",
                    "-d",
                    tmp,
                    *pip_target_args(machine),
                    *(f"{w.name} @ {w.url}#sha256={w.sha256}" for w in missing),
                ],
                f"downloading wheels for {machine}",
            )
            for w in missing:
                got = Path(tmp) / w.filename
                if not got.is_file() or sha256_file(got) != w.sha256:
                    raise PackageError(f"{w.filename}: download missing or sha256 mismatch")
                got.replace(paths[w.filename])
    return paths


def offline_requirements(requirements: Path, machines: tuple[str, ...]) -> str:
    header = OFFLINE_HEADER.format(
        platforms="Linux " + " + ".join(machines),
        python=PYTHON_VERSION,
        glibc=GLIBC_MAX_MINOR,
        wheels=WHEELS_DIR,
    )
    return header + requirements.read_text(encoding="utf-8")


def uv_binary() -> str | None:
    try:
        from uv import find_uv_bin  # dev dependency; the daemon finds uv the same way
    except ImportError:
        return None
    return find_uv_bin()


def verify_offline_resolution(staging: Path, machines: tuple[str, ...], wheels: dict[str, list[Wheel]]) -> None:
    """`uv pip compile` the staged requirements.txt for each target platform, as the daemon would with PIP_MIRROR_URL
    (`-i <mirror>`), the mirror and every proxy dead: it must succeed (the file's `--no-index` holds, no network is
    needed) and pick exactly the wheels packaged for that platform. Not UV_OFFLINE=1: offline, uv silently skips an
    index it cannot reach, which would hide a missing `--no-index`."""
    uv = uv_binary()
    if uv is None:
        print("warning: uv is not installed: offline resolution not verified (pip install uv)", file=sys.stderr)
        return
    env = {**os.environ, **NO_NETWORK, "UV_NO_CONFIG": "1", "UV_NO_PROGRESS": "1"}
    for name in ("UV_OFFLINE", "UV_NO_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL"):
        env.pop(name, None)
    env.pop("UV_FIND_LINKS", None)
    for machine in machines:
        result = subprocess.run(
            [
                uv,
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--no-cache",
                "--python-version",
                PYTHON_VERSION,
                "--python-platform",
                f"{machine}-manylinux_2_{GLIBC_MAX_MINOR}",
                "--only-binary",
                ":all:",
                "-i",
                f"{DEAD_URL}/simple",
                "requirements.txt",
            ],
            cwd=staging,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PackageError(f"the offline requirements.txt does not resolve for {machine}:\n{result.stderr[-4000:]}")
        pins = set()
        for line in result.stdout.splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins.add((normalize(name), version.strip()))
        expected = {(w.name, w.version) for w in wheels[machine]}
        if pins != expected:
            raise PackageError(
                f"uv and pip disagree on the {machine} dependencies: uv only {sorted(pins - expected)}, "
                f"pip only {sorted(expected - pins)}"
            )


def build_offline_package(
    root: Path,
    machines: tuple[str, ...] = MACHINES,
    output: Path | None = None,
    cache_dir: Path | None = None,
    refresh: bool = False,
    max_size_mb: float | None = None,
) -> OfflineResult:
    """The plugin at root as scripts/package.py packages it, plus wheels/ and an index-free requirements.txt."""
    root = root.resolve()
    report = validate(root)
    suffix = "-offline" if set(machines) == set(MACHINES) else f"-offline-{'-'.join(machines)}"
    output = (output or default_output(root, report, suffix)).resolve()
    cache_dir = (cache_dir or root / ".cache" / "offline-wheels").resolve()
    files = plugin_files(root, report, output)
    requirements = root / "requirements.txt"

    wheels = {machine: resolve(requirements, machine, cache_dir, refresh) for machine in machines}
    sources: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for machine in machines:
        for filename, path in fetch(wheels[machine], machine, cache_dir).items():
            sources[filename] = path
        for w in wheels[machine]:
            if digests.setdefault(w.filename, w.sha256) != w.sha256:
                raise PackageError(f"{w.filename}: two different files under one name")

    with tempfile.TemporaryDirectory(prefix="onnx-local-offline-") as tmp:
        staging = Path(tmp)
        staged_requirements = staging / "requirements.txt"
        staged_requirements.write_text(offline_requirements(requirements, machines), encoding="utf-8")
        (staging / WHEELS_DIR).mkdir()
        for filename, path in sources.items():
            (staging / WHEELS_DIR / filename).symlink_to(path)
        verify_offline_resolution(staging, machines, wheels)

        files = [f for f in files if f.path != "requirements.txt"]
        files.append(PackageFile("requirements.txt", staged_requirements, staged_requirements.stat().st_size))
        files += [PackageFile(f"{WHEELS_DIR}/{name}", path, path.stat().st_size) for name, path in sources.items()]
        files.sort(key=lambda f: f.path)
        if max_size_mb is not None:
            check_size(files, int(max_size_mb * 1024 * 1024))
        package = finish_package(report, files, output)

    return OfflineResult(
        package=package,
        machines=machines,
        wheels={m: tuple(ws) for m, ws in wheels.items()},
        wheel_sizes={name: path.stat().st_size for name, path in sources.items()},
    )


def mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def size_report(result: OfflineResult) -> list[str]:
    """What the admin needs to know: the sizes against each upload limit, and what to raise."""
    total = result.package.uncompressed_size
    packed = result.package.output.stat().st_size
    lines = [f"  uncompressed {total} bytes ({mib(total)}), packed {packed} bytes ({mib(packed)})"]
    for machine in result.machines:
        count = len(result.wheels[machine])
        lines.append(f"  wheels for {machine}: {count}, {result.platform_bytes(machine)} bytes")
    # The daemon checks the upload's size and the sum of uncompressed entries, the API and nginx the upload's size.
    limits = [
        ("plugin daemon MAX_PLUGIN_PACKAGE_SIZE, default", DAEMON_MAX_PACKAGE_SIZE, max(total, packed)),
        ("Dify API PLUGIN_MAX_PACKAGE_SIZE, default in code", API_MAX_PACKAGE_SIZE, packed),
        ("Dify API PLUGIN_MAX_PACKAGE_SIZE, Dify's docker/.env", API_MAX_PACKAGE_SIZE_DOCKER, packed),
        ("nginx NGINX_CLIENT_MAX_BODY_SIZE=100M, Dify's docker/.env", NGINX_MAX_BODY_SIZE_DOCKER, packed),
    ]
    lines.append("  upload limits (the package must fit each one):")
    for label, limit, size in limits:
        verdict = "fits" if size <= limit else f"OVER by {size - limit} bytes"
        lines.append(f"    {label:<58} {limit:>10}  {verdict}")
    if max(total, packed) > min(DAEMON_MAX_PACKAGE_SIZE, API_MAX_PACKAGE_SIZE):
        step = 10 * 1024 * 1024
        needed = math.ceil(max(total, packed) / step) * step
        lines.append(f"  to install it: in Dify's docker/.env set PLUGIN_MAX_PACKAGE_SIZE={needed} ({mib(needed)};")
        lines.append("    docker compose gives it to the API and, as MAX_PLUGIN_PACKAGE_SIZE, to the plugin daemon)")
        if packed > NGINX_MAX_BODY_SIZE_DOCKER:
            lines.append(f"    and NGINX_CLIENT_MAX_BODY_SIZE={math.ceil(packed / (1024 * 1024)) + 10}M")
        lines.append(
            "    then `docker compose up -d`; without docker compose, set both variables for the API and the daemon"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Package the plugin with every wheel it needs (Linux, CPython 3.12), installable with no index."
    )
    parser.add_argument(
        "--platform",
        choices=(*MACHINES, "both"),
        default="both",
        help="Linux machine the wheels are for (default both: x86_64 and aarch64 in one package)",
    )
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="plugin directory")
    parser.add_argument(
        "-o", "--output", type=Path, help="output (default: ROOT/dist/<name>-<version>-offline[-<platform>].difypkg)"
    )
    parser.add_argument("--cache-dir", type=Path, help="wheel cache (default: ROOT/.cache/offline-wheels)")
    parser.add_argument("--refresh", action="store_true", help="resolve the dependencies again (network)")
    parser.add_argument(
        "--max-size", type=float, help="refuse the package above this many MiB uncompressed (default: report only)"
    )
    args = parser.parse_args(argv)
    if args.max_size is not None and args.max_size <= 0:
        parser.error("--max-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machines = MACHINES if args.platform == "both" else (args.platform,)
    try:
        result = build_offline_package(args.root, machines, args.output, args.cache_dir, args.refresh, args.max_size)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    package = result.package
    print(f"{package.output}")
    platforms = " + ".join(machines)
    print(
        f"  {len(package.files)} files ({len(result.wheel_sizes)} wheels: Linux {platforms}, CPython {PYTHON_VERSION})"
    )
    for line in size_report(result):
        print(line)
    print(f"  {package.identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
