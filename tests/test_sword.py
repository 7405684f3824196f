"""The SWORD zText reader on a tiny module the test writes itself: block and verse indexes, zlib
blocks, books and chapters found from the markup, empty entries kept in place, markup stripped."""

import struct
import zlib

import pytest

from rnnlab.data.sword import read_entries, read_verses, strip_markup


def write_module(folder, testament, books):
    """books: [(osis name, [[verse markup, ...] per chapter])]; one zlib block per book, as
    BlockType=BOOK modules have. Empty markup is a verse the module lacks (block 0, size 0)."""
    entries = [(0, b""), (0, b"<milestone type='x-importer'/>")]  # module header, testament introduction
    blocks = [b"<milestone type='x-importer'/>"]
    for number, (name, chapters) in enumerate(books, start=1):
        text = b""

        def add(markup, number=number):  # called within this book's iteration
            nonlocal text
            data = markup.encode()
            if not data:
                entries.append((0, b""))
                return
            entries.append((number, data, len(text)))
            text += data

        add(f'<div osisID="{name}" sID="b{number}" type="book"/><title>The book of {name}</title>')
        for c, verses in enumerate(chapters, start=1):
            add(f'<chapter n="{c}" osisID="{name}.{c}" sID="{name}.{c}"/>')
            for markup in verses:
                add(markup)
        blocks.append(text)
    compressed = [zlib.compress(b) for b in blocks]
    offsets = [sum(len(c) for c in compressed[:i]) for i in range(len(compressed))]
    (folder / f"{testament}.bzz").write_bytes(b"".join(compressed))
    (folder / f"{testament}.bzs").write_bytes(b"".join(struct.pack("<III", o, len(c), len(b))
                                                       for o, c, b in zip(offsets, compressed, blocks)))
    index = b""
    for entry in entries:
        block, data, offset = entry if len(entry) == 3 else (*entry, 0)  # header and empty verses: offset 0
        index += struct.pack("<IIH", block, offset, len(data))
    (folder / f"{testament}.bzv").write_bytes(index)


@pytest.fixture
def module(tmp_path):
    write_module(tmp_path, "ot", [
        ("Gen", [['In the <w lemma="strong:H7225">beginning</w> God created.',
                  'And the earth was <note type="x-footnote">Or, waste</note>void<reference>Jer.4.23</reference>.'],
                 ['\u00b6 Thus the heavens were finished.']]),
        ("Exod", [['Now these <transChange type="added">are</transChange> the names.', '',
                   'Last verse.<chapter eID="Exod.1"/><div eID="b2" osisID="Exod" type="book"/>']])])
    write_module(tmp_path, "nt", [("Matt", [["The book of the generation."]])])
    return tmp_path


def test_entries_follow_the_verse_index(module):
    entries = read_entries(module, "ot")
    # header, intro; Gen: book, ch, 2, ch, 1; Exod: book, ch, 3
    assert len(entries) == 2 + 1 + 1 + 2 + 1 + 1 + 1 + 1 + 3
    assert entries[0] == (0, "")
    assert entries[2][0] == 1 and entries[2][1].startswith('<div osisID="Gen"')
    assert entries[4] == (1, 'In the <w lemma="strong:H7225">beginning</w> God created.')
    assert entries[-2] == (0, "")  # the verse the module lacks


def test_verses_are_labelled_from_the_markup_and_stripped(module):
    verses = read_verses(module)
    assert [v.key for v in verses] == ["Gen.1.1", "Gen.1.2", "Gen.2.1", "Exod.1.1", "Exod.1.2", "Exod.1.3",
                                       "Matt.1.1"]
    assert [v.text for v in verses] == ["In the beginning God created.", "And the earth was void.",
                                        "Thus the heavens were finished.", "Now these are the names.", "",
                                        "Last verse.", "The book of the generation."]
    assert verses[-1].testament == "nt" and verses[0].index == 4


def test_strip_markup():
    assert strip_markup('\u00bf<w>No</w> soy yo?<note n="a">x <i>y</i></note> ') == "\u00bfNo soy yo?"
    assert strip_markup("a &amp; b <lb/> c") == "a & b c"


def test_bad_modules_say_what_is_wrong(module, tmp_path):
    with pytest.raises(ValueError, match="testament must be one of"):
        read_entries(module, "apocrypha")
    (module / "nt.bzv").write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="whole entries of 12 and 10 bytes"):
        read_entries(module, "nt")
    with pytest.raises(ValueError, match="must hold ot.bzs"):
        read_entries(tmp_path / "missing", "ot")
