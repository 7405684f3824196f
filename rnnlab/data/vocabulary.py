"""Tokens and ids, one way for every task: `tokenize` cuts text into tokens, `detokenize` joins
them back, and a `Vocabulary` maps tokens to ids and back.

A token is a character (`level="char"`) or a word or punctuation mark (`level="word"`). Words keep
inner apostrophes ("'tis" is split, "bewitch'd" is one word); every other non-space character is
a token of its own, and so is the newline, which carries the layout. `letters` says what a word is
made of: ASCII letters and digits (language, sentiment: an accented letter is a token of its own)
or any Unicode letter (translation, where "créé" is one word); `apostrophes` how many it may hold:
any ("o'erlook'd", Shakespeare's) or one clitic ("isn't", "o'neill" + "'s", the sentiment task's).

Ids are positions in `Vocabulary.tokens`: the special tokens first, in the order the task chose
(`<unk>`; `<pad>, <unk>`; `<unk>, <eos>`), then the others by falling frequency (ties by token), so
a vocabulary built from the same text is always the same. `<unk>` is always there: what the
vocabulary has not seen (a rare word, an odd character in a prompt) maps to it. A run directory
keeps the vocabulary as {"level": ..., "tokens": [...]} in vocabulary.json: the ids are the
positions, whatever the convention that wrote it.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

__all__ = ["LEVELS", "LETTERS", "UNK", "PAD", "Vocabulary", "tokenize", "detokenize"]

LEVELS = ("char", "word")
LETTERS = ("ascii", "unicode")
APOSTROPHES = {"any": "*", "one": "?"}
UNK, PAD = "<unk>", "<pad>"
_WORDS = {(letters, apostrophes): re.compile(pattern.replace("REPEAT", repeat))
          for letters, pattern in (("ascii", r"[A-Za-z0-9]+(?:'[A-Za-z]+)REPEAT|\n|[^\sA-Za-z0-9]"),
                                   ("unicode", r"\w+(?:['\u2019]\w+)REPEAT|\n|[^\w\s]"))
          for apostrophes, repeat in APOSTROPHES.items()}
# Joining words: no space before closing marks, none after opening ones (Spanish and French included).
_NO_SPACE_BEFORE = set(".,;:?!)]-\u2019'\u00bb\n")
_NO_SPACE_AFTER = set("\u00bf\u00a1([-\u00ab\n")


def tokenize(text: str, level: str, *, lowercase: bool = False, letters: str = "ascii",
             apostrophes: str = "any") -> list[str] | str:
    """Characters (the string itself, which indexes like a list) or words and punctuation marks,
    lowercased first if asked."""
    if level not in LEVELS:
        raise ValueError(f"tokenize: level must be one of {LEVELS}; got {level!r}")
    if letters not in LETTERS:
        raise ValueError(f"tokenize: letters must be one of {LETTERS}; got {letters!r}")
    if apostrophes not in APOSTROPHES:
        raise ValueError(f"tokenize: apostrophes must be one of {tuple(APOSTROPHES)}; got {apostrophes!r}")
    if lowercase:
        text = text.lower()
    return text if level == "char" else _WORDS[letters, apostrophes].findall(text)


def detokenize(tokens: list[str], level: str) -> str:
    """Inverse of `tokenize` up to spacing: words are joined by single spaces, with none before
    closing punctuation or after opening marks, and none around a newline."""
    if level not in LEVELS:
        raise ValueError(f"detokenize: level must be one of {LEVELS}; got {level!r}")
    if level == "char":
        return "".join(tokens)
    out = ""
    for token in tokens:
        glue = not out or token in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER
        out += token if glue else " " + token
    return out


class Vocabulary:
    """Tokens <-> ids: id i is `tokens[i]`; unknown tokens map to `unk`, the id of <unk>.

    tokens: distinct strings, <unk> among them (the special tokens first, by convention).
    level: 'char' or 'word', what the tokens are (decode joins them accordingly)."""

    def __init__(self, tokens: list[str], level: str):
        if level not in LEVELS:
            raise ValueError(f"Vocabulary: level must be one of {LEVELS}; got {level!r}")
        if (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or UNK not in tokens
                or len(set(tokens)) != len(tokens)):
            raise ValueError(f"Vocabulary: tokens must be a list of distinct strings holding {UNK!r}; "
                             f"got {str(tokens)[:80]}")
        self.tokens, self.level = list(tokens), level
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self.unk = self.index[UNK]

    @classmethod
    def build(cls, tokens, level: str, max_size: int | None = None, min_count: int = 1,
              specials: tuple[str, ...] = (UNK,)) -> Vocabulary:
        """From training tokens: `specials` (which must hold <unk>), then the tokens seen at least
        min_count times, most frequent first; max_size (specials included) keeps only the most frequent."""
        if UNK not in specials:
            raise ValueError(f"Vocabulary.build: specials must hold {UNK!r}; got {specials!r}")
        if max_size is not None and max_size <= len(specials):
            raise ValueError(f"Vocabulary.build: max_size must be > {len(specials)} (the special tokens {specials} "
                             f"and one more); got {max_size}")
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"Vocabulary.build: min_count must be an int >= 1; got {min_count!r}")
        counts = Counter(tokens)
        ordered = sorted((t for t, c in counts.items() if c >= min_count and t not in specials),
                         key=lambda token: (-counts[token], token))
        if max_size is not None:
            ordered = ordered[: max_size - len(specials)]
        return cls([*specials, *ordered], level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens) -> torch.Tensor:
        """(N,) long ids of a list of tokens (at char level also a string); unknown tokens become `unk`."""
        if isinstance(tokens, str):
            if self.level == "char":
                return self._encode_chars(tokens)
            # a word-level vocabulary would read the string's characters as words, each <unk>
            raise TypeError(f"Vocabulary.encode: tokens must be a list of words at word level; got a str "
                            f"{tokens[:40]!r} (tokenize it first)")
        return torch.tensor([self.index.get(t, self.unk) for t in tokens], dtype=torch.long)

    def _encode_chars(self, text: str) -> torch.Tensor:
        # A lookup table over code points: a Python loop over millions of characters takes seconds.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.array([i for i, t in enumerate(self.tokens) if len(t) == 1], dtype=np.int64)
        known = np.array([ord(self.tokens[i]) for i in ids], dtype=np.uint32)
        order = np.argsort(known)
        position = np.searchsorted(known[order], codes).clip(max=max(len(known) - 1, 0))
        found = known[order][position] == codes if len(known) else np.zeros(len(codes), dtype=bool)
        out = np.where(found, ids[order][position] if len(known) else 0, self.unk)
        return torch.from_numpy(out.astype(np.int64))

    def decode(self, ids) -> str:
        """Text of the ids; at char level an unknown character shows as U+FFFD."""
        tokens = [self.tokens[int(i)] for i in ids]
        if self.level == "char":
            tokens = ["\ufffd" if t == UNK else t for t in tokens]
        return detokenize(tokens, self.level)

    def unknown(self, tokens) -> list[str]:
        """The distinct tokens that would map to <unk>, in order of appearance."""
        return list(dict.fromkeys(t for t in tokens if t not in self.index))

    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict, where: str = "Vocabulary.from_dict") -> Vocabulary:
        """The vocabulary `to_dict` saved, ids unchanged (every vocabulary.json rnnlab has written);
        `where` (e.g. the file it came from) begins the error a malformed one gives."""
        if not isinstance(data, dict) or "tokens" not in data or "level" not in data:
            raise ValueError(f"{where}: must be {{'level': ..., 'tokens': [...]}}; "
                             f"got {'keys ' + str(sorted(data)) if isinstance(data, dict) else type(data).__name__}")
        try:
            return cls(data["tokens"], data["level"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
