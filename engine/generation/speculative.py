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
# A draft token is worth checking when it is accepted more often than this: on 2 cores each extra position of a
# run costs about 0.3 of a one-token step (Qwen2.5-0.5B int4: ~19 ms per run + ~6 ms per position). Below it a
# sequence stops drafting, and probes again every PROBE_EVERY steps (the text may start quoting later).
MIN_ACCEPTANCE = 0.35
PROBE_EVERY = 16
# Weight of the newest verification in a sequence's running acceptance rate.
ACCEPTANCE_WEIGHT = 0.25


class NgramDrafter:
    """Proposes drafts for one sequence and adapts their length to how many get accepted."""

    def __init__(self, max_draft: int = MAX_DRAFT) -> None:
        self.max_draft = max_draft
        self.length = max_draft // 2  # drafts proposed next time: grows on full acceptance, shrinks on rejection
        self.proposed = 0
        self.accepted = 0
        self.rate = 0.5  # running fraction of draft tokens accepted (optimistic at first)
        self._idle_steps = 0  # steps without drafting since the rate fell below MIN_ACCEPTANCE

    def drafting(self) -> bool:
        """Whether to look for drafts this step: always while they pay off; else once every PROBE_EVERY steps."""
        if self.rate >= MIN_ACCEPTANCE:
            return True
        self._idle_steps += 1
        if self._idle_steps < PROBE_EVERY:
            return False
        self._idle_steps = 0
        return True

    def propose(self, history: np.ndarray, limit: int) -> list[int]:
        """Up to min(self.length, limit) tokens that followed the latest earlier occurrence of the history's last
        n-gram (n from MAX_NGRAM down to MIN_NGRAM); [] when none. Call it when `drafting()` says so."""
        count = min(self.length if self.rate >= MIN_ACCEPTANCE else 1, limit)  # a probe checks one token
        if count <= 0 or history.shape[0] <= MIN_NGRAM:
            return []
        window = history[-SEARCH_WINDOW:]
        end = window.shape[0]
        for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
            tail = window[end - n :]
            # Starts of earlier occurrences of the n-gram (each followed by at least one token), latest first.
            starts = np.flatnonzero(window[: end - n] == tail[0])
            for offset in range(1, n):
                starts = starts[window[starts + offset] == tail[offset]]
            if starts.shape[0]:
                start = int(starts[-1]) + n
                return [int(token) for token in window[start : start + count]]
        return []

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        self.rate += ACCEPTANCE_WEIGHT * (accepted / proposed - self.rate)
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
