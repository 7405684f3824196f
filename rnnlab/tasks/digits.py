"""Images read row by row: the recurrent network sees one row of pixels per step (T = rows,
I = columns) and names the image after the last row. The lecture's sequence to vector, on
scikit-learn's 8x8 handwritten digits (bundled) or on Fashion-MNIST's 28x28 clothes.

    x^t = row t of the image        s^t = h(x^t, s^{t-1})        y = f(s^T) = logits of the 10 classes

Splits, fixed whatever the training seed:
- digits: the 1,797 images shuffled with seed 0, then 360 for test, 180 for validation and
  1,257 for training;
- fashion: the official 10,000 test images; 5,000 of the 60,000 training images (chosen with
  seed 0) for validation, 55,000 for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cells import LADDER
from ..config import MAX_LAYERS, ConfigError, knob, validate
from ..data.batches import ExampleBatches
from ..data.images import FASHION_MNIST, load_digits, load_fashion_mnist
from ..models import SequenceToVector
from ..runners import IMPLEMENTATION_NAMES, Stacked
from ..training import TrainConfig
from .base import Task
from .cell_options import CellOptions
from .classification import classification_loss, confusion_matrix, majority_baseline, plot_confusion, predict, scores

__all__ = ["DigitsConfig", "DigitsTask", "build_model", "linear_baseline"]

DATASETS = ("digits", "fashion")
CLASS_NAMES = {"digits": [str(d) for d in range(10)],
               "fashion": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                           "Ankle boot"]}


@dataclass(frozen=True)
class DigitsConfig(CellOptions):
    """Which images, and how big the classifier is."""

    dataset: str = knob("digits", "8x8 handwritten digits (bundled) or 28x28 Fashion-MNIST (Debian's "
                                  "dataset-fashion-mnist)", DATASETS)
    root: str | None = knob(None, f"folder of the Fashion-MNIST IDX files (none: {FASHION_MNIST})")
    cell: str = knob("lstm", "cell of the ladder", tuple(c for c in LADDER if c != "feedback"))
    hidden: int = knob(128, "state size H of each layer", low=1)
    layers: int = knob(1, "stacked layers", low=1, high=MAX_LAYERS)
    dropout: float = knob(0.3, "dropout between layers and before the readout", low=0, below=1)
    batch_size: int = knob(64, "images per batch", low=1)
    implementation: str = knob("auto", "runner implementation", IMPLEMENTATION_NAMES)

    def __post_init__(self):
        validate(self)
        if self.root is not None and self.dataset != "fashion":
            raise ConfigError("DigitsConfig", "root", "None unless dataset='fashion' (the digits are bundled)",
                              self.root)


def load_splits(config: DigitsConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train', 'val', 'test'}: (images (N, rows, columns) in [0, 1], labels (N,)); see the module
    docstring for the splits."""
    if config.dataset == "digits":
        images, labels = load_digits()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        parts = {"test": order[:360], "val": order[360:540], "train": order[540:]}
        return {name: (images[i], labels[i]) for name, i in parts.items()}
    if config.root is not None and not Path(config.root).is_dir():  # the flag's error, not "not found under FILE"
        came = "is a file" if Path(config.root).exists() else "does not exist"
        raise ConfigError("DigitsConfig", "root", "a folder holding the Fashion-MNIST IDX files", config.root,
                          f", which {came}")
    try:
        (images, labels), test = load_fashion_mnist(config.root or FASHION_MNIST)
    except FileNotFoundError as error:  # a ValueError: the CLI prints it as a message, not a traceback
        raise ValueError(f"DigitsTask: {error}") from None
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return {"train": (images[order[5000:]], labels[order[5000:]]), "val": (images[order[:5000]], labels[order[:5000]]),
            "test": test}


