"""Text for language models: the bundled corpus or a user's file, and a train / validation split
by contiguous blocks (tokens and vocabularies are `vocabulary.py`'s)."""

from __future__ import annotations

import lzma
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED", "TextFileError", "read_text", "split_blocks"]

BUNDLED = "shakespeare.txt.xz"


class TextFileError(ValueError):
    """A path that names no UTF-8 text to read: `what` says what it names instead ("is a folder",
    "does not exist", "is empty", ...), so a caller that knows the path by another name (a task's
    config field, the CLI's --text) can say that name."""

    def __init__(self, path, what: str):
        self.path, self.what = path, what
        super().__init__(f"read_text: path must name a UTF-8 text file; got {str(path)!r}, which {what}")


def read_text(path: str | None = None) -> str:
    """The text of a UTF-8 file, or of the bundled Shakespeare corpus when path is None."""
    if path is None:
        with resources.as_file(resources.files("rnnlab.data") / BUNDLED) as bundled:
            with lzma.open(bundled, "rt", encoding="utf-8") as f:
                return f.read()
    file = Path(path)
    if not str(path):  # Path("") is the working folder
        raise TextFileError(path, "names no file")
    if not file.is_file():
        raise TextFileError(path, "is a folder" if file.is_dir() else "is not a regular file" if file.exists()
                            else "does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TextFileError(path, f"is not UTF-8 (byte {error.start}: {error.reason})") from None
    if not text:
        raise TextFileError(path, "is empty")
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
