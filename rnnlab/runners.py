"""Runners unroll cells over time: `Recurrent(cell)`, and compositions of runners, `Stacked` and
`Bidirectional`.

One calling convention for every runner:

    ys, state = runner(xs, state=None, y_prev=None, lengths=None)

xs (B, T, I) batch first; y_prev (B, T, O) is y^{t-1} already aligned for step t (teacher forcing:
`shift_right(targets)`); lengths (B,) for padded batches: outputs past a sequence's end are zero
and the final state is the state at its last valid step. Runners that can (not `Bidirectional`)
also step once at a time, `runner.step(x_t, state, y_prev_t, masks)`, which is what the model's
free-running loop uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .cells import Cell, State, _describe
from .checks import check_flag, check_number, check_tensor_like
from .init import Regularized

__all__ = ["Runner", "Recurrent", "Stacked", "Bidirectional", "shift_right", "reverse_padded", "check_sequence",
           "check_implementations", "stepwise_activity"]

IMPLEMENTATION_NAMES = ("auto", "reference", "fused", "native", "scan")


def shift_right(y: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, O) targets -> y_prev with y_prev[:, t] = y[:, t-1] and y_prev[:, 0] = first (zeros)."""
    if not isinstance(y, torch.Tensor) or y.dim() < 2:
        raise ValueError(f"shift_right: y must be (B, T, ...); got {_describe(y)}")
    step = (y.shape[0], *y.shape[2:])  # what y[:, 0] is; (B, 1, ...) is taken too
    if first is not None and (not isinstance(first, torch.Tensor)
                              or tuple(first.shape) not in (step, tuple(y[:, :1].shape))):
        # a reshape took any tensor of as many elements, mixing the rows of a (O, B) one silently
        raise ValueError(f"shift_right: first must be y[:, 0]'s shape {step}; got {_describe(first)}")
    start = torch.zeros_like(y[:, :1]) if first is None else first.reshape(y[:, :1].shape).to(y)
    return torch.cat([start, y[:, :-1]], dim=1)


def reverse_padded(xs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence within its own length; padding stays at the end."""
    if lengths is None:
        return xs.flip(1)
    steps = xs.shape[1]
    t = torch.arange(steps, device=xs.device)[None, :]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return xs.gather(1, index[:, :, None].expand_as(xs))


def check_sequence(where: str, xs, input_size: int, lengths, y_prev, feedback_size: int,
                   weight: torch.Tensor | None = None):
    """Entry checks shared by every runner; returns lengths as a long tensor on xs's device (or None).
    weight: one of the runner's parameters, whose dtype and device xs and y_prev must have."""
    if not isinstance(xs, torch.Tensor) or xs.dim() != 3 or xs.shape[2] != input_size:
        raise ValueError(f"{where}: xs must be (B, T, {input_size}); got {_describe(xs)}")
    if not xs.is_floating_point():
        raise ValueError(f"{where}: xs must be a floating-point tensor; got dtype {xs.dtype}")
    if weight is not None:
        check_tensor_like(where, "xs", xs, weight)
    batch, steps = xs.shape[:2]
    if batch == 0 or steps == 0:
        raise ValueError(f"{where}: xs must hold at least one sequence of at least one step; got {tuple(xs.shape)}")
    if y_prev is not None:
        if not feedback_size:
            raise ValueError(f"{where}: y_prev given but the cells have no output feedback (feedback_size=0)")
        if not isinstance(y_prev, torch.Tensor) or tuple(y_prev.shape) != (batch, steps, feedback_size):
            raise ValueError(f"{where}: y_prev must be ({batch}, {steps}, {feedback_size}); got {_describe(y_prev)}")
        if weight is not None:
            check_tensor_like(where, "y_prev", y_prev, weight)
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"{where}: lengths must be an integer tensor ({batch},); got {_describe(lengths)}")
    lengths = lengths.to(device=xs.device, dtype=torch.long)
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > steps:
        raise ValueError(f"{where}: lengths must lie in [1, {steps}]; got values from {low} to {high}")
    return lengths


