"""What the sequence classifiers share (sentiment, digits): the loss, batched prediction, accuracy,
the majority baseline and the confusion matrix.

A classifier here is a `SequenceToVector` model: `logits, state = model(xs, lengths=lengths)`,
logits (B, C) over C classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.batches import Batch
from ..models import Ensemble
from ..plots import pyplot, save_figure

__all__ = ["classification_loss", "predict", "scores", "majority_baseline", "confusion_matrix", "plot_confusion"]


def classification_loss(model, batch: Batch, state, teacher_forcing: float):
    """Mean cross-entropy in nats per sequence (the Trainer's loss_fn). Every batch starts from a
    zero state: the examples are independent. An `Ensemble` learns by the mean of its members' own
    losses (not the loss of their averaged prediction), so each member learns to classify alone."""
    if isinstance(model, Ensemble):
        logits = model.member_logits(batch.inputs, batch.lengths)  # (K, B, C)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.repeat(len(logits)))
        return loss, None, len(batch.targets)
    logits, _ = model(batch.inputs, lengths=batch.lengths)
    return F.cross_entropy(logits, batch.targets), None, len(batch.targets)


@torch.no_grad()
def predict(model, inputs: torch.Tensor, lengths: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
    """Logits (N, C) of N padded examples in evaluation mode, in their given order. With lengths the
    examples run sorted by length, so each batch is trimmed to little padding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = torch.arange(len(inputs)) if lengths is None else torch.argsort(lengths, stable=True)
    logits = []
    for chosen in order.split(batch_size):
        if lengths is None:
            out, _ = model(inputs[chosen].to(device))
        else:
            steps = int(lengths[chosen].max())
            out, _ = model(inputs[chosen, :steps].to(device), lengths=lengths[chosen].to(device))
        logits.append(out.float().cpu())
    model.train(was_training)
    result = torch.empty(len(inputs), logits[0].shape[1])
    result[order] = torch.cat(logits)
    return result


def scores(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy (nats per example) and accuracy (fraction correct) of logits (N, C)."""
    if logits.dim() != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"scores: logits must be (N, C) and targets (N,); got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    return {"loss": F.cross_entropy(logits, targets).item(),
            "accuracy": (logits.argmax(1) == targets).float().mean().item()}


def majority_baseline(train_targets: torch.Tensor, test_targets: torch.Tensor) -> tuple[int, float]:
    """(the most frequent training class, the test accuracy of always predicting it)."""
    majority = int(torch.bincount(train_targets).argmax())
    return majority, (test_targets == majority).float().mean().item()


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts: row = true class, column = predicted class."""
    return torch.bincount(targets * classes + predicted, minlength=classes * classes).view(classes, classes)


def plot_confusion(matrix: torch.Tensor, labels: list[str], path: str | Path, title: str) -> Path:
    """The confusion matrix as a PNG: row-normalised colours, counts written in the cells."""
    plt = pyplot()

    size = len(labels)
    rates = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * size, 0.8 + 0.6 * size))
    axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            if matrix[i, j]:
                axes.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                          color="white" if rates[i, j] > 0.5 else "black")
    axes.set_xticks(range(size), labels, rotation=45, ha="right")
    axes.set_yticks(range(size), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return save_figure(figure, path)
