"""Seeded generators of the synthetic long-memory tasks used to show gradient flow and to train.

Both take a `torch.Generator`, so a batch is a function of (sizes, seed) alone, and return tensors
batch first, ready for a runner: `xs, targets = adding_batch(32, 100, torch.Generator().manual_seed(0))`.
"""

from __future__ import annotations

import torch

__all__ = ["adding_batch", "copy_memory_batch", "ADDING_BASELINE_MSE", "COPY_BLANK", "COPY_MARKER"]

# Predicting the constant 1 (the expected sum) scores this MSE: the variance of a sum of two U[0,1]
# values, 2/12. A model beats it only by reading the two marked values.
ADDING_BASELINE_MSE = 1.0 / 6.0

COPY_BLANK = 0  # the copy task's blank symbol
COPY_MARKER = 9  # the copy task's "now reproduce" delimiter (with 8 data symbols 1..8)


def _check(where: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1; got {value!r}")


def adding_batch(batch: int, steps: int, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; in the form of Le et al. 2015).

    Each input step is a pair (value, marker): values are U[0, 1]; exactly two markers are 1, the
    first at a uniformly random step of the first half, the second in the second half. The target is
    the sum of the two marked values, to be given after the last step, so the model must carry the
    first value across up to T steps.

    Returns xs (B, T, 2) and targets (B, 1). `steps` must be >= 2.
    """
    _check("adding_batch", batch=batch, steps=steps)
    if steps < 2:
        raise ValueError(f"adding_batch: steps must be >= 2 (one marker in each half); got {steps}")
    values = torch.rand(batch, steps, generator=generator, dtype=dtype)
    half = steps // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, steps, (batch,), generator=generator)
    markers = torch.zeros(batch, steps, dtype=dtype)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    xs = torch.stack([values, markers], dim=-1)  # (B, T, 2)
    targets = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (B, 1)
    return xs, targets


def copy_memory_batch(batch: int, delay: int, generator: torch.Generator | None = None,
                      symbols: int = 8, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy-memory task (Arjovsky, Shah & Bengio 2016, after Hochreiter & Schmidhuber 1997).

    The input is `length` symbols drawn uniformly from 1..symbols, then delay - 1 blanks (0), then
    the marker (symbols + 1), then `length` blanks; the target is blanks for the first
    delay + length steps, then the `length` symbols. Sequence length is delay + 2 * length. A
    memoryless strategy (blanks, then a uniform guess) scores cross-entropy
    length * log(symbols) / (delay + 2 * length).

    Returns token ids xs (B, delay + 2*length) and targets (same shape), both int64 in
    0..symbols + 1 (embed or one-hot them for a runner). The defaults are the paper's: 8 symbols,
    10 to copy, marker 9 (`COPY_MARKER`).
    """
    _check("copy_memory_batch", batch=batch, delay=delay, symbols=symbols, length=length)
    data = torch.randint(1, symbols + 1, (batch, length), generator=generator)
    steps = delay + 2 * length
    xs = torch.full((batch, steps), COPY_BLANK, dtype=torch.long)
    xs[:, :length] = data
    xs[:, length + delay - 1] = symbols + 1  # the marker: reproduce from the next step on
    targets = torch.full((batch, steps), COPY_BLANK, dtype=torch.long)
    targets[:, -length:] = data
    return xs, targets
