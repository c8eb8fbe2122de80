"""Load-time edits of an ONNX graph that leave its weights where they are.

A graph whose weights are external data is edited in memory (only the graph is parsed and re-serialized;
ONNX Runtime reads the weights from the model's folder). A graph embedding more than CACHE_EMBEDDED_BYTES is
edited once into the quantization cache with its weights as external data and loaded by path (re-serializing
it for every load would hold a second copy of the weights); one embedding more than MAX_EMBEDDED_BYTES is not
edited. Generation's graph edits (engine/generation/last_logits.py, attention_rewrite.py) keep their own cache
keys and save through `cached_with_external_data`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from engine.quantize_cache import build_entry, cache_root, cached_file_hash, read_entry
from engine.session_builder import EditedGraph

log = logging.getLogger(__name__)

# Graphs with their weights embedded are parsed and re-serialized whole; above this the transient copies (the
# parsed graph, the bytes, ONNX Runtime's own copy) cost more memory than the edit is worth at load time.
MAX_EMBEDDED_BYTES = 1 << 30
# Graphs embedding more weights than this are edited once into the cache (external data) instead of in memory.
CACHE_EMBEDDED_BYTES = 32 << 20


def _cache_slot(path: Path, edit_id: str) -> tuple[Path, str, dict[str, object]]:
    root = cache_root()
    info: dict[str, object] = {
        "source": str(path),
        "source_sha256": cached_file_hash(path, root),
        "edit": edit_id,
        "onnx": onnx.__version__,
    }
    key = hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != "source"}, sort_keys=True).encode())
    return root, f"{path.parent.name[:48]}-{path.stem[:32]}-{edit_id[:16]}-{key.hexdigest()[:20]}", info


def edited_graph(path: Path, edit_id: str, edit: Callable[[onnx.ModelProto], bool]) -> EditedGraph | None:
    """The graph at `path` after `edit` (which changes the model in place and returns False when it does not
    apply), or None when it does not apply; `edit_id` names the edit and its version in the cache key."""
    slot = _cache_slot(path, edit_id) if path.stat().st_size > CACHE_EMBEDDED_BYTES else None
    if slot is not None and (found := read_entry(slot[0] / slot[1], path.name)) is not None:
        return EditedGraph(None, found.parent, found)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf errors may quote the file's bytes; the plain load reports the problem
        return None
    embedded = sum(t.ByteSize() for t in model.graph.initializer if not uses_external_data(t))
    if embedded > MAX_EMBEDDED_BYTES:
        log.info("%s embeds %.0f MB of weights: loaded without the %s edit", path.name, embedded / 1e6, edit_id)
        return None
    if not edit(model):
        return None
    if slot is None or embedded <= CACHE_EMBEDDED_BYTES:
        return EditedGraph(model.SerializeToString(), path.parent)
    edited = cached_with_external_data(model, *slot[:2], path.name, slot[2])
    log.info("%s: edited graph kept in the cache (%s) with its weights as external data", path.name, edited.folder)
    return edited


def cached_with_external_data(
    model: onnx.ModelProto, root: Path, name: str, main_file: str, info: dict[str, object]
) -> EditedGraph:
    """`model` saved as cache entry `name` (weights as external data beside it), to be loaded by path."""

    def save(output: Path) -> None:
        onnx.save_model(
            model,
            str(output),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=output.name + ".data",
            size_threshold=1024,
        )

    saved, _ = build_entry(root, name, main_file, save, info)
    return EditedGraph(None, saved.parent, saved)
