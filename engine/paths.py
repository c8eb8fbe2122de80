"""Where model directories may live.

The plugin process is shared by every workspace of a Dify install, so a model path typed into one workspace's
form must not reach arbitrary files: it has to resolve (symlinks and `..` included) inside one of the model
roots the administrator allows.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import ModelLoadError, SettingError

MODEL_ROOTS_ENV = "ONNX_LOCAL_MODEL_ROOTS"
# The plugin daemon's docker volume `./volumes/plugin_daemon` is mounted at /app/storage, so a model copied to
# docker/volumes/plugin_daemon/models on the host is visible here without changing docker-compose.
DEFAULT_MODEL_ROOT = "/app/storage/models"


def model_roots() -> tuple[Path, ...]:
    """The allowed roots from ONNX_LOCAL_MODEL_ROOTS (os.pathsep-separated), resolved."""
    raw = os.environ.get(MODEL_ROOTS_ENV, "") or DEFAULT_MODEL_ROOT
    roots = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]
    return tuple(root.resolve() for root in roots)


def resolve_model_dir(raw_path: str, roots: tuple[Path, ...] | None = None) -> Path:
    """Resolve a user-given model directory (absolute, or relative to a root) inside the allowed roots."""
    roots = model_roots() if roots is None else roots
    roots_text = ", ".join(str(root) for root in roots)
    value = (raw_path or "").strip()
    if not value:
        raise SettingError("model_path", raw_path, f"a model directory inside the allowed model roots ({roots_text})")
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        inside = next((root for root in roots if resolved == root or resolved.is_relative_to(root)), None)
        if inside is None:
            continue
        if resolved.is_dir():
            return resolved
        if resolved.exists():
            raise SettingError("model_path", value, "a directory (this is a file)")
    if all(_outside(candidate.resolve(), roots) for candidate in candidates):
        raise SettingError(
            "model_path",
            value,
            f"a directory inside the allowed model roots ({roots_text}); the administrator sets them with "
            f"{MODEL_ROOTS_ENV}",
        )
    raise SettingError("model_path", value, f"an existing directory inside {roots_text}; this one does not exist")


def _outside(path: Path, roots: tuple[Path, ...]) -> bool:
    return not any(path == root or path.is_relative_to(root) for root in roots)


# Files inside an allowed model directory can still lead out of it: a symlinked tokenizer.json or model.onnx, a
# genai_config.json filename or an ONNX external-data location with `..` or an absolute path. Every file the
# engine opens goes through one of these two functions first.


def confined(path: Path, directory: Path | None = None) -> Path:
    """`path` (a file the engine chose, e.g. `directory / "tokenizer.json"`) resolved, symlinks followed; it must
    lie inside `directory` (default: its own folder). The file need not exist."""
    base = path.parent if directory is None else directory
    where = _name_in(path, base)
    try:
        resolved, root = path.resolve(), base.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an embedded NUL byte
        raise ModelLoadError("model_path", f"{where} cannot be resolved (a symlink loop?)") from None
    if not resolved.is_relative_to(root):
        raise ModelLoadError("model_path", f"{where} is a link outside the model directory")
    return resolved


def metadata_path(directory: Path, value: object, source: str, key: str, base: Path | None = None) -> Path:
    """The file that `key` of the model file `source` names (relative to `base`, default `directory`), resolved and
    confined to `directory`. Absolute names and `..` are refused whatever they point at: model metadata comes from
    whoever published the model."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ModelLoadError("model_path", f"{source}: {key} is not a file name")
    if Path(value).is_absolute() or ".." in Path(value).parts:
        raise ModelLoadError("model_path", f"{source}: {key} {_shown(value)} points outside the model directory")
    path = (directory if base is None else base) / value
    try:
        return confined(path, directory)
    except ModelLoadError:
        raise ModelLoadError(
            "model_path", f"{source}: {key} {_shown(value)} points outside the model directory (a symlink)"
        ) from None


def _name_in(path: Path, base: Path) -> str:
    """How messages name a file: relative to the model directory when it is lexically inside it."""
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")
