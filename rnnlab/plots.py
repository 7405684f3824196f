"""Figures as PNG files: the one way rnnlab opens matplotlib (the Agg backend: no display needed) and
writes a figure, and a run's loss curves."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save_figure", "drawn_by_rnnlab", "plot_losses"]

SOFTWARE = "rnnlab"  # the PNG text chunk "Software" of every figure save_figure writes


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; no display on a server), imported at first use:
    importing rnnlab never loads matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: float = 100) -> Path:
    """Lay `figure` out, write it to `path` as a PNG of `dpi` pixels per inch (its folder created, its
    "Software" text chunk `SOFTWARE`, see `drawn_by_rnnlab`) and close it; returns the path."""
    path = Path(path)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, metadata={"Software": SOFTWARE})
    pyplot().close(figure)
    return path


def drawn_by_rnnlab(path: str | Path) -> bool:
    """Whether `path` is a PNG that save_figure wrote (which a command may replace), not a user's file."""
    from PIL import Image, UnidentifiedImageError  # matplotlib's own dependency

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == SOFTWARE
    except (OSError, UnidentifiedImageError):  # a folder, a text file, an unreadable file
        return False


def plot_losses(records: list[dict], path: str | Path, unit: str = "token") -> Path | None:
    """Training and validation loss against step from metrics.jsonl records; None if no records."""
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval"]
    if not train and not val:
        return None
    figure, axes = pyplot().subplots(figsize=(7, 4))
    for points, label, style in ((train, "training", "-"), (val, "validation", "o-")):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, style, label=label, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel(f"loss (nats/{unit})")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)