class Runner(nn.Module, ABC):
    """The runner contract: sizes, state, one checked `forward` (the calling convention), then `unroll`.

    A runner declares `input_size` (I), `output_size` (what its ys hold per step) and
    `feedback_size` (O of the y_prev it reads; 0 without feedback), makes and checks its state
    (`initial_state`, `check_state`), and runs the sequence (`unroll`) or, where it can, one step
    (`sample_masks` then `step`: the model's free-running loop)."""

    input_size: int
    output_size: int
    feedback_size: int

    @abstractmethod
    def initial_state(self, batch: int, device=None, dtype=None):
        """The zero state for `batch` sequences."""

    @abstractmethod
    def check_state(self, state, batch: int, where: str):
        """The state, checked against this runner (ValueError naming `where` otherwise)."""

    @abstractmethod
    def sample_masks(self, batch: int, like: torch.Tensor):
        """The dropout masks of one sequence (one per sequence: variational), for `step`."""

    @abstractmethod
    def step(self, x_t, state, y_prev_t=None, masks=None):
        """One time step: (output (B, output_size), new state)."""

    def forward(self, xs, state=None, y_prev=None, lengths=None):
        where = type(self).__name__
        lengths = check_sequence(where, xs, self.input_size, lengths, y_prev, self.feedback_size,
                                 self.example_weight())
        if self.feedback_size and y_prev is None:
            raise ValueError(f"{where}: the cells feed back their output (feedback_size={self.feedback_size}), so "
                             f"y_prev (B, T, {self.feedback_size}) is required; to run free, feeding back the "
                             f"readout's own outputs, use rnnlab.RecurrentModel")
        batch = xs.shape[0]
        if state is None:
            state = self.initial_state(batch, xs.device, xs.dtype)
        else:
            state = self.check_state(state, batch, where)
        return self.unroll(xs, state, y_prev, lengths)

    def example_weight(self) -> torch.Tensor:
        """One parameter of the runner: its dtype and device are the ones inputs and state must have."""
        return next(self.parameters())

    @abstractmethod
    def unroll(self, xs, state, y_prev, lengths):
        """Unchecked forward: the caller checked the arguments."""


class Recurrent(Runner, Regularized):
    """Unroll a cell over time: the lecture's figures "RNN model, unrolled T steps".

    `ys, state = Recurrent(cell)(xs, state, y_prev, lengths)` computes what this loop computes (it
    is `kernels.reference`, the oracle every faster implementation is tested against):

        masks = cell.sample_masks(B, xs)          # one dropout mask per sequence (training only)
        for t in range(T):
            zx = cell.project_input(xs[:, t] * mask_x, y_prev[:, t])      # U x + W y* + b_ih  (B, K*H)
            zh = cell.project_state(cell.read(state) * mask_s)            # V s + b_hh  (B, K*H) or None
            new = cell.combine(zx, zh, state)                             # the cell's equations (+ zoneout)
            out = cell.output(new)                                        # (B, H)
            if t >= lengths: out, new = 0, state                          # past a sequence's end
            ys[:, t], state = out, new
        return ys, state                                                  # (B, T, H), s^T

    xs (B, T, I); y_prev (B, T, O), the fed-back y^{t-1} at step t, when the cell has feedback;
    lengths (B,) or None (all T); state None: the cell's zero state.

    Args:
        cell: any `Cell` of the ladder.
        implementation: 'auto' (default: the first of `rnnlab.kernels.order` that serves the call, an
            order measured fastest first), 'reference' (the step loop: the oracle), or a fast path of
            `rnnlab.kernels` ('fused', 'native', 'scan'; `IMPLEMENTATION_NAMES`).
    The cell's `regularizers.activity`, if set, penalises the outputs of the last forward
    (`penalty()`, summed by `rnnlab.regularization_loss`).
    """

    def __init__(self, cell: Cell, implementation: str = "auto"):
        super().__init__()
        if not isinstance(cell, Cell):
            torch_cell = isinstance(cell, nn.RNNCellBase)
            hint = " (rnnlab.from_torch_cell converts a torch.nn cell)" if torch_cell else ""
            raise TypeError(f"Recurrent: cell must be an rnnlab Cell such as rnnlab.LSTMCell{hint}; "
                            f"got {type(cell).__module__}.{type(cell).__name__}")
        if implementation not in IMPLEMENTATION_NAMES:
            raise ValueError(f"Recurrent: implementation must be one of {IMPLEMENTATION_NAMES}; got {implementation!r}")
        self.cell, self.implementation = cell, implementation
        self._activity: torch.Tensor | None = None

    input_size = property(lambda self: self.cell.input_size)
    output_size = property(lambda self: self.cell.output_size)  # H, or the projected LSTM's P
    feedback_size = property(lambda self: self.cell.feedback_size)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return self.cell.initial_state(batch, device=device, dtype=dtype)

    def example_weight(self) -> torch.Tensor:
        return self.cell.weight_ih  # every cell has it (I = 0 included); next(parameters()) walks the modules

    def check_state(self, state, batch: int, where: str):
        self.cell.check_state(state, batch, where)
        return tuple(state) if isinstance(state, list) else state

    def sample_masks(self, batch: int, like: torch.Tensor):
        return self.cell.sample_masks(batch, like)

    _stepped: list | None = None  # the outputs of `step` while a model steps with `stepwise_activity`

    def step(self, x_t, state, y_prev_t=None, masks=(None, None)):
        out, state = self.cell.step(x_t, state, y_prev_t, masks)
        if self._stepped is not None:
            self._stepped.append(out)
        return out, state

    def unroll(self, xs, state, y_prev, lengths):
        """Unchecked forward (the caller checked): dispatch to the chosen implementation."""
        masks = self.cell.sample_masks(xs.shape[0], xs)
        ys, state = kernels.run(self.cell, xs, state, y_prev, lengths, masks, self.implementation)
        activity = self.cell.regularizers.activity
        self._activity = activity(ys) / ys.shape[0] if activity is not None and self.training else None
        return ys, state

    def penalty(self):
        return self._activity

    def __getstate__(self):
        # the last forward's activity penalty lies in that forward's graph: no part of the model, and
        # copy.deepcopy of a model after a training forward failed on it (a non-leaf tensor)
        state = super().__getstate__()
        return {**state, "_activity": None, "_stepped": None}

    def extra_repr(self):
        return f"implementation={self.implementation!r}"


