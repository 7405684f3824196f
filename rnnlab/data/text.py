"""Text for language models: the bundled corpus or a user's file, tokens, a vocabulary, and a
train / validation split by contiguous blocks.

A token is a character (`level="char"`) or a word or punctuation mark (`level="word"`). Index 0
of every vocabulary is `<unk>`: what the vocabulary has not seen (a character only in the
validation text, a rare word beyond the size cap, an odd character in a prompt) maps to it.
"""

from __future__ import annotations

import lzma
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = ["BUNDLED", "LEVELS", "UNK", "Vocabulary", "read_text", "tokenize", "detokenize", "split_blocks"]

BUNDLED = "shakespeare.txt.xz"
LEVELS = ("char", "word")
UNK = "<unk>"
# Words keep inner apostrophes ("'tis" is split, "bewitch'd" is one word); every other
# non-space character is a token of its own, and so is the newline, which carries the layout.
WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*|\n|[^\sA-Za-z0-9]")


def read_text(path: str | None = None) -> str:
    """The text of a UTF-8 file, or of the bundled Shakespeare corpus when path is None."""
    if path is None:
        with resources.as_file(resources.files("rnnlab.data") / BUNDLED) as bundled:
            with lzma.open(bundled, "rt", encoding="utf-8") as f:
                return f.read()
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"read_text: path must name a text file; got {path!r}, which does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"read_text: {path} must be UTF-8 text; {error}") from None
    if not text:
        raise ValueError(f"read_text: {path} must not be empty")
    return text


def tokenize(text: str, level: str) -> list[str] | str:
    """Characters (the string itself, which indexes like a list) or words and punctuation."""
    if level == "char":
        return text
    if level == "word":
        return WORD.findall(text)
    raise ValueError(f"tokenize: level must be one of {LEVELS}; got {level!r}")


def detokenize(tokens: list[str], level: str) -> str:
    """Inverse of `tokenize` up to spacing: words are joined by single spaces, punctuation is
    attached to the word before it, and a newline starts the next line without a space."""
    if level == "char":
        return "".join(tokens)
    out: list[str] = []
    for token in tokens:
        glue = not out or out[-1] == "\n" or token == "\n" or not (token[0].isalnum() or token == UNK)
        out.append(token if glue else " " + token)
    return "".join(out)


def split_blocks(tokens, val_fraction: float, blocks: int = 10):
    """(train, validation): the tokens are cut into `blocks` contiguous blocks and the last
    `val_fraction` of each goes to validation, so that validation samples the whole text (all
    plays, not just the last few) while staying contiguous enough for long-range context."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_blocks: val_fraction must be in (0, 1); got {val_fraction!r}")
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"split_blocks: blocks must be an int >= 1; got {blocks!r}")
    size = len(tokens) // blocks
    if size < 2 or int(size * val_fraction) < 1:
        raise ValueError(f"split_blocks: tokens must be long enough for {blocks} blocks with a validation "
                         f"part each; got {len(tokens)} tokens")
    train, val = [], []
    for b in range(blocks):
        start = b * size
        stop = len(tokens) if b == blocks - 1 else start + size
        cut = stop - max(1, int((stop - start) * val_fraction))
        train.append(tokens[start:cut])
        val.append(tokens[cut:stop])
    join = "".join if isinstance(tokens, str) else lambda parts: [t for part in parts for t in part]
    return join(train), join(val)


class Vocabulary:
    """Tokens <-> ids. Index 0 is `<unk>`; the rest are ordered by falling frequency (ties by
    token), so a vocabulary built from the same text is always the same."""

    def __init__(self, tokens: list[str], level: str):
        if level not in LEVELS:
            raise ValueError(f"Vocabulary: level must be one of {LEVELS}; got {level!r}")
        if not tokens or tokens[0] != UNK or len(set(tokens)) != len(tokens):
            raise ValueError(f"Vocabulary: tokens must be distinct and start with {UNK!r}; got {tokens[:5]!r}...")
        self.tokens, self.level = list(tokens), level
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, tokens, level: str, max_size: int | None = None) -> Vocabulary:
        """From training tokens; max_size (including <unk>) keeps only the most frequent."""
        if max_size is not None and max_size < 2:
            raise ValueError(f"Vocabulary.build: max_size must be >= 2 (<unk> and one token); got {max_size}")
        counts = Counter(tokens)
        counts.pop(UNK, None)
        ordered = sorted(counts, key=lambda token: (-counts[token], token))
        if max_size is not None:
            ordered = ordered[: max_size - 1]
        return cls([UNK] + ordered, level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens) -> torch.Tensor:
        """(N,) long ids; unknown tokens become 0 (<unk>)."""
        if self.level == "char" and isinstance(tokens, str):
            return self._encode_chars(tokens)
        return torch.tensor([self.index.get(t, 0) for t in tokens], dtype=torch.long)

    def _encode_chars(self, text: str) -> torch.Tensor:
        # A lookup table over code points: a Python loop over millions of characters takes seconds.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        known = np.array([ord(t) for t in self.tokens[1:]], dtype=np.uint32)
        order = np.argsort(known)
        position = np.searchsorted(known[order], codes).clip(max=max(len(known) - 1, 0))
        found = known[order][position] == codes if len(known) else np.zeros(len(codes), dtype=bool)
        ids = np.where(found, order[position] + 1, 0)
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids) -> str:
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
    def from_dict(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or "tokens" not in data or "level" not in data:
            raise ValueError("Vocabulary.from_dict: data must be {'level': ..., 'tokens': [...]}; "
                             f"got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        return cls(data["tokens"], data["level"])
