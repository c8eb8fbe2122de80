"""Build dist/<name>-<version>.difypkg the way `dify plugin package` does, without the Go CLI.

What the Go packager does (dify-plugin-daemon `pkg/plugin_packager/packager/packager.go`, `decoder/fs.go`) and this
script repeats:
1. validate manifest.yaml and the provider YAMLs it lists, and check that every referenced icon exists in _assets/;
2. walk the plugin directory, skipping what `.difyignore` (or, without it, `.gitignore`) excludes — gitignore
   syntax, excluded directories are not entered, negated patterns have no effect;
3. sort the files by path and refuse the package if their total uncompressed size exceeds the limit (50 MiB);
4. write a plain zip: Deflate, `/` separators, file entries only, no directory entries, no comment (= unsigned).
On top of that it checks that the files needed to install and start the plugin were not ignored, and it writes a
reproducible zip (fixed timestamps), so the same tree always gives the same bytes.

Usage: python scripts/package.py [--root DIR] [--output FILE] [--max-size MB]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pathspec
from manifest_check import Report, check_plugin, required_files

DEFAULT_MAX_SIZE_MB = 50
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can store: reproducible packages


class PackageError(Exception):
    pass


@dataclass(frozen=True)
class PackageFile:
    path: str  # relative, "/"-separated
    source: Path
    size: int


@dataclass(frozen=True)
class PackageResult:
    output: Path
    files: tuple[PackageFile, ...]
    checksum: str
    identity: str

    @property
    def uncompressed_size(self) -> int:
        return sum(f.size for f in self.files)


def load_ignore_spec(root: Path) -> tuple[pathspec.PathSpec, list[str]]:
    """Patterns from .difyignore, else .gitignore; returns the spec and warnings."""
    warnings: list[str] = []
    for name in (".difyignore", ".gitignore"):
        ignore_file = root / name
        if ignore_file.is_file():
            lines = [line.strip() for line in ignore_file.read_text(encoding="utf-8").splitlines()]
            patterns = [line for line in lines if line and not line.startswith("#")]
            negated = [line for line in patterns if line.startswith("!")]
            if negated:
                warnings.append(f"{name}: negated patterns are ignored by the Dify packager: {negated}")
            kept = [line for line in patterns if not line.startswith("!")]
            return pathspec.GitIgnoreSpec.from_lines(kept), warnings
    warnings.append("no .difyignore or .gitignore: every file is packaged")
    return pathspec.GitIgnoreSpec.from_lines([]), warnings


def collect_files(root: Path, spec: pathspec.PathSpec, skip: set[Path]) -> list[PackageFile]:
    """Files under root not excluded by spec (excluded directories are not entered), sorted by path."""
    files: list[PackageFile] = []
    for current, dirnames, filenames in os.walk(root):
        base = Path(current)
        rel_dir = base.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        dirnames[:] = sorted(
            d for d in dirnames if not spec.match_file(f"{prefix}{d}/") and not (base / d).is_symlink()
        )
        for name in filenames:
            source = base / name
            rel = f"{prefix}{name}"
            if spec.match_file(rel) or source.resolve() in skip or not source.is_file():
                continue
            files.append(PackageFile(rel, source, source.stat().st_size))
    return sorted(files, key=lambda f: f.path)


def check_size(files: list[PackageFile], max_bytes: int) -> None:
    total = sum(f.size for f in files)
    if total <= max_bytes:
        return
    largest = sorted(files, key=lambda f: f.size, reverse=True)[:5]
    listing = "\n".join(f"  {i}. {f.path}: {f.size} bytes" for i, f in enumerate(largest, 1))
    raise PackageError(
        f"plugin package too large: {total} bytes uncompressed, at most {max_bytes} allowed. Largest files:\n{listing}"
    )


def check_required(files: list[PackageFile], report: Report) -> None:
    packaged = {f.path for f in files}
    missing = [path for path in required_files(report) if path not in packaged]
    if missing:
        raise PackageError(f"needed by the plugin but missing or excluded by .difyignore: {', '.join(missing)}")


def checksum(content_digests: dict[str, bytes]) -> str:
    """The daemon's package checksum: sha256 over sha256(path) + sha256(content) of every file, sorted by path."""
    digest = hashlib.sha256()
    for path in sorted(content_digests):
        digest.update(hashlib.sha256(path.encode("utf-8")).digest())
        digest.update(content_digests[path])
    return digest.hexdigest()


