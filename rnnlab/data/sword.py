"""A reader of SWORD "zText" Bible modules (the format of Debian's sword-text-* packages), and of
the OSIS markup of their verses.

A zText module keeps each testament in three files:

    ot.bzs   block index: per block, 3 little-endian uint32 (offset in .bzz, compressed size, size)
    ot.bzv   verse index: per entry, uint32 block, uint32 offset in the block's text, uint16 size
    ot.bzz   the blocks, each zlib-compressed, one after the other

Entries follow the module's versification in order: entry 0 is the module header, entry 1 the
testament's introduction, then for each book its introduction, and for each chapter its
introduction and then its verses. The blocks here hold one book each (BlockType=BOOK), and the
markup names books and chapters (`<div type="book" osisID="Gen">`, `<chapter osisID="Gen.1"
sID=...>`), so `read_verses` labels every verse from the text alone, with no versification table.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Verse", "read_entries", "read_verses", "strip_markup", "TESTAMENTS"]

TESTAMENTS = ("ot", "nt")
BLOCK_ENTRY = struct.Struct("<III")  # offset, compressed size, uncompressed size
VERSE_ENTRY = struct.Struct("<IIH")  # block, offset in the uncompressed block, size

# the opening tag, not the closing eID one
BOOK_START = re.compile(r'<div\b(?=[^>]*\btype="book")(?=[^>]*\bsID=)[^>]*\bosisID="([^"]+)"[^>]*>')
CHAPTER_START = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*>')
# Markup whose content is not the verse's wording: translators' notes and cross references.
DROPPED = re.compile(r"<(note|reference)\b[^>]*?(?<!/)>.*?</\1>", re.DOTALL)
TAG = re.compile(r"<[^>]*>")
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Verse:
    """One verse: its OSIS book abbreviation ("Gen"), chapter and verse numbers, and index (the
    entry's position in its testament's verse index, which is the same in every module of one
    versification), with its text as stored (markup included)."""

    book: str
    chapter: int
    verse: int
    testament: str
    index: int
    markup: str

    @property
    def key(self) -> str:
        return f"{self.book}.{self.chapter}.{self.verse}"

    @property
    def text(self) -> str:
        return strip_markup(self.markup)


def strip_markup(markup: str) -> str:
    """The words of an OSIS fragment: notes and references dropped with their content, every other
    tag removed (its content kept), pilcrows gone, whitespace single."""
    text = TAG.sub(" ", DROPPED.sub(" ", markup))
    text = text.replace("\u00b6", " ").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = SPACES.sub(" ", text).strip()
    text = re.sub(r" ([,.;:?!)])", r"\1", text)  # a removed tag left a space before punctuation
    return re.sub(r"([¿¡(]) ", r"\1", text)  # ... or after an opening one


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"read_entries: the module must hold {path.name}; {path} does not exist")
    return path.read_bytes()


def read_entries(directory: str | Path, testament: str) -> list[tuple[int, str]]:
    """(block, text) of every entry of one testament ('ot' or 'nt') of the zText module in
    `directory`, in index order; empty entries give ''."""
    if testament not in TESTAMENTS:
        raise ValueError(f"read_entries: testament must be one of {TESTAMENTS}; got {testament!r}")
    folder = Path(directory)
    bzs, bzv, bzz = (_read(folder / f"{testament}.{ext}") for ext in ("bzs", "bzv", "bzz"))
    if len(bzs) % BLOCK_ENTRY.size or len(bzv) % VERSE_ENTRY.size:
        raise ValueError(f"read_entries: {folder}/{testament}.bzs and .bzv must hold whole entries of "
                         f"{BLOCK_ENTRY.size} and {VERSE_ENTRY.size} bytes; got {len(bzs)} and {len(bzv)} bytes")
    blocks = [BLOCK_ENTRY.unpack_from(bzs, i) for i in range(0, len(bzs), BLOCK_ENTRY.size)]
    texts: dict[int, bytes] = {}

    def block(number: int) -> bytes:
        if number not in texts:
            if number >= len(blocks):
                raise ValueError(f"read_entries: {folder}/{testament}.bzv names block {number}; the block index "
                                 f"has {len(blocks)}")
            offset, size, expected = blocks[number]
            data = zlib.decompress(bzz[offset:offset + size])
            if len(data) != expected:
                raise ValueError(f"read_entries: block {number} of {folder}/{testament}.bzz must inflate to "
                                 f"{expected} bytes; got {len(data)}")
            texts[number] = data
        return texts[number]

    entries = []
    for i in range(0, len(bzv), VERSE_ENTRY.size):
        number, offset, size = VERSE_ENTRY.unpack_from(bzv, i)
        text = block(number)[offset:offset + size].decode("utf-8") if size else ""
        entries.append((number, text))
    return entries


def read_verses(directory: str | Path) -> list[Verse]:
    """Every verse of both testaments of the zText module in `directory`, labelled from the markup;
    book and chapter introductions are left out (an introduction is the entry that opens a book or
    a chapter, found by its `<div type="book">` or `<chapter sID=...>` tag). A verse the module
    lacks keeps its place with empty markup, so two modules of one versification pair index for
    index."""
    verses = []
    for testament in TESTAMENTS:
        if not (Path(directory) / f"{testament}.bzv").is_file():
            continue  # a module may hold one testament only
        book, chapter, verse, block = None, 0, 0, None
        for index, (number, markup) in enumerate(read_entries(directory, testament)):
            if index < 2:
                continue  # the module header and the testament's introduction
            if not markup:  # a verse this translation lacks (an empty entry, stored in block 0)
                if chapter:
                    verse += 1
                    verses.append(Verse(book, chapter, verse, testament, index, markup))
                continue
            opened = BOOK_START.search(markup)
            if number != block or opened:  # a new block is a new book
                block = number
                book, chapter, verse = (opened.group(1) if opened else f"book{number}"), 0, 0
                continue
            started = CHAPTER_START.search(markup)
            if started:
                chapter, verse = chapter + 1, 0
                continue
            if book is None or chapter == 0:
                raise ValueError(f"read_verses: entry {index} of {directory}/{testament} comes before any chapter")
            verse += 1
            verses.append(Verse(book, chapter, verse, testament, index, markup))
    return verses
