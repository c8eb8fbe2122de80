"""On-disk cache of quantized ONNX files: location, content hashes, locking and verified entries.

An entry is a directory `<cache root>/<name>-<key>/` holding the quantized file(s) and `manifest.json`, which is
written last and lists every file's size and sha256: an entry without a valid manifest, or whose files do not
match it, is treated as absent and rebuilt. Builds run in a temp dir that is renamed into place, under an
in-process lock per key plus an `fcntl.flock` on a lock file, so concurrent loads (threads or processes)
quantize once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import SettingError
from engine.native import allocate_lock, native_thread_id
from engine.paths import model_roots

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "ONNX_LOCAL_CACHE_DIR"
# The plugin daemon's persistent volume; survives plugin restarts and upgrades.
APP_STORAGE = Path("/app/storage")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_HASH_CHUNK = 1 << 22

_locks_guard = allocate_lock()
_key_locks: dict[str, Any] = {}
# (path, size, mtime_ns) of entry files verified by this process; a verified entry is not re-hashed.
_verified: set[tuple[str, int, int]] = set()


def default_cache_root() -> Path:
    """ONNX_LOCAL_CACHE_DIR, else /app/storage/onnx_local_cache when /app/storage is writable, else
    $XDG_CACHE_HOME/onnx_local (~/.cache/onnx_local)."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    if APP_STORAGE.is_dir() and os.access(APP_STORAGE, os.W_OK):
        return APP_STORAGE / "onnx_local_cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "onnx_local").resolve()


def resolve_cache_root(cache_dir: str) -> Path:
    """The cache root of a profile; a user-given directory must lie inside the model roots or the default root
    (the form value comes from a workspace user, the environment from the administrator)."""
    default = default_cache_root()
    value = (cache_dir or "").strip()
    if not value:
        root = default
    else:
        allowed = (*model_roots(), default)
        root = Path(value).expanduser()
        root = (root if root.is_absolute() else default / root).resolve()
        if not any(root == base or root.is_relative_to(base) for base in allowed):
            where = ", ".join(str(base) for base in allowed)
            raise SettingError("quant_cache_dir", value, f"empty (default cache) or a directory inside {where}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SettingError("quant_cache_dir", value or str(root), f"a writable directory ({error.strerror})") from None
    if not os.access(root, os.W_OK):
        raise SettingError("quant_cache_dir", value or str(root), "a writable directory")
    return root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cached_file_hash(path: Path, root: Path) -> str:
    """sha256 of a (possibly multi-GB) source file, remembered under the cache root by (path, size, mtime)."""
    stat = path.stat()
    ident = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    memo = root / "hashes" / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".txt")
    try:
        value = memo.read_text().strip()
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value
    except OSError:
        pass
    log.info("hashing %s (%.1f MB) for the quantization cache key", path.name, stat.st_size / 1e6)
    value = sha256_file(path)
    write_atomic(memo, value + "\n")
    return value


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_lock(key: str) -> Any:
    with _locks_guard:
        lock = _key_locks.get(key)
        if lock is None:
            lock = _key_locks[key] = allocate_lock()
        return lock


@contextmanager
def entry_lock(root: Path, name: str) -> Iterator[None]:
    """Exclusive for this entry: first among this process's threads, then across processes."""
    with _key_lock(str(root / name)):
        lock_path = root / f".{name}.lock"
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process that is building quantization cache entry %s", name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_entry(entry: Path, main_file: str) -> Path | None:
    """The entry's main file if the manifest is present and every listed file matches it, else None."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = manifest["files"]
        if manifest.get("version") != MANIFEST_VERSION or main_file not in files:
            return None
        for name, expected in files.items():
            path = entry / name
            stat = path.stat()
            if stat.st_size != int(expected["size"]):
                return None
            ident = (str(path), stat.st_size, stat.st_mtime_ns)
            if ident not in _verified:
                if sha256_file(path) != expected["sha256"]:
                    return None
                _verified.add(ident)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry / main_file


def build_entry(
    root: Path, name: str, main_file: str, build: Callable[[Path], None], info: dict[str, Any]
) -> tuple[Path, bool]:
    """The verified entry `name`, building it with `build(output_path)` when absent or corrupt.

    Returns (main file, built_now)."""
    entry = root / name
    found = read_entry(entry, main_file)
    if found is not None:
        return found, False
    with entry_lock(root, name):
        found = read_entry(entry, main_file)  # another thread or process may have built it meanwhile
        if found is not None:
            return found, False
        if entry.exists():
            log.warning("quantization cache entry %s is incomplete or corrupt; rebuilding it", entry)
            shutil.rmtree(entry, ignore_errors=True)
        tmp = root / f".tmp-{name}-{os.getpid()}-{native_thread_id()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp / main_file)
            files = {
                p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file()
            }
            manifest = {"version": MANIFEST_VERSION, "main": main_file, "files": files, **info}
            write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # last
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    found = read_entry(entry, main_file)
    if found is None:
        raise OSError(f"quantization cache entry {entry} could not be verified after writing it")
    return found, True
