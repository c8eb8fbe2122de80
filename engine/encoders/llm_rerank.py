"""LLM-style rerankers (the Qwen3-Reranker recipe): a causal decoder judges each (query, document) pair and the
score is P("yes") from its next-token logits over the two answers "no" and "yes".

Each pair becomes the model card's prompt (a fixed system message, `<Instruct>: …\\n<Query>: …\\n<Document>: …`,
an assistant turn with an empty think block); only the document's end is truncated to fit the context. Batches
are right-padded (causal attention keeps real tokens blind to the padding after them) and each row's answer is
read at its own last token, gathered inside the graph (`answer_graph.py`) or, unedited, from the full logits;
the cache inputs of an Optimum decoder are fed empty. The task plugs into the same micro-batcher as the
cross-encoders, so batching, lanes and queue limits are theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from engine.encoders.answer_graph import ANSWER_POSITIONS, LOGITS
from engine.encoders.rerank import scores_from_logits
from engine.encoders.runner import SHRINK_AREA, SHRINK_OPTIONS, Tokens
from engine.errors import BadRequestError, ModelLoadError
from engine.model_config import read_optional_json
from engine.settings.profile import RerankSettings
from engine.text.tokenizer import MAX_CHARS_PER_TOKEN

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# The model card's instruction when the caller gives none.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ANSWERS = ("no", "yes")  # logit columns in this order: softmax column 1 is P(yes)
_ONNX_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def is_llm_reranker(directory: Path, graph_kind: str) -> bool:
    """A rerank model is LLM-style when its graph has a KV cache or its config declares a causal LM."""
    architectures = read_optional_json(directory / "config.json").get("architectures")
    causal = isinstance(architectures, list) and any(str(a).endswith("ForCausalLM") for a in architectures)
    return graph_kind == "decoder" or causal


def pair_text(instruction: str, query: str, document: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class DecoderScorer:
    """Runs a causal decoder on a right-padded batch and returns each row's "no" and "yes" logits after its last
    token."""

    def __init__(self, session: ort.InferenceSession, pad_id: int, answer_ids: tuple[int, int]) -> None:
        self.session = session
        self.pad_id = pad_id
        self.answer_ids = list(answer_ids)
        inputs = {i.name: i for i in session.get_inputs()}
        self.past = {name: i for name, i in inputs.items() if name.startswith("past_key")}
        self.gathers = ANSWER_POSITIONS in inputs  # the answer-position edit applied
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids", ANSWER_POSITIONS} - set(self.past)
        if "input_ids" not in inputs or unknown:
            raise ModelLoadError(
                "model_path",
                f"the decoder graph's inputs are not those of an Optimum causal LM (inputs: {', '.join(inputs)})",
            )
        if any(
            len(i.shape) != 4 or not isinstance(i.shape[1], int) or i.type not in _ONNX_FLOATS
            for i in self.past.values()
        ):
            raise ModelLoadError(
                "model_path", "the decoder's past_key_values inputs are not float [batch, heads, past, dim]"
            )
        self.needs_mask = "attention_mask" in inputs
        self.needs_positions = "position_ids" in inputs
        if LOGITS not in [o.name for o in session.get_outputs()]:
            raise ModelLoadError("model_path", "the decoder graph has no logits output")

    def run(self, batch: Sequence[Tokens]) -> np.ndarray:
        """[batch, 2]: the "no" and "yes" logits after each row's last token."""
        longest = max(len(tokens) for tokens in batch)
        ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens.ids
            mask[row, : len(tokens)] = 1
        last = np.array([len(tokens) - 1 for tokens in batch], dtype=np.int64)
        feeds: dict[str, np.ndarray] = {"input_ids": ids}
        if self.needs_mask:
            feeds["attention_mask"] = mask
        if self.needs_positions:
            feeds["position_ids"] = np.broadcast_to(np.arange(longest, dtype=np.int64), ids.shape).copy()
        if self.gathers:
            feeds[ANSWER_POSITIONS] = last[:, None]
        for name, spec in self.past.items():  # no cache: every pair is one fresh prompt
            feeds[name] = np.zeros((len(batch), spec.shape[1], 0, spec.shape[3]), dtype=_ONNX_FLOATS[spec.type])
        options = SHRINK_OPTIONS if len(batch) * longest * longest >= SHRINK_AREA else None
        (logits,) = self.session.run([LOGITS], feeds, options)
        rows = np.zeros(len(batch), dtype=np.int64) if self.gathers else last
        return logits[np.arange(len(batch)), rows][:, self.answer_ids].astype(np.float64)


class LlmRerankTask:
    """The micro-batcher's task for an LLM-style reranker: prompt building, truncation, scoring."""

    def __init__(
        self, scorer: DecoderScorer, tokenizer: Tokenizer, context_size: int, settings: RerankSettings
    ) -> None:
        self.scorer = scorer
        self.tokenizer = tokenizer  # no truncation: the prompt is assembled and cut here
        self.counter = tokenizer  # count_tokens: untruncated lengths
        self.context_size = context_size
        self.settings = settings
        self.prefix = tuple(tokenizer.encode(PREFIX, add_special_tokens=False).ids)
        self.suffix = tuple(tokenizer.encode(SUFFIX, add_special_tokens=False).ids)
        self.budget = context_size - len(self.prefix) - len(self.suffix)  # tokens left for the pair text

    def tokenize(
        self, pairs: Sequence[tuple[str, str]], input_type: str = "pair", options: RerankSettings | None = None
    ) -> list[Tokens]:
        instruction = (options or self.settings).instruction or DEFAULT_INSTRUCTION
        cut = self.context_size * MAX_CHARS_PER_TOKEN
        heads = {query[:cut] for query, _ in pairs}
        for query in heads:  # one query per call in practice: the check costs one short encoding
            head = self.tokenizer.encode(pair_text(instruction, query, ""), add_special_tokens=False)
            if len(head.ids) >= self.budget:
                raise BadRequestError(
                    f"query is too long: with the instruction and the reranker's prompt it leaves no room for the "
                    f"document within the context size of {self.context_size} tokens"
                )
        texts = [pair_text(instruction, query[:cut], doc[:cut]) for query, doc in pairs]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        rows = [(*self.prefix, *e.ids[: self.budget], *self.suffix) for e in encodings]
        return [Tokens(row, (0,) * len(row)) for row in rows]

    def cache_key(self, pair: tuple[str, str], input_type: str, options: RerankSettings | None = None) -> None:
        return None  # as cross-encoders: one query against fresh candidates

    def run(self, batch: Sequence[Tokens]) -> list[np.ndarray]:
        return list(self.scorer.run(batch))

    def finish(self, rows: list[np.ndarray], options: RerankSettings | None = None) -> list[float]:
        """softmax over ("no", "yes") → P(yes) (probability), or its log-odds yes − no (logit)."""
        if not rows:
            return []
        mode = (options or self.settings).score_mode
        return [float(score) for score in scores_from_logits(np.stack(rows), mode)]


def answer_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    ids = [tokenizer.token_to_id(answer) for answer in ANSWERS]
    if None in ids:
        raise ModelLoadError(
            "model_path", 'an LLM-style reranker needs single tokens "yes" and "no" in its tokenizer.json'
        )
    return ids[0], ids[1]  # type: ignore[return-value]
