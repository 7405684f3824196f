"""`scan`: all time steps at once for cells whose update is linear in the state.

With `reads_state=False` the gates and candidate read only x and y*, so every cell of the ladder
becomes the first-order linear recurrence

    s^t = f^t * s^{t-1} + b^t        (elementwise; f^t, b^t known for all t in advance)

    residual (after):  f = 1,              b = a(z_r)
    input-gated:       f = 1,              b = sigma(z_i) a(z_r)
    forget-gated:      f = sigma(z_f),     b = sigma(z_i) a(z_r)
    LSTM:              the same for c, then h = sigma(z_o) a(c) elementwise
    GRU (minGRU):      f = sigma(z_z),     b = (1 - f) a(z_n)
    vanilla, OutputFeedbackCell: s = a(z), no recurrence at all

With f = 1 the scan is a cumulative sum. Otherwise it is solved in chunks of C ~ sqrt(T) steps
(`linear_scan`): within every chunk at once, the recurrence from a zero state and the running product
of f; then across chunks, the state entering each; then s = local + product * entering, in one pass.
That is about 2 sqrt(T) serial steps instead of T, and it only ever multiplies by f: no logarithms
or divisions by products of f, which would under- or overflow (and fail for f <= 0) over long T.
Autograd differentiates it. Past a sequence's end f = 1 and b = 0, so its state stays at the last
valid value; outputs there are zero.

Serves any ladder cell built with reads_state=False (any depth), except ResidualCell with
residual='before' (the state sits inside the activation) and zoneout.
"""

from __future__ import annotations

import math

import torch

from ..cells import (Cell, ForgetGatedCell, GRUCell, InputGatedCell, LSTMCell, OutputFeedbackCell, ResidualCell,
                     State, VanillaCell)
from .reference import valid_steps

_CELLS = (VanillaCell, OutputFeedbackCell, ResidualCell, InputGatedCell, ForgetGatedCell, LSTMCell, GRUCell)


def unavailable(cell: Cell, **context) -> str | None:
    """Why `scan` cannot run this cell; None if it can."""
    if type(cell) not in _CELLS:
        return f"scan knows the ladder's cells only; got {type(cell).__name__}"
    if cell.reads_state:
        return "scan needs an update linear in the state; build the cell with reads_state=False"
    if type(cell) is ResidualCell and cell.residual == "before":
        return "scan cannot run residual='before': the state sits inside the activation"
    if cell.zoneout:
        return "scan has no zoneout"
    return None


def linear_scan(f: torch.Tensor | None, b: torch.Tensor, s0: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """s^t = f^t * s^{t-1} + b^t for t = 0..T-1 from s^{-1} = s0. f, b (B, T, H) (f None: f = 1),
    s0 (B, H) -> s (B, T, H)."""
    if f is None:
        return s0[:, None] + b.cumsum(1)
    batch, steps, hidden = b.shape
    C = chunk or max(1, math.isqrt(steps))
    N = -(-steps // C)
    pad = N * C - steps
    if pad:  # f = 1, b = 0 past the end change nothing
        f = torch.cat([f, f.new_ones(batch, pad, hidden)], 1)
        b = torch.cat([b, b.new_zeros(batch, pad, hidden)], 1)
    f, b = f.view(batch, N, C, hidden), b.view(batch, N, C, hidden)
    decay = f.cumprod(2)  # (B, N, C, H): prod of f from the chunk's start up to each step
    fs, bs = f.unbind(2), b.unbind(2)
    local = [bs[0]]  # every chunk at once, from a zero state
    for c in range(1, C):
        local.append(torch.addcmul(bs[c], fs[c], local[-1]))
    local = torch.stack(local, 2)  # (B, N, C, H)
    entering = [s0]  # the state entering each chunk
    for n_local, n_decay in zip(local[:, :-1, -1].unbind(1), decay[:, :-1, -1].unbind(1)):
        entering.append(torch.addcmul(n_local, n_decay, entering[-1]))
    s = torch.addcmul(local, decay, torch.stack(entering, 1)[:, :, None])  # (B, N, C, H)
    return s.view(batch, N * C, hidden)[:, :steps]


def scan(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
         lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state."""
    mx = masks[0]
    if mx is not None:
        xs = xs * mx[:, None, :]
    batch, steps = xs.shape[:2]
    z = cell.preactivations(cell.project_input(xs, y_prev), None)  # (B, T, K*H), one GEMM
    act, sigma = cell.act, cell.sigma
    valid = valid_steps(lengths, steps)
    keep = None if valid is None else valid[:, :, None]  # (B, T, 1)
    rows = torch.arange(batch, device=xs.device)

    def at_last(seq):  # each sequence's value at its last valid step
        return seq[:, -1] if keep is None else seq[rows, lengths - 1]

    def masked(seq):
        return seq if keep is None else seq * keep

    kind = type(cell)
    if kind in (VanillaCell, OutputFeedbackCell):
        s = act(z)
        return masked(s), at_last(s)
    gates = dict(zip(cell.gates, z.chunk(len(cell.gates), dim=-1)))
    f = None
    if kind is ResidualCell:
        b = act(gates["r"])
    elif kind is GRUCell:
        f = sigma(gates["z"])
        b = (1 - f) * act(gates["n"])
    else:
        b = sigma(gates["i"]) * act(gates["r"])
        if "f" in gates:
            f = sigma(gates["f"])
    if keep is not None:  # frozen past the end: f = 1, b = 0
        b = b * keep
        f = None if f is None else torch.where(keep, f, torch.ones_like(f))
    if kind is LSTMCell:
        c = linear_scan(f, b, state[1])
        h = sigma(gates["o"]) * act(c)
        return masked(h), (at_last(h), c[:, -1])
    s = linear_scan(f, b, state)
    return masked(s), s[:, -1]
