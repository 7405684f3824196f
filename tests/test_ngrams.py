"""The count-based baselines of the word-level language model: proper distributions, the
trigram's use of context, perplexity by hand, clear errors."""

import math

import pytest
import torch

from rnnlab.data.ngrams import KneserNeyTrigram, Unigram, perplexity


def test_every_model_is_a_distribution_over_the_vocabulary():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (400,), generator=generator)
    V = 9  # two tokens never seen in training still get a probability
    for model in (Unigram(ids, V), KneserNeyTrigram(ids, V)):
        for context in [(), (3,), (3, 5), (8, 8), (1, 2)]:
            probabilities = [model.probability(w, context) for w in range(V)]
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
            assert min(probabilities) > 0


def test_the_trigram_uses_two_tokens_of_context():
    ids = [0, 1, 2, 3, 1, 2, 4] * 30  # after (0, 1) always 2; after (3, 1) always 2; after (1, 2): 3 or 4
    kn, unigram = KneserNeyTrigram(ids, 6), Unigram(ids, 6)
    assert kn.probability(3, (0, 1, 2)) > 0.4 and kn.probability(4, (3, 1, 2)) > 0.4
    assert kn.probability(2, (0, 1)) > 0.9
    assert perplexity(kn, ids[:70]) < perplexity(unigram, ids[:70]) / 2


def test_perplexity_by_hand():
    unigram = Unigram([0, 0, 1], vocab_size=2)  # p(0) = 3/5, p(1) = 2/5
    assert perplexity(unigram, [1, 0, 1]) == pytest.approx(math.exp(-(math.log(3 / 5) + math.log(2 / 5)) / 2))


def test_clear_errors():
    with pytest.raises(ValueError, match=r"KneserNeyTrigram: ids must lie in \[0, 3\); got values from 0 to 5"):
        KneserNeyTrigram([0, 1, 5], 3)
    with pytest.raises(ValueError, match="Unigram: ids must hold at least 3 tokens; got 2"):
        Unigram([0, 1], 3)
