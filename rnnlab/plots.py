"""Figures as PNG files: the one way rnnlab opens matplotlib (the Agg backend: no display needed) and
writes a figure, and a run's loss curves."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save_figure", "plot_losses"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only; no display on a server), imported at first use:
    importing rnnlab never loads matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: float = 100) -> Path:
    """Lay `figure` out, write it to `path` as a PNG of `dpi` pixels per inch (its folder created) and
    close it; returns the path."""
    path = Path(path)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path


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