def write_zip(files: list[PackageFile], output: Path) -> tuple[list[PackageFile], str]:
    """Zip files, in their order, into output. Each file is read once: the sizes and the checksum returned are those of
    the bytes written (a file edited after it was listed is packaged, counted and hashed as read here)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    written: list[PackageFile] = []
    digests: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for f in files:
                data = f.source.read_bytes()
                info = zipfile.ZipInfo(f.path, date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
                written.append(PackageFile(f.path, f.source, len(data)))
                digests[f.path] = hashlib.sha256(data).digest()
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return written, checksum(digests)


def validate(root: Path) -> Report:
    report = check_plugin(root)
    if not report.ok:
        raise PackageError("invalid plugin declaration:\n" + "\n".join(f"  {e}" for e in report.errors))
    return report


def default_output(root: Path, report: Report, suffix: str = "") -> Path:
    """ROOT/dist/<name>-<version><suffix>.difypkg"""
    manifest = report.manifest
    return root / "dist" / f"{manifest['name']}-{manifest['version']}{suffix}.difypkg"


def plugin_files(root: Path, report: Report, output: Path) -> list[PackageFile]:
    """The files `dify plugin package` would put in the package of the (validated) plugin at root, output excluded;
    prints the ignore-file and manifest warnings. Raises PackageError if a file the plugin needs is missing."""
    spec, warnings = load_ignore_spec(root)
    for warning in warnings + report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    files = collect_files(root, spec, skip={output, output.with_name(f".{output.name}.partial")})
    if "README.md" not in {f.path for f in files}:
        print("warning: README.md is not packaged: Dify shows it as the plugin's description page", file=sys.stderr)
    check_required(files, report)
    return files


def finish_package(report: Report, files: list[PackageFile], output: Path) -> PackageResult:
    """Zip files (sorted by path) into output; the result carries the daemon's checksum and plugin identity."""
    written, digest = write_zip(files, output)
    manifest = report.manifest
    identity = f"{manifest['author']}/{manifest['name']}:{manifest['version']}@{digest}"
    return PackageResult(output=output, files=tuple(written), checksum=digest, identity=identity)


def build_package(root: Path, output: Path | None = None, max_size_mb: float = DEFAULT_MAX_SIZE_MB) -> PackageResult:
    """Validate, collect, size-check and zip the plugin at root. Raises PackageError."""
    root = root.resolve()
    report = validate(root)
    output = (output or default_output(root, report)).resolve()
    files = plugin_files(root, report, output)
    check_size(files, int(max_size_mb * 1024 * 1024))
    return finish_package(report, files, output)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Package the plugin as a .difypkg (like `dify plugin package`).")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="plugin directory")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: ROOT/dist/<name>-<version>.difypkg)")
    parser.add_argument(
        "--max-size",
        type=float,
        default=DEFAULT_MAX_SIZE_MB,
        help=f"maximum total uncompressed size in MiB (default {DEFAULT_MAX_SIZE_MB}, the daemon's limit)",
    )
    args = parser.parse_args(argv)
    if args.max_size <= 0:
        parser.error("--max-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build_package(args.root, args.output, args.max_size)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    packed = result.output.stat().st_size
    print(f"{result.output}")
    print(f"  {len(result.files)} files, {result.uncompressed_size} bytes uncompressed, {packed} bytes packed")
    print(f"  {result.identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
