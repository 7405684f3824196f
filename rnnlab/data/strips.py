"""Strips of handwritten digits side by side, captioned with the digits' words in order: an image
captioning set built honestly from real images (the captions come from the digits' labels, not
from people describing pictures).

A strip of k digits (1 <= k <= max_digits) is k source images of (rows, columns) placed left to
right, then blank columns up to max_digits images' width, so every strip has the same size
(rows, max_digits * columns); its caption is the k labels' words ("three seven one").

Strips draw their digits from one pool of source images only: build the training strips from the
training images and the held-out strips from the held-out images, and no image is in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .vocabulary import UNK, Vocabulary

__all__ = ["DIGIT_WORDS", "END", "Strips", "caption_vocabulary", "make_strips", "caption_words"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
END = "<end>"  # ends every caption: the decoder stops when it chooses it


def caption_vocabulary() -> Vocabulary:
    """<unk> (never used), <end>, then the ten digit words: id of digit d is d + 2."""
    return Vocabulary([UNK, END, *DIGIT_WORDS], "word")


@dataclass
class Strips:
    """images (N, rows, width) in [0, 1]; words (N, max_digits + 1) word ids, the caption then
    <end>, padded with <end>; lengths (N,) caption words + 1 (the <end>); sources (N, max_digits)
    the index of each digit's source image in its pool, -1 past the caption."""

    images: torch.Tensor
    words: torch.Tensor
    lengths: torch.Tensor
    sources: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def make_strips(images: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator,
                max_digits: int = 5, min_digits: int = 1) -> Strips:
    """`count` strips of min_digits..max_digits digits (the number uniform), each digit an image
    drawn uniformly from the pool `images` (P, rows, columns) with `labels` (P,)."""
    if images.dim() != 3 or labels.shape != (len(images),) or len(images) == 0:
        raise ValueError(f"make_strips: images must be (P, rows, columns) with P >= 1 and labels (P,); got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"make_strips: count must be an int >= 1; got {count!r}")
    if not (isinstance(min_digits, int) and isinstance(max_digits, int) and 1 <= min_digits <= max_digits):
        raise ValueError(f"make_strips: need 1 <= min_digits <= max_digits; got {min_digits} and {max_digits}")
    pool, rows, columns = images.shape
    digits = torch.randint(min_digits, max_digits + 1, (count,), generator=generator)  # (N,)
    sources = torch.randint(pool, (count, max_digits), generator=generator)  # (N, max_digits)
    slot = torch.arange(max_digits)
    used = slot[None] < digits[:, None]  # (N, max_digits): the slots a strip fills
    sources = sources.masked_fill(~used, -1)
    tiles = images[sources.clamp(min=0)] * used[:, :, None, None]  # (N, max_digits, rows, columns), blanks zero
    strips = tiles.permute(0, 2, 1, 3).reshape(count, rows, max_digits * columns)  # slots side by side
    word_of_digit = torch.tensor([caption_vocabulary().index[w] for w in DIGIT_WORDS])
    end = caption_vocabulary().index[END]
    words = torch.full((count, max_digits + 1), end, dtype=torch.long)
    words[:, :max_digits] = torch.where(used, word_of_digit[labels[sources.clamp(min=0)]], end)
    return Strips(strips, words, digits + 1, sources)


def caption_words(ids, vocabulary: Vocabulary) -> str:
    """Word ids up to the first <end> as a caption ('three seven one')."""
    words = []
    for i in ids:
        token = vocabulary.tokens[int(i)]
        if token == END:
            break
        words.append(token)
    return " ".join(words)