def linear_baseline(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                    ridge: float = 1.0) -> float:
    """Test accuracy of a linear classifier on the raw pixels, fitted by ridge-regularised least
    squares to one-hot targets: the simplest model that sees the whole image at once."""
    def features(images):
        flat = images.reshape(len(images), -1).double()
        return torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], dim=1)  # (N, pixels + 1): a bias

    x, onehot = features(train[0]), nn.functional.one_hot(train[1], 10).double()
    weights = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ onehot)
    return (features(test[0]) @ weights).argmax(1).eq(test[1]).double().mean().item()


def build_model(config: DigitsConfig, columns: int) -> SequenceToVector:
    """Stacked cells reading rows of `columns` pixels -> the last step's output -> linear readout to 10 logits."""
    core = Stacked.of(LADDER[config.cell], columns, config.hidden, config.layers, implementation=config.implementation,
                      dropout=config.dropout, options=config.cell_options(config.cell))
    readout = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(core.output_size, 10))
    return SequenceToVector(core, readout, pool="last")


class DigitsTask(Task):
    """Classify images read row by row: data splits, model, batches, loss, metrics, confusion matrix."""

    description = "sequence to vector: 8x8 digits or Fashion-MNIST read row by row, accuracy vs linear"
    name = "digits"
    Config = DigitsConfig
    # One budget for both data sets, sized on a 2-core CPU (docs/RESULTS.md): 6,000 steps of 64
    # images are 7 epochs of Fashion-MNIST, which 88% needs, and 300 of the small digits, which
    # dropout keeps from overfitting (the best weights are the lowest validation loss's anyway).
    train_defaults = TrainConfig(steps=6000, max_minutes=20.0, lr=3e-3, eval_every=250, checkpoint_every=1000,
                                 clip_norm=5.0, min_lr_ratio=0.02)
    unit = "image"
    artifact_files: tuple[str, ...] = ()  # the splits are fixed; nothing learnt besides the weights

    def __init__(self, config: DigitsConfig):
        self.config = config
        self.data = load_splits(config)
        self.model = build_model(config, self.data["train"][0].shape[2])

    def batches(self, seed: int) -> ExampleBatches:
        images, labels = self.data["train"]
        return ExampleBatches(images, labels, self.config.batch_size, seed=seed)

    loss = staticmethod(classification_loss)

    def scores(self, model, split: str) -> dict[str, float]:
        """Loss (nats per image) and accuracy on 'train', 'val' or 'test'."""
        images, labels = self.data[split]
        return scores(predict(model, images), labels)

    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """Validation loss and accuracy (on all validation images, whatever `full`)."""
        return self.scores(model, "val")

    def describe(self) -> str:
        c, params = self.config, sum(p.numel() for p in self.model.parameters())
        rows, columns = self.data["train"][0].shape[1:]
        sizes = " / ".join(f"{len(self.data[s][1]):,}" for s in ("train", "val", "test"))
        return (f"{c.dataset}, {rows} steps of {columns} pixels; {c.cell} x{c.layers}, hidden {c.hidden}, "
                f"{params:,} parameters; {sizes} images (train / validation / test)")

    def report(self, model, run_dir) -> list[str]:
        """Test accuracy of `model` next to two baselines; writes confusion.png into the run directory."""
        images, labels = self.data["test"]
        logits = predict(model, images)
        test, val = scores(logits, labels), self.scores(model, "val")
        _, majority = majority_baseline(self.data["train"][1], labels)
        linear = linear_baseline(self.data["train"], self.data["test"])
        lines = [f"test accuracy {100 * test['accuracy']:.2f}% (baselines: linear least squares on the pixels "
                 f"{100 * linear:.2f}%, majority class {100 * majority:.1f}%); validation accuracy "
                 f"{100 * val['accuracy']:.2f}%"]
        if run_dir is not None:
            matrix = confusion_matrix(logits.argmax(1), labels, 10)
            path = plot_confusion(matrix, CLASS_NAMES[self.config.dataset], Path(run_dir) / "confusion.png",
                                  f"{self.config.dataset}: test accuracy {100 * test['accuracy']:.2f}%")
            lines.append(f"confusion matrix: {path}")
        return lines
