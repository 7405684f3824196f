"""Sentence pairs for translation: the bundled English -> Spanish Bible verses and English ->
French number words (built by scripts/build_translation_data.py; provenance in SOURCES.md), their
fixed splits, tokens, and vocabularies with an end-of-sequence token.

Splits, whatever the training seed:
- bible: by book, so no verse (and no chapter) is in two splits: the test books are Joshua,
  Ecclesiastes, Lamentations, Daniel, Mark, Ephesians, James and 1 John; validation Judges, 2 Kings,
  Song of Songs, Philippians, 1 Peter and Revelation; the other 52 books are for training;
- numbers: the 25,001 numbers shuffled with seed 0: 1,000 for test, 500 for validation, the rest
  for training, so every test number is unseen.
Text is lowercased (the metrics then compare lowercased text too).
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from importlib import resources

import torch

from .vocabulary import UNK, Vocabulary, tokenize

__all__ = ["DATASETS", "EOS", "Pair", "load_pairs", "split_pairs", "sentence_tokens", "build_vocabulary",
           "encode_pairs"]

DATASETS = {"bible": ("kjv_rv1909.tsv.xz", "English (King James)", "Spanish (Reina-Valera 1909)"),
            "numbers": ("numbers_en_fr.tsv.xz", "English number words", "French number words")}
EOS = "<eos>"
TEST_BOOKS = ("Josh", "Eccl", "Lam", "Dan", "Mark", "Eph", "Jas", "1John")
VALIDATION_BOOKS = ("Judg", "2Kgs", "Song", "Phil", "1Pet", "Rev")
NUMBER_SPLIT = {"test": 1000, "val": 500, "seed": 0}


@dataclass(frozen=True)
class Pair:
    """One sentence and its translation; key names it ("Gen.1.1", or the number)."""

    key: str
    source: str
    target: str

    @property
    def book(self) -> str:
        return self.key.split(".")[0]


def load_pairs(dataset: str) -> list[Pair]:
    """Every pair of the bundled data set 'bible' or 'numbers', in file order."""
    if dataset not in DATASETS:
        raise ValueError(f"load_pairs: dataset must be one of {tuple(DATASETS)}; got {dataset!r}")
    with resources.as_file(resources.files("rnnlab.data") / DATASETS[dataset][0]) as path:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[1:]  # the header
    return [Pair(*line.split("\t")) for line in lines]


def split_pairs(pairs: list[Pair], dataset: str) -> dict[str, list[Pair]]:
    """{'train', 'val', 'test'}: see the module docstring."""
    if dataset == "bible":
        def part(pair):
            return "test" if pair.book in TEST_BOOKS else "val" if pair.book in VALIDATION_BOOKS else "train"

        return {name: [p for p in pairs if part(p) == name] for name in ("train", "val", "test")}
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(NUMBER_SPLIT["seed"])).tolist()
    test, val = NUMBER_SPLIT["test"], NUMBER_SPLIT["val"]
    parts = {"test": order[:test], "val": order[test:test + val], "train": order[test + val:]}
    return {name: [pairs[i] for i in sorted(chosen)] for name, chosen in parts.items()}


def sentence_tokens(text: str) -> list[str]:
    """A sentence's tokens: `tokenize`'s words, lowercased, made of any Unicode letters."""
    return tokenize(text, "word", lowercase=True, letters="unicode")


def build_vocabulary(sentences: list[str], min_count: int, max_size: int | None, end: bool) -> Vocabulary:
    """Tokens seen at least min_count times, most frequent first (at most max_size in all);
    index 0 is <unk>, and with end=True index 1 is the end-of-sequence token."""
    return Vocabulary.build((t for sentence in sentences for t in sentence_tokens(sentence)), "word", max_size,
                            min_count, specials=(UNK, EOS) if end else (UNK,))


def encode_pairs(pairs: list[Pair], source_vocabulary: Vocabulary, target_vocabulary: Vocabulary):
    """(source ids (N, S) padded with 0, source lengths (N,), target ids (N, T) ending with <eos>
    and padded with -1). The -1 marks what the loss ignores."""
    eos = target_vocabulary.index[EOS]
    sources = [source_vocabulary.encode(sentence_tokens(p.source)) for p in pairs]
    targets = [torch.cat([target_vocabulary.encode(sentence_tokens(p.target)), torch.tensor([eos])]) for p in pairs]
    lengths = torch.tensor([max(1, len(s)) for s in sources])
    source_ids = torch.zeros(len(pairs), int(lengths.max()), dtype=torch.long)
    target_ids = torch.full((len(pairs), max(len(t) for t in targets)), -1, dtype=torch.long)
    for i, (s, t) in enumerate(zip(sources, targets)):
        source_ids[i, :len(s)] = s
        target_ids[i, :len(t)] = t
    return source_ids, lengths, target_ids
