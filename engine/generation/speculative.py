"""Speculative decoding without a draft model: prompt-lookup (n-gram) drafts, verified in one run.

Answers that quote their context (RAG, "extract", "fix this code", summaries) re-generate text that is already
in the prompt. The drafter looks for the latest earlier occurrence of the sequence's last few tokens in its
prompt and output, and proposes the tokens that followed it. The runner then scores the last token and the
drafts in one run (on a CPU a run over a few positions costs little more than one: the weights are read once),
and `accept` keeps the drafts the model agrees with:
- greedy: a draft is kept while it is the argmax, so the output is that of plain greedy decoding — exactly on
  float32 graphs (tested). On quantized graphs a run over several positions does not compute bit-identical
  logits to one-position runs (MatMulNBits takes another kernel path; Qwen2.5-0.5B int4 differed by up to 0.23
  on the leading logits), so where the best two logits are closer than TIE_MARGIN the verification stops and
  that position is decoded by a plain one-position run. The KV those runs write differs in the same way (by
  ~0.02 in later logits), so a later near-tie can still fall the other way, as it can with batched decoding;
- sampling: the standard rule for a deterministic draft (the draft distribution is a point mass): draft token x
  is kept with probability p(x); on rejection the token is drawn from p with x removed and renormalised. Each
  emitted token is then distributed exactly as p, the distribution of plain sampling.
The KV of rejected drafts is dropped by rewinding the cache's length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.generation.sampling import Sampler

# Longest and shortest n-gram looked up, and the most drafts checked per run.
MAX_NGRAM = 4
MIN_NGRAM = 2
MAX_DRAFT = 8
# History searched for a match (tokens before the end): longer chats cost more per step to search.
SEARCH_WINDOW = 8192
# Greedy positions whose best two logits are closer than this are left to a plain one-position run (above).
TIE_MARGIN = 0.5


class NgramDrafter:
    """Proposes drafts for one sequence and adapts their length to how many get accepted."""

    def __init__(self, max_draft: int = MAX_DRAFT) -> None:
        self.max_draft = max_draft
        self.length = max_draft // 2  # drafts proposed next time: grows on full acceptance, shrinks on rejection
        self.proposed = 0
        self.accepted = 0

    def propose(self, history: np.ndarray, limit: int) -> list[int]:
        """Up to min(self.length, limit) tokens that followed the latest earlier occurrence of the history's last
        n-gram (n from MAX_NGRAM down to MIN_NGRAM); [] when none."""
        count = min(self.length, limit)
        if count <= 0 or history.shape[0] <= MIN_NGRAM:
            return []
        window = history[-SEARCH_WINDOW:]
        end = window.shape[0]
        for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
            tail = window[end - n :]
            # Candidate starts: where the n-gram's first token occurs, early enough to be followed by a token.
            starts = np.flatnonzero(window[: end - n] == tail[0])
            for start in starts[::-1]:  # the latest occurrence first: the most local context
                if np.array_equal(window[start : start + n], tail):
                    follow = window[start + n : start + n + count]
                    if follow.shape[0]:
                        return [int(token) for token in follow]
        return []

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted == proposed:
            self.length = min(self.max_draft, self.length + 2)
        else:
            self.length = max(1, accepted + 1)


def accept(sampler: Sampler, logits: np.ndarray, drafts: Sequence[int]) -> list[int]:
    """The tokens to emit after a verification run: the accepted drafts, then one token chosen by the model (the
    correction at the first rejection, or the token after the last draft) unless, greedy, that position is a
    near-tie (then it is left to a plain run). `logits[i]` are the logits after the i-th token fed (the last
    token, then each draft): len(drafts) + 1 rows. Either way the cache keeps the KV of the tokens fed before
    each emitted one: its length becomes (length before the run) + len(result)."""
    emitted: list[int] = []
    for index, row in enumerate(logits[: len(drafts) + 1]):
        if sampler.params.greedy and not sampler.decisive(row, TIE_MARGIN):
            return emitted
        if index == len(drafts):
            emitted.append(sampler.choose(row))
            return emitted
        token = sampler.choose_against(row, drafts[index])
        emitted.append(token)
        if token != drafts[index]:
            return emitted
    return emitted
