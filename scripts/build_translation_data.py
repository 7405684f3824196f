"""Build the bundled data of the translate task (provenance in rnnlab/data/SOURCES.md).

    apt-get install -y sword-text-kjv sword-text-sparv      # or: apt-get download ... && dpkg -x DEB ROOT
    pip install num2words==0.5.14
    python scripts/build_translation_data.py [--sword /usr/share/sword]

Writes, under rnnlab/data/:
    kjv_rv1909.tsv.xz     key, English (King James), Spanish (Reina-Valera 1909): the verse pairs of
                          at most 20 words on each side
    numbers_en_fr.tsv.xz  number, English words, French words (num2words 0.5.14)
Byte-for-byte reproducible: fixed row order, no timestamps in the compressed files.

Both Bibles are SWORD zText modules in the KJV versification, so their verse entries pair index for
index. Where the Reina-Valera numbers verses differently it leaves an entry empty and moves the
words into the next chapter (Job 38:39-41 are its 39:1-3); such a chapter and the one after it are
dropped, so no pair is misaligned.
"""

import argparse
import lzma
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rnnlab.data.sword import read_verses  # noqa: E402

OUT = ROOT / "rnnlab" / "data"
MODULES = {"english": "modules/texts/ztext/engKJV2006eb", "spanish": "modules/texts/ztext/spaRV1909eb"}
MAX_WORDS = 20
NUMBERS = {"small": 1001, "sampled": 24_000, "high": 1_000_000, "seed": 0}
CAPITALS = re.compile(r"^([\u00bf\u00a1(]?)([A-Z\u00c1\u00c9\u00cd\u00d3\u00da\u00d1\u00dc]{2,})\b")


def write_xz(path: Path, rows: list[tuple[str, ...]]) -> None:
    text = "".join("\t".join(row) + "\n" for row in rows)
    if any("\t" in cell or "\n" in cell for row in rows for cell in row):
        sys.exit(f"build_translation_data: a cell of {path.name} holds a tab or a new line")
    data = lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
    path.write_bytes(data)
    print(f"wrote {path} ({len(rows) - 1:,} rows, {len(data):,} bytes)")


def title_case_opening(text: str) -> str:
    """The Reina-Valera writes a chapter's first word in capitals ("EN el principio"): 'En'."""
    return CAPITALS.sub(lambda m: m.group(1) + m.group(2).capitalize(), text)


def bible_rows(sword: Path) -> list[tuple[str, ...]]:
    english, spanish = (read_verses(sword / MODULES[side]) for side in ("english", "spanish"))
    if len(english) != 31_102 or [v.key for v in english] != [v.key for v in spanish]:
        sys.exit(f"build_translation_data: expected 31,102 verses in the KJV versification in both modules; got "
                 f"{len(english):,} and {len(spanish):,}")
    shifted = set()  # chapters where the Spanish numbering departs from the KJV's, and the chapter after
    chapters = list(dict.fromkeys((v.book, v.chapter) for v in english))
    for e, s in zip(english, spanish):
        if s.text and e.text:
            continue
        where = chapters.index((e.book, e.chapter))
        shifted.update(chapters[where:where + 2])
    rows, dropped = [("key", "english", "spanish")], 0
    for e, s in zip(english, spanish):
        if (e.book, e.chapter) in shifted:
            dropped += 1
            continue
        en, es = e.text, s.text
        if e.verse == 1:
            es = title_case_opening(es)
        if 0 < len(en.split()) <= MAX_WORDS and 0 < len(es.split()) <= MAX_WORDS:
            rows.append((e.key, en, es))
    print(f"{len(english):,} verses; {len(shifted)} chapters ({dropped:,} verses) dropped where the Spanish numbering "
          f"differs: {sorted(f'{b}.{c}' for b, c in shifted)}")
    return rows


def number_rows() -> list[tuple[str, ...]]:
    from num2words import num2words

    generator = random.Random(NUMBERS["seed"])
    numbers = list(range(NUMBERS["small"]))
    numbers += generator.sample(range(NUMBERS["small"], NUMBERS["high"]), NUMBERS["sampled"])
    return [("number", "english", "french")] + [(str(n), num2words(n, lang="en"), num2words(n, lang="fr"))
                                                 for n in numbers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sword", default="/usr/share/sword", help="the SWORD library root (default /usr/share/sword)")
    args = parser.parse_args()
    sword = Path(args.sword)
    if not (sword / MODULES["english"]).is_dir() or not (sword / MODULES["spanish"]).is_dir():
        sys.exit(f"build_translation_data: no KJV and Reina-Valera modules under {sword}; apt-get install "
                 f"sword-text-kjv sword-text-sparv (or give --sword)")
    write_xz(OUT / "kjv_rv1909.tsv.xz", bible_rows(sword))
    write_xz(OUT / "numbers_en_fr.tsv.xz", number_rows())


if __name__ == "__main__":
    main()
