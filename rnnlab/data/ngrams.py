"""Count-based language models over token ids: the baselines of the word-level language model.

- `Unigram`: each token's training frequency, add-one smoothed over the vocabulary.
- `KneserNeyTrigram`: interpolated Kneser-Ney (Chen and Goodman, 1998, with one discount per
  order, D = n1 / (n1 + 2 n2)): the trigram's discounted relative frequency, its saved mass spread
  by the bigram level, whose counts are *continuation* counts (how many distinct tokens precede
  the pair), and so on down to a continuation unigram interpolated with the uniform distribution,
  so every token of the vocabulary has a probability.

Both read one stream of ids (newlines are tokens, as for the recurrent model) and score the held-out
stream the way `tasks.language.stream_loss` does: every token after the first, from what precedes
it. `<unk>` (id 0) is a token like any other, as it is for the network, so the perplexities compare.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

__all__ = ["Unigram", "KneserNeyTrigram", "perplexity"]


def _ids(ids, where: str, vocab_size: int) -> list[int]:
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if len(values) < 3:
        raise ValueError(f"{where}: ids must hold at least 3 tokens; got {len(values)}")
    if min(values) < 0 or max(values) >= vocab_size:
        raise ValueError(f"{where}: ids must lie in [0, {vocab_size}); got values from {min(values)} to {max(values)}")
    return values


def _discount(counts) -> float:
    """D = n1 / (n1 + 2 n2) from how many counts are 1 and 2 (0.5 where that is undefined)."""
    histogram = Counter(counts)
    n1, n2 = histogram.get(1, 0), histogram.get(2, 0)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


class Unigram:
    """p(w) = (count(w) + 1) / (N + V): no context at all."""

    def __init__(self, train_ids, vocab_size: int):
        ids = _ids(train_ids, "Unigram", vocab_size)
        self.counts, self.total, self.vocab_size = Counter(ids), len(ids), vocab_size

    def probability(self, w: int, context: tuple[int, ...] = ()) -> float:
        return (self.counts.get(w, 0) + 1) / (self.total + self.vocab_size)


class KneserNeyTrigram:
    """Interpolated Kneser-Ney trigram model of a token stream; see the module docstring."""

    def __init__(self, train_ids, vocab_size: int):
        ids = _ids(train_ids, "KneserNeyTrigram", vocab_size)
        self.vocab_size = vocab_size
        trigrams = Counter(zip(ids, ids[1:], ids[2:]))
        # the highest order: raw counts of (u, v, w), with totals and distinct followers per (u, v)
        self.trigrams = trigrams
        self.pair_total: dict[tuple[int, int], int] = Counter()
        self.pair_followers: dict[tuple[int, int], int] = Counter()
        for (u, v, _), c in trigrams.items():
            self.pair_total[u, v] += c
            self.pair_followers[u, v] += 1
        # the bigram level: continuation counts N1+(. v w), distinct tokens seen before (v, w)
        self.bigrams: dict[tuple[int, int], int] = Counter((v, w) for (_, v, w) in trigrams)
        self.middle_total: dict[int, int] = Counter()
        self.middle_followers: dict[int, int] = Counter()
        for (v, _), c in self.bigrams.items():
            self.middle_total[v] += c
            self.middle_followers[v] += 1
        # the unigram level: N1+(. w), distinct tokens seen before w
        self.unigrams: dict[int, int] = Counter(w for (_, w) in Counter(zip(ids, ids[1:])))
        self.unigram_total = sum(self.unigrams.values())
        self.d3, self.d2 = _discount(trigrams.values()), _discount(self.bigrams.values())
        self.d1 = _discount(self.unigrams.values())

    def _unigram(self, w: int) -> float:
        seen = len(self.unigrams)
        return (max(self.unigrams.get(w, 0) - self.d1, 0) + self.d1 * seen / self.vocab_size) / self.unigram_total

    def _bigram(self, v: int, w: int) -> float:
        total = self.middle_total.get(v, 0)
        if total == 0:
            return self._unigram(w)
        kept = max(self.bigrams.get((v, w), 0) - self.d2, 0) / total
        return kept + self.d2 * self.middle_followers[v] / total * self._unigram(w)

    def probability(self, w: int, context: tuple[int, ...] = ()) -> float:
        """p(w | the last two tokens of context), backing off to shorter contexts at the start."""
        if len(context) == 0:
            return self._unigram(w)
        if len(context) == 1:
            return self._bigram(context[-1], w)
        u, v = context[-2], context[-1]
        total = self.pair_total.get((u, v), 0)
        if total == 0:
            return self._bigram(v, w)
        kept = max(self.trigrams.get((u, v, w), 0) - self.d3, 0) / total
        return kept + self.d3 * self.pair_followers[u, v] / total * self._bigram(v, w)


def perplexity(model, ids) -> float:
    """exp of the mean negative log-probability of ids[1:], each given the (up to two) tokens before it."""
    values = _ids(ids, "perplexity", model.vocab_size)
    total = 0.0
    for t in range(1, len(values)):
        total -= math.log(model.probability(values[t], tuple(values[max(0, t - 2):t])))
    return math.exp(total / (len(values) - 1))
