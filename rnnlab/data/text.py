"""Text for language models: the bundled corpus or a user's file, and a train / validation split
by contiguous blocks (tokens and vocabularies are `vocabulary.py`'s)."""

from __future__ import annotations

import lzma
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED", "read_text", "split_blocks"]

BUNDLED = "shakespeare.txt.xz"


def read_text(path: str | None = None) -> str:
    """The text of a UTF-8 file, or of the bundled Shakespeare corpus when path is None."""
    if path is None:
        with resources.as_file(resources.files("rnnlab.data") / BUNDLED) as bundled:
            with lzma.open(bundled, "rt", encoding="utf-8") as f:
                return f.read()
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "is not a regular file" if file.exists() else "does not exist"
        raise ValueError(f"read_text: path must name a text file; got {path!r}, which {what}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"read_text: {path} must be UTF-8 text; {error}") from None
    if not text:
        raise ValueError(f"read_text: {path} must not be empty")
    return text


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
