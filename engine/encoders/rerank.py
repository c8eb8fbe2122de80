"""Cross-encoder relevance scores over (query, document) pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from engine.encoders.runner import EncoderRunner, Tokens
from engine.errors import BadRequestError
from engine.settings.profile import RerankSettings
from engine.text.tokenizer import MAX_CHARS_PER_TOKEN


def scores_from_logits(logits: np.ndarray, mode: str) -> np.ndarray:
    """[batch, 1] → sigmoid (probability) or the raw logit; [batch, 2] → softmax of label 1 (probability) or
    its log-odds l1 - l0 (logit)."""
    logits = logits.astype(np.float64).reshape(logits.shape[0], -1)
    # softmax(l)[1] == sigmoid(l1 - l0)
    raw = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
    if mode == "logit":
        return raw
    return 1.0 / (1.0 + np.exp(-raw))


class RerankTask:
    """Tokenizes pairs with the tokenizer's pair template, truncating only the document."""

    def __init__(
        self, runner: EncoderRunner, tokenizer: Tokenizer, context_size: int, settings: RerankSettings
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.context_size = context_size
        self.settings = settings
        # Counting (get_num_tokens) reports untruncated lengths; a separate copy keeps the shared tokenizer's
        # settings fixed, since both lanes tokenize with it concurrently.
        self.counter = Tokenizer.from_str(tokenizer.to_str())
        self.counter.no_truncation()
        self.tokenizer.enable_truncation(max_length=self.context_size, strategy="only_second")

    def tokenize(
        self, pairs: Sequence[tuple[str, str]], input_type: str = "pair", options: RerankSettings | None = None
    ) -> list[Tokens]:
        try:
            cut = self.context_size * MAX_CHARS_PER_TOKEN
            encodings = self.tokenizer.encode_batch([(query[:cut], doc[:cut]) for query, doc in pairs])
        except Exception:  # tokenizers: "Truncation error: Second sequence not long enough to be truncated"
            raise BadRequestError(
                f"query is too long: with the pair template it leaves no room for the document within the "
                f"context size of {self.context_size} tokens"
            ) from None
        return [Tokens(tuple(e.ids), tuple(e.type_ids)) for e in encodings]

    def cache_key(self, pair: tuple[str, str], input_type: str, options: RerankSettings | None = None) -> None:
        return None  # rerank calls are one query against fresh candidates: nothing worth remembering

    def run(self, batch: Sequence[Tokens]) -> list[np.ndarray]:
        """Each pair's raw logits row; the call's score mode turns them into scores in `finish`."""
        logits, _ = self.runner.run(batch)
        return list(logits.reshape(logits.shape[0], -1))

    def finish(self, rows: list[np.ndarray], options: RerankSettings | None = None) -> list[float]:
        if not rows:
            return []
        mode = (options or self.settings).score_mode
        return [float(score) for score in scores_from_logits(np.stack(rows), mode)]
