"""Batches for the Trainer, and two batch sources: the token stream of a language model and
shuffled examples of a classifier.

A `Batch` is what one optimiser step (or, with truncated BPTT, a few) learns from. `continues`
marks a batch whose rows continue the rows of the previous batch, as char-rnn's stateful batches
do: the trainer then starts it from the previous batch's final state (detached) instead of zeros.

A batch source is any iterator of batches with `state_dict()` / `load_state_dict()`, so that a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Batch", "BatchSource", "TokenStream", "ExampleBatches"]


@dataclass
class Batch:
    """inputs (B, T, ...) and targets (B, T, ...) for sequence outputs or (B, ...) for one output
    per sequence; lengths (B,) for padded batches; continues: rows go on from the previous batch."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor | None = None
    continues: bool = False

    @property
    def steps(self) -> int:
        return self.inputs.shape[1]

    def window(self, start: int, stop: int) -> Batch:
        """Time steps [start, stop) of a batch with sequence targets (for truncated BPTT)."""
        if self.lengths is not None:
            raise ValueError("Batch.window: padded batches (lengths given) cannot be cut into windows; "
                             "use truncate_every=None")
        if self.targets.dim() < 2 or self.targets.shape[1] != self.steps:
            raise ValueError(f"Batch.window: targets must be per step (B, {self.steps}, ...) to cut the batch in "
                             f"time; got {tuple(self.targets.shape)}")
        return Batch(self.inputs[:, start:stop], self.targets[:, start:stop], None,
                     self.continues or start > 0)

    def to(self, device) -> Batch:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), lengths, self.continues)


@runtime_checkable
class BatchSource(Protocol):
    """The contract of a batch source that a run can checkpoint: an iterator of `Batch` whose position
    `state_dict()` records and `load_state_dict()` restores (TokenStream, ExampleBatches)."""

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TokenStream:
    """Next-token batches from one long sequence of token ids.

    stateful=True (char-rnn): the ids are cut into `batch_size` contiguous rows, and consecutive
    batches are consecutive windows of `seq_len` steps along every row, so the state at the end of
    one batch is the right start for the next (truncated BPTT with k = seq_len). Each epoch starts
    at a different offset within the first window, drawn from the seed, so the window borders move.
    stateful=False: every batch is `batch_size` windows at random places, each from a zero state.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, stateful: bool = True):
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenStream: {name} must be an int >= 1; got {value!r}")
        if ids.dim() != 1:
            raise ValueError(f"TokenStream: ids must be 1-D (N,); got shape {tuple(ids.shape)}")
        need = batch_size * (2 * seq_len + 1) if stateful else seq_len + 1
        if len(ids) < need:
            raise ValueError(f"TokenStream: ids must hold at least {need} tokens for batch_size={batch_size} and "
                             f"seq_len={seq_len}; got {len(ids)}")
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.seed, self.stateful = seed, stateful
        self.rows = ids[: len(ids) // batch_size * batch_size].view(batch_size, -1)  # (B, N/B)
        self.epoch, self.index, self.served = 0, 0, 0

    def _generator(self, key: int) -> torch.Generator:
        """A generator for one epoch (stateful) or one batch (not): a function of seed and key
        alone, so nothing but the counters needs saving for a resume."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + key)

    def _offset(self) -> int:
        return 0 if self.epoch == 0 else int(torch.randint(self.seq_len, (1,), generator=self._generator(self.epoch)))

    def windows_per_epoch(self) -> int:
        return (self.rows.shape[1] - 1 - self._offset()) // self.seq_len

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        self.served += 1
        T = self.seq_len
        if not self.stateful:
            starts = torch.randint(len(self.ids) - T, (self.batch_size,), generator=self._generator(self.served))
            chunk = torch.stack([self.ids[s:s + T + 1] for s in starts.tolist()])  # (B, T+1)
            return Batch(chunk[:, :-1], chunk[:, 1:])
        if self.index >= self.windows_per_epoch():
            self.epoch, self.index = self.epoch + 1, 0
        start = self._offset() + self.index * T
        chunk = self.rows[:, start:start + T + 1]  # (B, T+1)
        batch = Batch(chunk[:, :-1], chunk[:, 1:], continues=self.index > 0)
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.served = int(state["epoch"]), int(state["index"]), int(state["served"])


class ExampleBatches:
    """Shuffled mini-batches of whole examples, one target each (sequence-to-vector tasks).

    inputs (N, T, ...) padded to a common T; targets (N, ...); lengths (N,) of the valid steps, or
    None when every example fills T. Each epoch visits every example once in an order drawn from
    (seed, epoch), so the counters are all a resume needs. bucket=True sorts the examples by length
    within pools of 50 batches before cutting them into batches (then shuffles the batches), so a
    batch pads little; every batch is trimmed to its longest example.
    """

    POOL = 50  # batches per sorting pool: large enough to pad little, small enough to stay random

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int = 0,
                 lengths: torch.Tensor | None = None, bucket: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ExampleBatches: batch_size must be an int >= 1; got {batch_size!r}")
        if inputs.dim() < 2 or len(inputs) == 0 or len(targets) != len(inputs):
            raise ValueError(f"ExampleBatches: inputs must be (N, T, ...) with N >= 1 and targets (N, ...); got "
                             f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
        if lengths is not None and tuple(lengths.shape) != (len(inputs),):
            raise ValueError(f"ExampleBatches: lengths must be ({len(inputs)},); got {tuple(lengths.shape)}")
        if bucket and lengths is None:
            raise ValueError("ExampleBatches: bucket=True needs lengths to sort by; got None")
        self.inputs, self.targets, self.lengths = inputs, targets, lengths
        self.batch_size, self.seed, self.bucket = batch_size, seed, bucket
        self.epoch, self.index = 0, 0
        self._cached: tuple[int, list[torch.Tensor]] | None = None

    def batches_per_epoch(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    def _epoch_order(self) -> list[torch.Tensor]:
        """The example indices of each batch of the current epoch (computed once per epoch)."""
        if self._cached is None or self._cached[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.inputs), generator=generator)
            if self.bucket:
                pool = self.POOL * self.batch_size
                pools = [chunk[torch.argsort(self.lengths[chunk], stable=True)] for chunk in order.split(pool)]
                batches = list(torch.cat(pools).split(self.batch_size))
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            else:
                batches = list(order.split(self.batch_size))
            self._cached = (self.epoch, batches)
        return self._cached[1]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self.index >= self.batches_per_epoch():
            self.epoch, self.index = self.epoch + 1, 0
        chosen = self._epoch_order()[self.index]
        self.index += 1
        if self.lengths is None:
            return Batch(self.inputs[chosen], self.targets[chosen])
        lengths = self.lengths[chosen]
        return Batch(self.inputs[chosen, : int(lengths.max())], self.targets[chosen], lengths)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
