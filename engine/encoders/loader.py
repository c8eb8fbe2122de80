"""Build an embedding or rerank model on its worker thread: tokenizer, session, task and micro-batcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from engine.batching import MicroBatcher
from engine.encoders.embedding import EmbeddingTask, resolve_pooling
from engine.encoders.rerank import RerankTask
from engine.encoders.runner import EncoderRunner
from engine.errors import ModelLoadError, SettingError
from engine.loading import EditedGraph, build_session_options, create_session
from engine.model_files import ModelFiles
from engine.placement import Placement, pin_current_thread
from engine.profile import RuntimeProfile
from engine.registry import ModelInfo
from engine.text.tokenizer import load_tokenizer, model_max_length, position_limit, read_optional_json

DEFAULT_CONTEXT = 512
EMBEDDING_OUTPUTS = ("last_hidden_state", "token_embeddings", "sentence_embedding")
RERANK_OUTPUTS = ("logits", "scores")


def resolve_context_size(profile: RuntimeProfile, directory: Path) -> int:
    """`auto`: the length the model was trained for; an explicit size may go up to its position limit."""
    if profile.context_size is None:
        return model_max_length(directory) or DEFAULT_CONTEXT
    limit = position_limit(directory)
    if limit is not None and profile.context_size > limit:
        raise SettingError("context_size", str(profile.context_size), f"auto or 1 to {limit} (the model's maximum)")
    return profile.context_size


def _pad_id(directory: Path, tokenizer_pad: int | None) -> int:
    if tokenizer_pad is not None:
        return tokenizer_pad
    config = read_optional_json(directory / "config.json")
    pad = config.get("pad_token_id")
    return pad if isinstance(pad, int) else 0


GraphEdit = Callable[[Path], EditedGraph | None]


def session_for(
    profile: RuntimeProfile, files: ModelFiles, placement: Placement, edit: GraphEdit | None = None
) -> tuple[ort.InferenceSession, Path]:
    """The ONNX Runtime session of a profile, quantizing the file first when the profile asks for it, then
    loading `edit`'s in-memory copy of the graph when it gives one."""
    path = files.onnx_path
    if profile.quantization.method != "none":
        try:
            from engine.quantize import prepare_onnx_file
        except ImportError:
            raise SettingError(
                "quantization", profile.quantization.method, "none (quantize-on-load is not available)"
            ) from None
        path = prepare_onnx_file(files, profile.quantization)
    options = build_session_options(profile.session, placement)
    edited = edit(path) if edit is not None else None
    if edited is None:
        return create_session(path, options), path
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(edited.folder))
    return create_session(path, options, edited.model_bytes), path


def build_encoder(
    profile: RuntimeProfile, files: ModelFiles, placement: Placement, wake: Callable[[], None]
) -> tuple[MicroBatcher, ModelInfo]:
    directory = profile.model_dir
    tokenizer = load_tokenizer(directory)
    context = resolve_context_size(profile, directory)
    session, loaded_path = session_for(profile, files, placement)
    padding = tokenizer.padding
    pad_id = _pad_id(directory, padding["pad_id"] if padding else tokenizer.token_to_id("[PAD]"))
    details: dict[str, object] = {}
    if profile.model_type == "text-embedding":
        assert profile.embedding is not None
        runner = EncoderRunner(session, pad_id, EMBEDDING_OUTPUTS)
        pooling = resolve_pooling(profile.embedding, directory)
        task: EmbeddingTask | RerankTask = EmbeddingTask(runner, tokenizer, context, profile.embedding, pooling)
        probe = task.run(task.tokenize(["hello world"], "document"))
        details.update(dimension=int(probe[0].shape[0]), pooling=pooling, normalize=profile.embedding.normalize)
    else:
        assert profile.rerank is not None
        runner = EncoderRunner(session, pad_id, RERANK_OUTPUTS)
        task = RerankTask(runner, tokenizer, context, profile.rerank)
        try:
            task.run(task.tokenize([("hello", "world")]))
        except Exception:
            raise ModelLoadError(
                "model_path", "the model does not produce relevance logits for a (query, document) pair"
            ) from None
        details.update(score_mode=profile.rerank.score_mode)
    name = f"{directory.name}[{profile.model_type}]"
    batcher = MicroBatcher(name, task, profile.batching, wake)
    batcher.start_interactive_lane(lambda: pin_current_thread(placement.cores))
    info = ModelInfo.for_load(name, profile, files, loaded_path, placement, context, details)
    return batcher, info
