"""`hf:REPO_ID` model paths: a model the engine downloads from the Hugging Face Hub on first load.

Off unless the administrator opts in (`ONNX_LOCAL_ALLOW_HF_PULL=1` in the plugin's environment): a form value in
one workspace must not make the shared plugin process fetch gigabytes from the internet by itself. With the opt-in,
`hf:OWNER/NAME` (or `hf:OWNER/NAME@REVISION`) names the directory `<first model root>/NAME`, which `engine/hub.py`
fills on the model's worker thread the first time the model loads (and never touches again once complete).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingError
from engine.paths import MODEL_ROOTS_ENV, model_roots

ALLOW_PULL_ENV = "ONNX_LOCAL_ALLOW_HF_PULL"
PREFIX = "hf:"
# The Hub's rules for a repository id: OWNER/NAME, letters, digits, '-', '_', '.', at most 96 characters each,
# no '--' or '..', not starting or ending with '-' or '.'.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_FORMAT = "hf:OWNER/NAME or hf:OWNER/NAME@REVISION (a Hugging Face Hub model repository)"


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None  # None: the repository's default branch

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    def __str__(self) -> str:
        return PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def pull_allowed() -> bool:
    return os.environ.get(ALLOW_PULL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_repo_id(field: str, repo_id: str) -> str:
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise SettingError(field, repo_id, "a Hugging Face repository id such as Xenova/all-MiniLM-L6-v2")
    return repo_id


def check_revision(field: str, revision: str) -> str:
    if not REVISION.match(revision) or ".." in revision:
        raise SettingError(field, revision, "a branch, tag or commit of the repository (letters, digits, . _ - /)")
    return revision


def parse_hub_path(raw: str | None, roots: tuple[Path, ...] | None = None) -> tuple[HubSource, Path] | None:
    """(source, target directory) for an `hf:` model path, None for any other path. SettingError (naming
    model_path) when downloads are not allowed or the value is malformed."""
    value = (raw or "").strip()
    if not value.lower().startswith(PREFIX):
        return None
    if not pull_allowed():
        raise SettingError(
            "model_path",
            value,
            "a model directory inside the allowed model roots; downloading from the Hugging Face Hub (hf:REPO_ID) "
            f"is off: the administrator enables it with {ALLOW_PULL_ENV}=1 in the plugin's environment",
        )
    spec = value[len(PREFIX) :].strip()
    repo_id, at, revision = spec.partition("@")
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or (at and not revision):
        raise SettingError("model_path", value, _FORMAT)
    if at:
        try:
            check_revision("model_path", revision)
        except SettingError:
            raise SettingError("model_path", value, _FORMAT) from None
    source = HubSource(repo_id, revision or None)
    roots = model_roots() if roots is None else roots
    if not roots:
        raise SettingError("model_path", value, f"a model root to download into ({MODEL_ROOTS_ENV} is empty)")
    root = roots[0]
    target = root / source.name
    if target.is_symlink() or (target.exists() and not target.resolve().is_relative_to(root.resolve())):
        raise SettingError("model_path", value, f"a repository whose name is free in {root} ({target} is a link)")
    return source, target
