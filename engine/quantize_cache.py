"""On-disk cache of quantized ONNX files: location, content hashes, locking and verified entries.

An entry is a directory `<cache root>/<name>-<key>/` holding the quantized file(s) and `manifest.json`, which is
written last and lists every file's size and sha256: an entry without a valid manifest, or whose files do not
match it, is treated as absent and rebuilt. Builds run in a temp dir that is renamed into place, under an
in-process lock per key plus an `fcntl.flock` on a lock file, so concurrent loads (threads or processes)
quantize once; the temp dirs a killed build leaves behind are removed under the same lock. The cache root is the
administrator's (ONNX_LOCAL_CACHE_DIR or the default), never a per-model setting.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError
from engine.native import allocate_lock, native_thread_id
from engine.paths import confined

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


def cache_root() -> Path:
    """The cache root, created if needed. Only the administrator chooses it (ONNX_LOCAL_CACHE_DIR): a form field
    would let any workspace aim multi-GB writes anywhere the plugin can write."""
    root = default_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelLoadError("quantization", _unwritable(root, error.strerror or "cannot be created")) from None
    if not os.access(root, os.W_OK):
        raise ModelLoadError("quantization", _unwritable(root, "no write permission"))
    return root


def _unwritable(root: Path, reason: str) -> str:
    return f"the quantization cache {root} is not writable ({reason}); the administrator sets it with {CACHE_DIR_ENV}"


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
def entry_lock(root: Path, name: str, wait: bool = True) -> Iterator[bool]:
    """Exclusive for this entry: first among this process's threads, then across processes. Yields True once
    held; with `wait=False`, yields False at once when someone else holds it."""
    key_lock = _key_lock(str(root / name))
    if not key_lock.acquire(wait):
        yield False
        return
    try:
        with (root / f".{name}.lock").open("a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                log.info("waiting for another process that is building quantization cache entry %s", name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        key_lock.release()


def _temp_dirs(root: Path, name: str) -> list[Path]:
    """Build folders of entry `name` (`_temp_dir`'s names), live or left behind by a killed build."""
    pattern = re.compile(rf"\.tmp-{re.escape(name)}-\d+-\d+")
    try:
        return [root / child for child in os.listdir(root) if pattern.fullmatch(child)]
    except OSError:
        return []


def _temp_dir(root: Path, name: str) -> Path:
    return root / f".tmp-{name}-{os.getpid()}-{native_thread_id()}"


def _remove_orphans(root: Path, name: str) -> None:
    """Only under the entry's lock: every live build of the entry holds it, so its build folders are orphans
    (a process killed mid-build; multi-GB with real models)."""
    for path in _temp_dirs(root, name):
        log.warning("removing %s, left behind by an interrupted quantization", path)
        shutil.rmtree(path, ignore_errors=True)


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
            if "/" in name or name in ("", ".", ".."):
                return None
            path = confined(entry / name, entry)  # a manifest never leads out of its entry
            stat = path.stat()
            if stat.st_size != int(expected["size"]):
                return None
            ident = (str(path), stat.st_size, stat.st_mtime_ns)
            if ident not in _verified:
                if sha256_file(path) != expected["sha256"]:
                    return None
                _verified.add(ident)
    except (OSError, ValueError, KeyError, TypeError, ModelLoadError):
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
        if _temp_dirs(root, name):
            with entry_lock(root, name, wait=False) as held:  # held by someone: a build is live, leave it
                if held:
                    _remove_orphans(root, name)
        return found, False
    with entry_lock(root, name):
        _remove_orphans(root, name)
        found = read_entry(entry, main_file)  # another thread or process may have built it meanwhile
        if found is not None:
            return found, False
        if entry.exists():
            log.warning("quantization cache entry %s is incomplete or corrupt; rebuilding it", entry)
            shutil.rmtree(entry, ignore_errors=True)
        tmp = _temp_dir(root, name)
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
