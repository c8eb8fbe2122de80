"""Build an embedding or rerank model on its worker thread: tokenizer, session, task and micro-batcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.encoders.answer_graph import answer_position_graph
from engine.encoders.batching import MicroBatcher
from engine.encoders.embedding import EmbeddingTask, resolve_pooling
from engine.encoders.embedding_cache import EmbeddingCache
from engine.encoders.llm_rerank import DecoderScorer, LlmRerankTask, answer_ids, is_llm_reranker
from engine.encoders.rerank import RerankTask
from engine.encoders.runner import EncoderRunner
from engine.errors import ModelLoadError, SettingError
from engine.model_config import read_optional_json, resolve_context_size
from engine.model_files import ModelFiles
from engine.model_info import ModelInfo
from engine.placement import Placement, activity_of, join_placement
from engine.session_builder import session_for
from engine.settings.profile import RuntimeProfile
from engine.text.tokenizer import load_tokenizer

EMBEDDING_OUTPUTS = ("last_hidden_state", "token_embeddings", "sentence_embedding")
RERANK_OUTPUTS = ("logits", "scores")


def _pad_id(directory: Path, tokenizer_pad: int | None) -> int:
    if tokenizer_pad is not None:
        return tokenizer_pad
    config = read_optional_json(directory / "config.json")
    pad = config.get("pad_token_id")
    return pad if isinstance(pad, int) else 0


def build_encoder(
    profile: RuntimeProfile,
    files: ModelFiles,
    placement: Placement,
    wake: Callable[[], None],
    name: str | None = None,
) -> tuple[MicroBatcher, ModelInfo]:
    directory = profile.model_dir
    tokenizer = load_tokenizer(directory)
    context = resolve_context_size(profile.context_size, directory, profile.model_type)
    llm_rerank = profile.model_type == "rerank" and is_llm_reranker(directory, files.kind)
    if files.kind == "decoder" and not llm_rerank:
        raise ModelLoadError(
            "model_path",
            "the graph has past_key_values inputs (a decoder with a KV cache): add it as an LLM or an LLM-style "
            "rerank model; an embedding model needs a graph exported without a cache (task feature-extraction)",
        )
    session, loaded_path = session_for(profile, files, placement, answer_position_graph if llm_rerank else None)
    padding = tokenizer.padding
    pad_id = _pad_id(directory, padding["pad_id"] if padding else tokenizer.token_to_id("[PAD]"))
    details: dict[str, object] = {}
    if profile.model_type == "text-embedding":
        assert profile.embedding is not None
        runner = EncoderRunner(session, pad_id, EMBEDDING_OUTPUTS)
        pooling = resolve_pooling(profile.embedding, directory)
        task: EmbeddingTask | RerankTask | LlmRerankTask
        task = EmbeddingTask(runner, tokenizer, context, profile.embedding, pooling)
        probe = task.run(task.tokenize(["hello world"], "document"))
        details.update(dimension=int(probe[0].shape[0]), pooling=pooling, normalize=profile.embedding.normalize)
    elif llm_rerank:
        assert profile.rerank is not None
        scorer = DecoderScorer(session, pad_id, answer_ids(tokenizer))
        task = LlmRerankTask(scorer, tokenizer, context, profile.rerank)
        if task.budget < 1:
            least = context - task.budget + 1
            raise SettingError("context_size", context, f"at least {least}: the reranker's prompt takes {least - 1}")
        try:
            task.run(task.tokenize([("hello", "world")]))
        except Exception:
            raise ModelLoadError(
                "model_path", "the decoder could not score a (query, document) pair with an empty cache"
            ) from None
        details.update(score_mode=profile.rerank.score_mode, reranker="llm (yes/no)")
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
    name = name or f"{directory.name}[{profile.model_type}]"
    assert profile.batching is not None  # parsed for every encoder profile
    cache = EmbeddingCache(profile.embedding.cache_mb << 20) if profile.embedding is not None else None
    batcher = MicroBatcher(name, task, profile.batching, wake, activity_of(placement), cache)
    batcher.start_interactive_lane(lambda: join_placement(placement))
    info = ModelInfo.for_load(name, profile, files, loaded_path, placement, context, details)
    return batcher, info
