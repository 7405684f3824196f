"""Loss curves of a run as a PNG (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_losses"]


def plot_losses(records: list[dict], path: str | Path, unit: str = "token") -> Path | None:
    """Training and validation loss against step from metrics.jsonl records; None if no records."""
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "training", "-"), (val, "validation", "o-")):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, style, label=label, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel(f"loss (nats/{unit})")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
