"""Build a model's ONNX Runtime session from its profile and placement: quantize-on-load first when asked, the
session options (threads, spinning, affinity, optimization level), then an in-memory graph edit if given."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from engine.errors import ModelLoadError
from engine.model_files import ModelFiles
from engine.native import threads_started_by
from engine.placement import Placement, spinning_enabled, thread_affinity_string
from engine.quantize import prepare_onnx_file
from engine.settings.profile import RuntimeProfile, SessionSettings

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class EditedGraph:
    """An edit of a model's graph: in memory, for `InferenceSession(bytes)`, its weights staying in the
    external-data files of `folder` (ONNX Runtime's `session.model_external_initializers_file_folder_path`);
    or, for a graph that embeds its weights, a verified copy in the cache at `path` with external data beside it
    (loaded by path: no second in-memory copy of the weights)."""

    model_bytes: bytes | None
    folder: Path
    path: Path | None = None


def build_session_options(settings: SessionSettings, placement: Placement) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = placement.threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if settings.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization_level]
    spin = "1" if spinning_enabled(settings, placement) else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if placement.adaptive:
        # Spinning that was asked for stops when a run ends: between runs the cores may belong to another model.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    elif placement.cores is not None and placement.threads > 1:
        # N threads = the calling (worker) thread + N-1 pool threads; the worker pins itself.
        options.add_session_config_entry(
            "session.intra_op_thread_affinities", thread_affinity_string(placement.cores, placement.threads - 1)
        )
    options.log_severity_level = 3  # errors only: ORT warnings go to stderr, never to the protocol's stdout
    return options


def create_session(path: Path, options: ort.SessionOptions, model_bytes: bytes | None = None) -> ort.InferenceSession:
    """Load an ONNX file (or `model_bytes`, an edited copy of its graph); a parse failure is reported without
    echoing the file's bytes."""
    source: str | bytes = str(path) if model_bytes is None else model_bytes
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises several exception types (Fail, InvalidProtobuf, RuntimeException…)
        kind = type(error).__name__
        log.debug("session creation for %s failed: %s", path, kind)
        raise ModelLoadError(
            "model_path",
            f"{path.name} could not be loaded by ONNX Runtime {ort.__version__} ({kind}); is it a valid ONNX model?",
        ) from None


GraphEdit = Callable[[Path], EditedGraph | None]
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_free_memory() -> None:
    """glibc keeps freed heap memory (a graph parsed at load, a large batch) in the process; malloc_trim returns
    it (measured: 150 MB after loading the Optimum Qwen q4 graph)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def session_for(
    profile: RuntimeProfile, files: ModelFiles, placement: Placement, edit: GraphEdit | None = None
) -> tuple[ort.InferenceSession, Path]:
    """The ONNX Runtime session of a profile, quantizing the file first when the profile asks for it, then
    loading `edit`'s in-memory copy of the graph when it gives one. Returns the session and the file it loaded."""
    path = files.onnx_path
    if profile.quantization.method != "none":
        path = prepare_onnx_file(files, profile.quantization)
    options = build_session_options(profile.session, placement)
    edited = edit(path) if edit is not None else None
    model_bytes = None
    source = path
    if edited is not None and edited.path is not None:
        source = edited.path
    elif edited is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(edited.folder))
        model_bytes = edited.model_bytes
    # The session's pool threads start during creation; the placement's lease moves them with the model's share.
    session, pool_threads = threads_started_by(lambda: create_session(source, options, model_bytes))
    release_free_memory()  # parsing and edits leave freed heap behind: give it back to the system
    if placement.lease is not None:
        placement.lease.add_threads(pool_threads, pool=True)
    return session, path