def check_implementations(model: nn.Module) -> None:
    """The ValueError a forward pass would raise where a runner of `model` was given an implementation
    that cannot run its cell, in training (with the cell's dropout masks) or in evaluation: raised
    now, so that a run refuses such flags before it writes anything, not at its first step."""
    for runner in model.modules():
        if not isinstance(runner, Recurrent) or runner.implementation == "auto":
            continue
        cell = runner.cell
        device = runner.example_weight().device.type
        for training in (True, False):
            masks = tuple(torch.ones(1) if training and p else None for p in (cell.dropout, cell.recurrent_dropout))
            kernels.choose(cell, runner.implementation, feedback=bool(cell.feedback_size), lengths=False,
                           masks=masks, training=training, device=device)


class Stacked(Runner):
    """Depth by stacking: each runner reads the outputs of the one below.

    Args:
        runners: the layers, bottom first (`Recurrent` or `Bidirectional`).
        dropout: dropout on the outputs between layers (not after the last), as torch.nn.LSTM's.
        residual: add each layer's input to its output where the sizes match (from layer 2 up).
    y_prev goes to every layer whose cells have output feedback. The state is a tuple with one
    entry per layer.
    """

    def __init__(self, *runners: Runner, dropout: float = 0.0, residual: bool = False):
        super().__init__()
        if not runners:
            raise ValueError("Stacked: needs at least one runner; got none")
        for i, runner in enumerate(runners):
            if not isinstance(runner, Runner):
                hint = " (wrap a cell in Recurrent(cell))" if isinstance(runner, Cell) else ""
                raise TypeError(f"Stacked: every layer must be a runner (Recurrent, Bidirectional, Stacked){hint}; "
                                f"layer {i} is {type(runner).__name__}")
        check_number("Stacked", "dropout", dropout)
        check_flag("Stacked", "residual", residual)
        for below, above in zip(runners, runners[1:]):
            if below.output_size != above.input_size:
                raise ValueError(f"Stacked: a layer with input_size {above.input_size} cannot read a layer with "
                                 f"output_size {below.output_size}")
            if residual and below.output_size != above.output_size:
                raise ValueError(f"Stacked: residual=True needs equal sizes between layers; got "
                                 f"{below.output_size} -> {above.output_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Stacked: dropout must be in [0, 1); got {dropout!r}")
        fb = {r.feedback_size for r in runners if r.feedback_size}
        if len(fb) > 1:
            raise ValueError(f"Stacked: every layer with feedback must take the same feedback_size; got {sorted(fb)}")
        self.layers = nn.ModuleList(runners)
        self.dropout, self.residual = dropout, residual

    @classmethod
    def of(cls, cell_type: type[Cell], input_size: int, hidden_size: int, num_layers: int = 1, *,
           feedback_size: int = 0, feedback_layers: str = "first", implementation: str = "auto",
           dropout: float = 0.0, residual: bool = False, options: dict | None = None, **cell_options) -> Stacked:
        """num_layers cells of one type; the output feedback enters the first layer ('first') or all.
        `dropout` is between layers; the cells' own options come as keywords or as the dict `options`
        (where a cell option shares a name with one of these, e.g. the cell's input `dropout`)."""
        cell_options = {**(options or {}), **cell_options}
        if not (isinstance(cell_type, type) and issubclass(cell_type, Cell)):  # torch.nn.LSTM would fail naming nothing
            raise TypeError(f"Stacked.of: cell_type must be a cell class such as rnnlab.LSTMCell; got {cell_type!r}")
        check_number("Stacked.of", "num_layers", num_layers, integer=True)
        if num_layers < 1:
            raise ValueError(f"Stacked.of: num_layers must be an int >= 1; got {num_layers}")
        if feedback_layers not in ("first", "all"):
            raise ValueError(f"Stacked.of: feedback_layers must be 'first' or 'all'; got {feedback_layers!r}")
        layers = []
        for i in range(num_layers):
            fb = feedback_size if (i == 0 or feedback_layers == "all") else 0
            cell = cell_type(input_size if i == 0 else layers[-1].output_size, hidden_size, fb, **cell_options)
            layers.append(Recurrent(cell, implementation))
        return cls(*layers, dropout=dropout, residual=residual)

    input_size = property(lambda self: self.layers[0].input_size)
    output_size = property(lambda self: self.layers[-1].output_size)
    feedback_size = property(lambda self: max(r.feedback_size for r in self.layers))

    def initial_state(self, batch, device=None, dtype=None):
        return tuple(r.initial_state(batch, device, dtype) for r in self.layers)

    def check_state(self, state, batch, where):
        if not isinstance(state, (tuple, list)) or len(state) != len(self.layers):
            raise ValueError(f"{where}: state must be a tuple with one entry per layer ({len(self.layers)}); "
                             f"got {_describe(state)}")
        return tuple(r.check_state(s, batch, f"{where} layer {i}") for i, (r, s) in enumerate(zip(self.layers, state)))

    def sample_masks(self, batch, like):
        return [r.sample_masks(batch, like) for r in self.layers]

    def _between(self, i, inp, out):
        if i + 1 < len(self.layers):
            out = F.dropout(out, self.dropout, self.training) if self.dropout else out
        if self.residual and i > 0:
            out = out + inp
        return out

    def step(self, x_t, state, y_prev_t=None, masks=None):
        masks = masks or [(None, None)] * len(self.layers)
        new_state = []
        for i, (layer, s, m) in enumerate(zip(self.layers, state, masks)):
            out, s = layer.step(x_t, s, y_prev_t if layer.feedback_size else None, m)
            new_state.append(s)
            x_t = self._between(i, x_t, out)
        return x_t, tuple(new_state)

    def unroll(self, xs, state, y_prev, lengths):
        new_state = []
        for i, (layer, s) in enumerate(zip(self.layers, state)):
            out, s = layer.unroll(xs, s, y_prev if layer.feedback_size else None, lengths)
            new_state.append(s)
            xs = self._between(i, xs, out)
        return xs, tuple(new_state)


