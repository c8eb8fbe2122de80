"""Download a model from the Hugging Face Hub: only the files one variant needs, resumable, verified.

A transformers.js repository holds a dozen ONNX variants of one model (`onnx/model.onnx`, `model_fp16.onnx`,
`model_q4.onnx`, `model_int8.onnx`, `model_quantized.onnx`, …, gigabytes in all). A pull lists the repository
(`HfApi.model_info` with file metadata), keeps the configuration files the engine reads (root `*.json` and
`*.jinja`, sentence-transformers module configs) and one ONNX graph — `auto` picks it the way
`engine.model_files` picks among local files (`variant_rank`), or a genai folder's `genai_config.json` names it —
plus the external-data files that graph references (read from the downloaded graph itself).

Files download into `<target>/.onnx_local-pull/` first and move into place only when every file of the pull is
complete and verified (sha256 of LFS files, the git blob id of small ones), graphs last: a model directory never
shows half a model, and the registry's key on the directory's graphs changes once. A partial file keeps its bytes
(`partial/<path>.<etag>.part`); the next pull asks for the rest with an HTTP Range request. huggingface_hub's own
`hf_hub_download` / `snapshot_download` resume only within one call since 1.18 (huggingface/huggingface_hub#4228:
a process-unique temporary file, deleted on failure; #4196), so the transfer itself is its `http_get` (Range,
retries, redirects) writing into our partial file. `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN` are honoured
as huggingface_hub honours them.

`fetch_for_profile` serves `hf:REPO_ID` model paths (engine/hf_source.py): on the model's worker thread, progress
in the log, nothing once the directory is complete (no network: the model then loads offline too).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import onnx

from engine.errors import EngineError, ModelLoadError
from engine.hf_source import check_repo_id, check_revision
from engine.model_files import external_locations_of, variant_rank
from engine.settings.profile import RuntimeProfile

log = logging.getLogger(__name__)

STATE_DIR = ".onnx_local-pull"
STATE_FILE = "state.json"
VARIANTS = ("auto", "q4", "int8", "fp32", "fp16")
# variant_rank values (engine/model_files.py) each variant accepts, best first.
_VARIANT_RANKS = {"q4": (0, 1), "int8": (2,), "fp32": (3,), "fp16": (9,)}
_RANK_NAMES = {0: "q4", 1: "q4 (bnb4)", 2: "int8", 3: "fp32", 8: "q4f16", 9: "fp16"}
_UNMERGED = re.compile(r"^decoder_(with_past_)?model(?!_merged)")
_MODULE_CONFIG = re.compile(r"^\d+_[^/]+/[^/]+\.json$")  # sentence-transformers modules (1_Pooling/config.json)


class PullError(EngineError):
    """A pull could not finish; what was downloaded so far stays for the next pull to resume."""


@dataclass(frozen=True)
class RepoFile:
    path: str  # relative to the repository (or to the subfolder pulled)
    size: int | None
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git object id (small files)
    remote_path: str = ""  # the path in the repository (differs from `path` under a subfolder)

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id or f"size-{self.size}"


@dataclass(frozen=True)
class Selection:
    variant: str = "auto"
    file: str | None = None  # an exact ONNX file (a name or a path in the repository), like model_file
    subfolder: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"variant": self.variant, "file": self.file, "subfolder": self.subfolder}


@dataclass
class PullResult:
    directory: Path
    repo_id: str
    commit: str
    graph: str
    files: list[RepoFile]
    downloaded_bytes: int = 0
    resumed_bytes: int = 0  # bytes a partial file already held when this pull resumed it
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


# ---- progress


class Progress(Protocol):
    def plan(self, files: list[RepoFile], total: int) -> None: ...
    def file_started(self, path: str, size: int | None, resume: int) -> None: ...
    def advance(self, path: str, count: int) -> None: ...
    def file_done(self, path: str) -> None: ...


class LogProgress:
    """Progress in the log (the plugin's: Python logging, never stdout): a line per file and every `every` s."""

    def __init__(self, logger: logging.Logger = log, every: float = 10.0, label: str = "") -> None:
        self.logger, self.every, self.label = logger, every, label
        self.total = self.done = 0
        self._sizes: dict[str, int] = {}
        self._last = time.monotonic()
        self._started = time.monotonic()

    def plan(self, files: list[RepoFile], total: int) -> None:
        self.total = total
        self._started = time.monotonic()
        self.logger.info("%sdownloading %d file(s), %.1f MB", self.label, len(files), total / 1e6)

    def file_started(self, path: str, size: int | None, resume: int) -> None:
        self.done += resume
        self._sizes[path] = size or 0
        if resume and resume != size:
            self.logger.info("%s%s: resuming at %.1f of %.1f MB", self.label, path, resume / 1e6, (size or 0) / 1e6)

    def advance(self, path: str, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = self.done / max(1e-6, now - self._started)
            self.logger.info(
                "%s%.1f of %.1f MB (%.0f %%), %.1f MB/s, now %s",
                self.label,
                self.done / 1e6,
                self.total / 1e6,
                100.0 * self.done / max(1, self.total),
                rate / 1e6,
                path,
            )

    def file_done(self, path: str) -> None:
        if self._sizes.get(path, 0) >= 1e6:  # configs and tokenizers are counted, not announced
            self.logger.info("%s%s: done (%.1f MB)", self.label, path, self._sizes[path] / 1e6)


class _Bar:
    """What huggingface_hub's http_get takes as `tqdm_class` (a callable returning a context manager with
    update()): reports into a Progress."""

    def __init__(self, progress: Progress, path: str, **_: Any) -> None:
        self.progress, self.path = progress, path

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, count: float | None = 1) -> None:
        self.progress.advance(self.path, int(count or 0))


# ---- the Hub


@functools.cache
def _library_logs_through_logging() -> None:
    """huggingface_hub adds a stderr handler of its own to its logger (and propagates too): remove it, so its
    records (a retried transfer, …) reach the application's handlers once — the plugin's log, the CLI's stderr."""
    library = logging.getLogger("huggingface_hub")
    for handler in list(library.handlers):
        if type(handler) is logging.StreamHandler:
            library.removeHandler(handler)
    transport = logging.getLogger("httpx2")  # huggingface_hub's HTTP client logs every request at INFO
    if transport.level == logging.NOTSET:
        transport.setLevel(logging.WARNING)


def offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or flag.strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def list_repository(repo_id: str, revision: str | None) -> tuple[str, list[RepoFile]]:
    """(commit, files with sizes and hashes) of a model repository at a revision."""
    from huggingface_hub import HfApi

    _library_logs_through_logging()
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError:
        raise PullError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise PullError(f"{where}: no such model repository (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise PullError(f"{where}: no such revision") from None
    except OfflineModeIsEnabled:
        raise PullError(f"{where}: HF_HUB_OFFLINE is set, nothing can be downloaded") from None
    except HfHubHTTPError as error:
        raise PullError(f"{where}: the Hub answered {error}") from None
    except OSError as error:  # connection refused, DNS, TLS, timeouts (httpx errors are OSError-like or not)
        raise PullError(f"{where}: cannot reach {endpoint()} ({error})") from None
    except Exception as error:  # httpx transport errors
        if type(error).__module__.startswith(("httpx", "httpcore", "httpx2")):
            raise PullError(f"{where}: cannot reach {endpoint()} ({type(error).__name__}: {error})") from None
        raise
    if not info.sha:
        raise PullError(f"{where}: the Hub did not say which commit this is")
    files = []
    for sibling in info.siblings or ():
        lfs = sibling.lfs
        files.append(
            RepoFile(
                sibling.rfilename,
                sibling.size if sibling.size is not None else (lfs.size if lfs else None),
                lfs.sha256 if lfs else None,
                sibling.blob_id,
                sibling.rfilename,
            )
        )
    return info.sha, files


# ---- what a variant needs


def _in_subfolder(files: list[RepoFile], subfolder: str | None) -> list[RepoFile]:
    if not subfolder:
        return files
    prefix = subfolder.strip("/") + "/"
    return [
        RepoFile(f.path[len(prefix) :], f.size, f.sha256, f.blob_id, f.remote_path)
        for f in files
        if f.path.startswith(prefix)
    ]


def is_metadata(path: str) -> bool:
    """Configuration the engine reads: root JSON (config, tokenizer, generation, genai, sentence-transformers) and
    Jinja templates, and sentence-transformers module configs (the pooling folder)."""
    parts = PurePosixPath(path).parts
    if len(parts) == 1:
        return (path.endswith(".json") and not path.endswith(".index.json")) or path.endswith(".jinja")
    return bool(_MODULE_CONFIG.match(path))


def graph_candidates(files: Iterable[RepoFile]) -> list[RepoFile]:
    """ONNX graphs where the engine looks for them: the root and `onnx/`."""
    found = []
    for f in files:
        parts = PurePosixPath(f.path).parts
        if f.path.endswith(".onnx") and (len(parts) == 1 or (len(parts) == 2 and parts[0] == "onnx")):
            found.append(f)
    return found


def variant_name(path: str) -> str:
    return _RANK_NAMES.get(variant_rank(PurePosixPath(path).name), "fp32")


def _order(f: RepoFile) -> tuple[int, bool, int, str]:
    """engine.model_files' `auto` order: variant rank, root before onnx/, shorter name, name."""
    name = PurePosixPath(f.path).name
    return (variant_rank(name), "/" in f.path, len(name), name)


def choose_graph(files: list[RepoFile], selection: Selection, genai_filename: str | None = None) -> RepoFile:
    candidates = graph_candidates(files)
    if selection.file:
        wanted = selection.file.strip("/")
        match = [f for f in candidates if f.path == wanted] or [
            f for f in candidates if PurePosixPath(f.path).name == wanted
        ]
        if not match:
            names = ", ".join(f.path for f in candidates) or "none"
            raise PullError(f"{selection.file} is not an ONNX file of the repository (it has: {names})")
        return min(match, key=_order)
    if genai_filename is not None:
        named = [f for f in candidates if f.path == genai_filename]
        if not named:
            raise PullError(f"genai_config.json names {genai_filename}, which the repository does not hold")
        return named[0]
    if not candidates:
        folders = sorted({PurePosixPath(f.path).parent.as_posix() for f in files if f.path.endswith(".onnx")})
        hint = f"; it keeps ONNX files in {', '.join(folders)}: pull one with --subfolder" if folders else ""
        raise PullError(f"no ONNX model at the repository's root or under onnx/{hint}")
    if any(PurePosixPath(f.path).name.startswith("decoder_model_merged") for f in candidates):
        candidates = [f for f in candidates if not _UNMERGED.match(PurePosixPath(f.path).name)]
    if selection.variant != "auto":
        ranks = _VARIANT_RANKS[selection.variant]
        fitting = [f for f in candidates if variant_rank(PurePosixPath(f.path).name) in ranks]
        if not fitting:
            have = ", ".join(f"{f.path} ({variant_name(f.path)})" for f in sorted(candidates, key=_order))
            raise PullError(f"no {selection.variant} variant in the repository; it has {have}")
        candidates = fitting
    return min(candidates, key=_order)


def predicted_data_files(files: list[RepoFile], graph: RepoFile) -> list[RepoFile]:
    """External data by name, before the graph is read (for the plan): `model_q4.onnx_data`, `model.onnx.data`,
    `model.onnx_data_1`, …"""
    stems = (graph.path + "_data", graph.path + ".data")
    return [f for f in files if f.path != graph.path and f.path.startswith(stems)]


def external_locations(graph_path: Path) -> list[str]:
    """The external-data file names a graph references, relative to its folder, each once."""
    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception:  # protobuf errors may quote the file's bytes
        raise PullError(f"{graph_path.name} as downloaded is not a valid ONNX model") from None
    locations = list(external_locations_of(model))
    for location in locations:
        if not location or PurePosixPath(location).is_absolute() or ".." in PurePosixPath(location).parts:
            raise PullError(f"{graph_path.name}: external data location {location!r} points outside the model")
    return locations


# ---- the target directory


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((directory / STATE_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    path = directory / STATE_DIR / STATE_FILE
    temporary = path.with_name(STATE_FILE + ".tmp")
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temporary, path)


def _check_owner(directory: Path, repo_id: str) -> None:
    if directory.is_symlink():
        raise PullError(f"{directory} is a symbolic link; pull into a real directory")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise PullError(f"{directory} exists and is not a directory")
    state = _read_state(directory)
    if state is None:
        if any(entry.name != STATE_DIR for entry in directory.iterdir()):
            raise PullError(
                f"{directory} already holds files that pull did not download; pull into another root (--into) or "
                "remove them"
            )
        return
    if state.get("repo_id") != repo_id:
        raise PullError(f"{directory} holds {state.get('repo_id')}, not {repo_id}; pull into another root (--into)")


def complete_pull(
    directory: Path, repo_id: str, revision: str | None, selection: Selection | None
) -> dict[str, Any] | None:
    """The state of a finished pull of this repository (and revision and selection, when given) whose files are
    all in place with their sizes, else None. Reads the disk only."""
    state = _read_state(directory)
    if not state or not state.get("complete") or state.get("repo_id") != repo_id:
        return None
    if revision is not None and revision not in (state.get("revision"), state.get("commit")):
        return None
    if selection is not None and state.get("selection") != selection.as_dict():
        return None
    for path, meta in (state.get("files") or {}).items():
        target = directory / path
        if not target.is_file() or (meta.get("size") is not None and target.stat().st_size != meta["size"]):
            return None
    return state


@contextlib.contextmanager
def _locked(directory: Path, label: str) -> Iterator[None]:
    (directory / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with open(directory / STATE_DIR / "lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%sanother pull into %s is running; waiting for it", label, directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verify(path: Path, f: RepoFile) -> None:
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        raise PullError(f"{f.path}: {size} bytes arrived, the Hub lists {f.size}; pull again")
    if f.sha256:
        digest = hashlib.sha256()
        expected = f.sha256
    elif f.blob_id and len(f.blob_id) == 40:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(b"blob %d\0" % size)
        expected = f.blob_id
    else:
        return
    with open(path, "rb") as handle:
        for chunk in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        path.unlink(missing_ok=True)
        raise PullError(f"{f.path}: the downloaded bytes do not match the Hub's checksum; pull again")


class _Downloader:
    def __init__(self, repo_id: str, commit: str, directory: Path, progress: Progress) -> None:
        self.repo_id, self.commit, self.directory, self.progress = repo_id, commit, directory, progress
        self.staging = directory / STATE_DIR
        self.downloaded = 0
        self.resumed = 0

    def done_path(self, f: RepoFile) -> Path:
        return self.staging / "done" / f"{f.path}.{f.etag[:16]}"

    def fetch(self, f: RepoFile) -> Path:
        """The verified file in staging (downloaded, resumed, or already there)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        done = self.done_path(f)
        if done.is_file():  # verified by an earlier, interrupted pull
            self.progress.file_started(f.path, f.size, f.size or 0)
            self.progress.file_done(f.path)
            return done
        part = self.staging / "partial" / f"{f.path}.{f.etag[:16]}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        name = PurePosixPath(f.path).name
        for stale in part.parent.glob("*.part"):  # an older revision's partial of the same file
            if stale != part and stale.name.startswith(name + ".") and stale.name.count(".") == name.count(".") + 2:
                stale.unlink(missing_ok=True)
        resume = part.stat().st_size if part.exists() else 0
        if f.size is not None and resume > f.size:
            part.unlink()
            resume = 0
        self.resumed += resume
        self.progress.file_started(f.path, f.size, resume)
        url = hf_hub_url(self.repo_id, f.remote_path or f.path, revision=self.commit, endpoint=endpoint())
        headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, not of a compressed stream
        before = resume
        try:
            with open(part, "ab") as handle:
                http_get(
                    url,
                    handle,
                    resume_size=resume,
                    headers=headers,
                    expected_size=f.size,
                    displayed_filename=f.path,
                    tqdm_class=functools.partial(_Bar, self.progress, f.path),  # type: ignore[arg-type]
                )
        except Exception as error:
            held = part.stat().st_size if part.exists() else 0
            self.downloaded += max(0, held - before)
            raise PullError(
                f"{f.path}: the download stopped ({_describe(error)}); {held / 1e6:.1f} of "
                f"{(f.size or 0) / 1e6:.1f} MB are kept and the next pull resumes there"
            ) from None
        self.downloaded += part.stat().st_size - before
        _verify(part, f)
        done.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, done)
        self.progress.file_done(f.path)
        return done


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def pull(
    repo_id: str,
    directory: Path,
    revision: str | None = None,
    selection: Selection = Selection(),
    progress: Progress | None = None,
    label: str = "",
) -> PullResult:
    """Download (or bring up to date) `directory` with the files `selection` needs from the repository."""
    check_repo_id("repo_id", repo_id)
    if revision is not None:
        check_revision("revision", revision)
    if selection.variant not in VARIANTS:
        raise PullError(f"variant {selection.variant!r} is not valid; allowed: {', '.join(VARIANTS)}")
    progress = progress or LogProgress(label=label)
    directory = directory.absolute()
    _check_owner(directory, repo_id)
    if offline():
        state = complete_pull(directory, repo_id, revision, selection)
        if state is None:
            raise PullError(
                f"HF_HUB_OFFLINE is set and {directory} does not hold a complete pull of {repo_id} with these "
                "settings; nothing can be downloaded"
            )
        return _result_from_state(directory, state, ["offline (HF_HUB_OFFLINE): the files already here are used"])
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory, label):
        return _pull_locked(repo_id, directory, revision, selection, progress)


def _result_from_state(directory: Path, state: dict[str, Any], notes: list[str]) -> PullResult:
    files = [
        RepoFile(path, meta.get("size"), None, None, path) for path, meta in sorted((state.get("files") or {}).items())
    ]
    return PullResult(
        directory, state["repo_id"], state.get("commit", ""), state.get("graph", ""), files, 0, 0, True, notes
    )


def _pull_locked(
    repo_id: str, directory: Path, revision: str | None, selection: Selection, progress: Progress
) -> PullResult:
    commit, listing = list_repository(repo_id, revision)
    files = _in_subfolder(listing, selection.subfolder)
    if selection.subfolder and not files:
        raise PullError(f"{repo_id} has no folder {selection.subfolder}")
    previous = _read_state(directory) or {}
    # "files" lists what an earlier pull put in place (verified); it stays true while this pull runs, so an
    # interrupted pull never makes the next one fetch those files again.
    old_files: dict[str, Any] = dict(previous.get("files") or {})
    state: dict[str, Any] = {
        "repo_id": repo_id,
        "revision": revision,
        "commit": commit,
        "selection": selection.as_dict(),
        "complete": False,
        "files": old_files,
    }
    if not previous:  # the directory is this repository's from now on (an earlier complete pull stays complete
        _write_state(directory, state)  # until this one moves its files in)
    downloader = _Downloader(repo_id, commit, directory, progress)
    by_path = {f.path: f for f in files}
    metadata = [f for f in files if is_metadata(f.path)]
    genai = by_path.get("genai_config.json")
    notes: list[str] = []
    # the graph by name first, so the plan (and its size) is known before anything downloads
    genai_filename = None
    if genai is not None and not selection.file:
        genai_filename = _genai_filename(_current(directory, genai, old_files) or downloader.fetch(genai))
        if selection.variant != "auto":
            notes.append(f"genai_config.json names {genai_filename}; --variant {selection.variant} does not apply")
    graph = choose_graph(files, selection, genai_filename)
    planned = [*metadata, *predicted_data_files(files, graph), graph]
    wanted = {f.path: f for f in planned}
    to_fetch = [f for f in wanted.values() if _current(directory, f, old_files) is None]
    progress.plan(to_fetch, sum(f.size or 0 for f in to_fetch))
    staged: dict[str, Path] = {}
    for f in sorted(to_fetch, key=lambda f: (f.path == graph.path, f.path)):
        staged[f.path] = downloader.fetch(f)
    graph_file = staged.get(graph.path) or directory / graph.path
    folder = PurePosixPath(graph.path).parent
    for location in external_locations(graph_file):
        path = (folder / location).as_posix() if str(folder) != "." else location
        if path not in by_path:
            raise PullError(f"{graph.path} needs external data {path}, which the repository does not hold")
        if path not in wanted:
            wanted[path] = by_path[path]
            if _current(directory, by_path[path], old_files) is None:
                staged[path] = downloader.fetch(by_path[path])
    # every file is here and verified: move into place, data before graphs, graphs last
    _write_state(directory, state)
    for path in sorted(staged, key=lambda p: (p.endswith(".onnx"), p)):
        destination = directory / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged[path], destination)
    for path in old_files:
        if path not in wanted:
            (directory / path).unlink(missing_ok=True)
            notes.append(f"removed {path} (not part of this selection)")
    state["files"] = {p: {"size": f.size, "etag": f.etag} for p, f in sorted(wanted.items())}
    state["graph"] = graph.path
    state["complete"] = True
    _write_state(directory, state)
    _clean_staging(directory)
    result = PullResult(
        directory,
        repo_id,
        commit,
        graph.path,
        sorted(wanted.values(), key=lambda f: f.path),
        downloader.downloaded,
        downloader.resumed,
        up_to_date=not staged,
        notes=notes,
    )
    return result


def _current(directory: Path, f: RepoFile, old_files: dict[str, Any]) -> Path | None:
    """The file in place when an earlier complete pull put this very version there."""
    meta = old_files.get(f.path)
    path = directory / f.path
    if meta and meta.get("etag") == f.etag and path.is_file() and path.stat().st_size == (f.size or 0):
        return path
    return None


def _genai_filename(path: Path) -> str:
    try:
        filename = json.loads(path.read_text())["model"]["decoder"]["filename"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PullError("genai_config.json is not a valid genai config (model.decoder.filename)") from None
    if not isinstance(filename, str) or PurePosixPath(filename).is_absolute() or ".." in PurePosixPath(filename).parts:
        raise PullError("genai_config.json: model.decoder.filename points outside the model")
    return filename


def _clean_staging(directory: Path) -> None:
    """After a complete pull: nothing staged is wanted any more (partial files of a file no longer selected)."""
    for sub in ("done", "partial"):
        root = directory / STATE_DIR / sub
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()


# ---- hf: model paths


def selection_for(profile: RuntimeProfile) -> Selection:
    """What an `hf:` model's settings need: `model_file` names the exact file; quantize-on-load wants the fp32
    graph; otherwise the engine's own `auto` choice."""
    if profile.model_file != "auto":
        return Selection("auto", profile.model_file)
    if profile.quantization.method != "none":
        return Selection("fp32")
    return Selection("auto")


def fetch_for_profile(profile: RuntimeProfile, progress: Callable[[str], Progress] | None = None) -> None:
    """Make sure an `hf:` model's directory holds a complete pull (on the model's worker thread, before its files
    are read). A complete directory is used as it is, without the network."""
    source = profile.hub
    if source is None:
        return
    selection = selection_for(profile)
    directory = profile.model_dir
    if complete_pull(directory, source.repo_id, source.revision, selection) is not None:
        return
    label = f"model_path {source}: "
    log.info("%sdownloading into %s (first load)", label, directory)
    started = time.monotonic()
    try:
        result = pull(
            source.repo_id,
            directory,
            source.revision,
            selection,
            progress(label) if progress else LogProgress(label=label),
            label,
        )
    except PullError as error:
        raise ModelLoadError("model_path", f"downloading {source} failed: {error}") from None
    log.info(
        "%s%s at %s ready in %s: %d file(s), %.1f MB downloaded in %.1f s",
        label,
        result.graph,
        result.commit[:12],
        directory,
        len(result.files),
        result.downloaded_bytes / 1e6,
        time.monotonic() - started,
    )
