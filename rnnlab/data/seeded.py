"""Batches drawn on the fly from one seeded generator: the batch source of the synthetic tasks
(adding, copy) and of random windows cut from a series.

The batches are a function of the seed alone, and the generator's state is the whole position in
the stream, so `state_dict()` holds just that: a resumed run draws exactly the batches the
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .batches import Batch

__all__ = ["SeededBatches"]


class SeededBatches:
    """An endless iterator of `make(generator)` batches from torch.Generator().manual_seed(seed)."""

    def __init__(self, make: Callable[[torch.Generator], Batch], seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"SeededBatches: seed must be an int >= 0; got {seed!r}")
        self.make, self.seed = make, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.served = 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        self.served += 1
        return self.make(self.generator)

    def state_dict(self) -> dict:
        return {"served": self.served, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.served = int(state["served"])
        self.generator.set_state(state["generator"])
