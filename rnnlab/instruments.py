"""Instruments: what rnnlab complexity measures with, each usable on its own.

- `fit_exponent`: the growth exponent of a quantity against T (the slope on log-log axes);
- `ops_per_step`: the longest chain of dependent ATen ops inside one cell step, counted by tagging
  tensors under a dispatch mode;
- `SavedTensorTracker`: the bytes autograd holds for backward, over time, by saved-tensor hooks;
- `peak_allocated`: the most bytes allocated at once during a call (CUDA's allocator statistics,
  or the CPU profiler's allocation records).

Two of them lean on torch APIs that are not public (`torch.utils._python_dispatch`,
`torch.utils._pytree`, the profiler's raw kineto records): they are kept here, in one place, so
a torch release that moves them breaks this module alone.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .cells import Cell

__all__ = ["fit_exponent", "ops_per_step", "SavedTensorTracker", "peak_allocated"]


def fit_exponent(steps, values) -> float:
    """Least-squares slope of log(value) against log(T): the growth exponent p of value ~ T^p.

    A quantity that is the same at every T (zero included: nothing saved for backward) fits as
    exponent 0 exactly. Other values <= 0 are raised to the smallest positive one, as log needs."""
    steps, values = list(steps), [float(v) for v in values]
    if len(steps) < 2 or len(steps) != len(values):
        raise ValueError(f"fit_exponent: needs at least two (T, value) pairs; "
                         f"got {len(steps)} T and {len(values)} values")
    if len(set(steps)) < 2:
        raise ValueError(f"fit_exponent: needs at least two distinct T; got {steps}")
    if len(set(values)) == 1:
        return 0.0
    floor = min(v for v in values if v > 0) if any(v > 0 for v in values) else 1.0
    xs = [math.log(t) for t in steps]
    ys = [math.log(max(v, floor)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


class _ChainDepth(TorchDispatchMode):
    """Tags every tensor with the number of non-view ops on the longest chain that produced it."""

    def __init__(self):
        super().__init__()
        self.depth: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while the mode is on

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        depth = max((self.depth.get(id(a), 0) for a in inputs), default=0) + (0 if func.is_view else 1)
        for o in tree_leaves(out):
            if isinstance(o, torch.Tensor):
                self.depth[id(o)] = depth
                self.alive.append(o)
        return out


def ops_per_step(cell: Cell, batch: int = 1) -> int:
    """Length of the longest chain of dependent ops inside one step of the cell, from s^{t-1} to s^t.

    Counted, not assumed: one step runs under a dispatch mode that gives every tensor the length of
    the longest chain of (non-view) ATen ops behind it. For the LSTM: two products, their sum, the
    gates, f*s, the add, tanh(s), o*tanh(s): 7. Ops that are independent of each other (the four gate
    activations) count once, because they could run at the same time."""
    x = torch.zeros(batch, cell.input_size)
    y_prev = torch.zeros(batch, cell.feedback_size) if cell.feedback_size else None
    state = cell.initial_state(batch)
    with torch.no_grad(), _ChainDepth() as mode:
        _, new = cell.step(x, state, y_prev)
    return max(mode.depth.get(id(part), 0) for part in (new if isinstance(new, tuple) else (new,)))


class SavedTensorTracker:
    """Bytes autograd holds for backward, over time: enter around a forward and backward.

    Each tensor autograd saves goes through the pack hook, which wraps it in a small holder; when
    autograd frees the graph node (after its backward, or when the graph dies) the holder dies and
    its bytes are released. Storages are counted once however many saved tensors view them, and
    storages in `external` (inputs, parameters: they exist anyway) not at all. `peak` is the most
    bytes held at any moment."""

    class _Holder:
        __slots__ = ("tensor", "__weakref__")

    def __init__(self, external=()):
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.count: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor):
        holder = self._Holder()
        holder.tensor = tensor
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.external:
            if self.count.get(key, 0) == 0:
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.count[key] = self.count.get(key, 0) + 1
            weakref.finalize(holder, self._release, key, storage.nbytes())
        return holder

    def _release(self, key: int, nbytes: int) -> None:
        self.count[key] -= 1
        if self.count[key] == 0:
            self.current -= nbytes

    @staticmethod
    def _unpack(holder):
        return holder.tensor

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto writes a line to the C-level stderr each time a profile starts and stops; over a sweep
    that buries the table. Python errors still surface: they propagate as exceptions."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter): nothing to silence
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_allocated(step: Callable[[], None], device: str) -> int:
    """Most bytes allocated at once while `step()` runs, above what was allocated before it.

    CUDA: the caching allocator's max_memory_allocated. CPU: the profiler's allocation records
    (each allocation and free with its size and time), summed in time order. Garbage left by
    earlier work is collected first: its frees during the step would otherwise count against the
    step's own allocations and understate the peak."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # The raw records: the parsed event list folds allocations inside an op into the op's totals.
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for record in records:
        current += record.nbytes()
        peak = max(peak, current)
    return peak