MERGES = ("concat", "sum", "mean", "mul")


class Bidirectional(Runner):
    """Two runners over the same sequence, one reading it backwards (within each sequence's length).

    Args:
        forward_runner, backward_runner: runners of the same input size.
        merge: how the two outputs at each step combine: 'concat' (default), 'sum', 'mean', 'mul'.
    The state is (forward_state, backward_state); y_prev, if the cells feed back, is reversed for
    the backward runner like xs.
    """

    def __init__(self, forward_runner: nn.Module, backward_runner: nn.Module, merge: str = "concat"):
        super().__init__()
        for name, runner in (("forward_runner", forward_runner), ("backward_runner", backward_runner)):
            if not isinstance(runner, Runner):
                raise TypeError(f"Bidirectional: {name} must be a runner (Recurrent, Stacked); "
                                f"got {type(runner).__name__}")
        if merge not in MERGES:
            raise ValueError(f"Bidirectional: merge must be one of {MERGES}; got {merge!r}")
        if forward_runner.input_size != backward_runner.input_size:
            raise ValueError(f"Bidirectional: both runners must take the same input_size; got "
                             f"{forward_runner.input_size} and {backward_runner.input_size}")
        if merge != "concat" and forward_runner.output_size != backward_runner.output_size:
            raise ValueError(f"Bidirectional: merge={merge!r} needs equal output sizes; got "
                             f"{forward_runner.output_size} and {backward_runner.output_size}")
        if forward_runner.feedback_size != backward_runner.feedback_size:
            raise ValueError("Bidirectional: both runners must take the same feedback_size")
        self.forward_runner, self.backward_runner, self.merge = forward_runner, backward_runner, merge

    input_size = property(lambda self: self.forward_runner.input_size)
    feedback_size = property(lambda self: self.forward_runner.feedback_size)

    @property
    def output_size(self):
        f, b = self.forward_runner.output_size, self.backward_runner.output_size
        return f + b if self.merge == "concat" else f

    def initial_state(self, batch, device=None, dtype=None):
        return (self.forward_runner.initial_state(batch, device, dtype),
                self.backward_runner.initial_state(batch, device, dtype))

    def check_state(self, state, batch, where):
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{where}: state must be (forward_state, backward_state); got {_describe(state)}")
        return (self.forward_runner.check_state(state[0], batch, f"{where} forward"),
                self.backward_runner.check_state(state[1], batch, f"{where} backward"))

    def sample_masks(self, batch, like):
        raise ValueError("Bidirectional: cannot run one step at a time; its backward half needs the whole sequence")

    def step(self, x_t, state, y_prev_t=None, masks=None):
        return self.sample_masks(0, x_t)

    def unroll(self, xs, state, y_prev, lengths):
        fwd, fs = self.forward_runner.unroll(xs, state[0], y_prev, lengths)
        y_rev = reverse_padded(y_prev, lengths) if y_prev is not None else None
        bwd, bs = self.backward_runner.unroll(reverse_padded(xs, lengths), state[1], y_rev, lengths)
        bwd = reverse_padded(bwd, lengths)
        if self.merge == "concat":
            out = torch.cat([fwd, bwd], dim=-1)
        elif self.merge == "sum":
            out = fwd + bwd
        elif self.merge == "mean":
            out = (fwd + bwd) / 2
        else:
            out = fwd * bwd
        return out, (fs, bs)


@contextmanager
def stepwise_activity(core: nn.Module, valid: torch.Tensor | None):
    """Around a forward that calls `core.step` once per step (free running, scheduled sampling):
    each `Recurrent`'s activity penalty becomes that of the outputs of these steps, zero past `valid`
    (B, T), as `unroll` records it. Without it the penalty of an earlier forward stayed, a stale term
    (or a graph already freed by its backward) in `regularization_loss`."""
    runners = [r for r in core.modules() if isinstance(r, Recurrent)]
    for r in runners:
        r._activity = None
        r._stepped = [] if r.cell.regularizers.activity is not None and r.training else None
    try:
        yield
    except BaseException:
        for r in runners:
            r._stepped = None
        raise
    for r in runners:
        stepped, r._stepped = r._stepped, None
        if stepped:
            ys = torch.stack(stepped, 1)
            if valid is not None:
                ys = torch.where(valid[..., None], ys, ys.new_zeros(()))
            r._activity = r.cell.regularizers.activity(ys) / ys.shape[0]
