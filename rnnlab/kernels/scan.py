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

On CPU where the compiled loops are built (compiled.py), gates and recurrence are one autograd node
(`_CellScan`: `cell_scan_forward/backward` of loops.cpp), one pass over memory each way: the
activations fused with the recurrence, differentiated from their outputs as in `fused`. Elsewhere,
or for an activation not differentiable from its output (gelu), the gates are computed for all
steps by autograd, and the recurrence itself (`linear_scan`; a cumulative sum where f = 1) is one
autograd node with a hand-written backward, itself a linear recurrence run backwards in time:

    g^t = ds^t + f^{t+1} g^{t+1}        (g^T = 0 beyond the end)
    db^t = g^t,   df^t = g^t s^{t-1},   ds^{-1} = f^0 g^0

Either direction is solved by a solver (`default_solver`): on CPU the compiled loop of `loops.cpp`
(one pass over memory; on one core a serial loop is the fastest way to a scan), or `chunked`
where none is built: chunks of C ~ sqrt(T) steps, within every chunk at once the recurrence from a
zero state and the running product of f, then across chunks the state entering each, then
s = local + product * entering (about 2 sqrt(T) serial steps, O(T) work). On an accelerator,
`doubling`: log2(T) levels, each combining every step with the one 2^k before it (O(T log T) work,
log T serial steps). All only ever multiply by f: no logarithms or divisions by products of f,
which would under- or overflow (and fail for f <= 0) over long T. Products of f can still overflow
where a gate activation lets |f| exceed 1 (relu, identity, elu), where the step-by-step recurrence
may not: where `doubling` would serve, such cells take `chunked`, whose products span one chunk.
Past a sequence's end f = 1 and b = 0, so its state stays at the last valid value; outputs there
are zero, and the padding of xs and y_prev is never read (zeros go in its place).

Serves any ladder cell built with reads_state=False (any depth), except ResidualCell with
residual='before' (the state sits inside the activation) and zoneout.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ..cells import Cell, State
from . import compiled
from .activations import BACKWARD
from .reference import valid_steps, without_padding

_FAMILIES = ("vanilla", "feedback", "residual", "input", "forget", "lstm", "gru")  # rnnlab.cells: Cell.family


def unavailable(cell: Cell, **context) -> str | None:
    """Why `scan` cannot run this cell; None if it can."""
    if cell.family not in _FAMILIES:
        return f"scan has no recurrence for the {cell.family!r} family ({type(cell).__name__})"
    if cell.reads_state:
        return "scan needs an update linear in the state; build the cell with {reads_state=False}"
    if cell.family == "residual" and cell.residual == "before":
        return "scan cannot run {residual}='before': the state sits inside the activation"
    if cell.zoneout:
        return "scan has no {zoneout}"
    return None


def linear_scan(f: torch.Tensor | None, b: torch.Tensor, s0: torch.Tensor, solver=None) -> torch.Tensor:
    """s^t = f^t * s^{t-1} + b^t for t = 0..T-1 from s^{-1} = s0. f, b (B, T, H) (f None: f = 1),
    s0 (B, H) -> s (B, T, H). solver: a function (f, b, s0) -> s that solves it without autograd
    (`compiled_loop`, `chunked`, `doubling`); by default the device's (`default_solver`)."""
    solver = solver or default_solver(b)
    if f is None:
        if solver is not compiled_loop:
            return s0[:, None] + b.cumsum(1)
        # measured (1 thread, (1, 1000, 128), forward+backward): torch's cumsum over dim 1 takes 0.57 ms,
        # the compiled loop with f = 1 0.16 ms
        f = torch.ones_like(b)
    return _LinearScan.apply(f, b, s0, solver)


class _LinearScan(torch.autograd.Function):
    """The recurrence as one node of the graph; its backward is the reverse recurrence (module doc)."""

    @staticmethod
    def forward(ctx, f, b, s0, solver):
        f, b, s0 = f.contiguous(), b.contiguous(), s0.contiguous()
        s = solver(f, b, s0)
        ctx.solver = solver
        ctx.save_for_backward(f, s, s0)
        return s

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, ds):
        f, s, s0 = ctx.saved_tensors
        ds = ds.contiguous()
        if ctx.solver is compiled_loop:
            df, db, ds0 = compiled.extension().linear_scan_backward(f, s, s0, ds)
            return df, db, ds0, None
        # g^t = ds^t + f^{t+1} g^{t+1}: the forward recurrence on time-reversed f shifted by one
        f_next = torch.cat([f[:, 1:], f.new_ones(f.shape[0], 1, f.shape[2])], 1)
        g = ctx.solver(f_next.flip(1).contiguous(), ds.flip(1).contiguous(), torch.zeros_like(s0)).flip(1)
        s_prev = torch.cat([s0[:, None], s[:, :-1]], 1)  # (B, T, H)
        return g * s_prev, g, f[:, 0] * g[:, 0], None


def default_solver(like: torch.Tensor):
    """On CPU the compiled loop where it is built (on one core a serial pass is the fastest scan),
    else `chunked` (O(T) work); on an accelerator `doubling` (log T serial steps)."""
    if like.device.type == "cpu":
        return compiled_loop if compiled.serves(like.device, like.dtype) else chunked
    return doubling


def compiled_loop(f: torch.Tensor, b: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """The recurrence as one sequential pass in C++ (`linear_scan_forward` of loops.cpp), CPU only."""
    return compiled.extension().linear_scan_forward(f, b, s0)


def doubling(f: torch.Tensor, b: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """Hillis and Steele's doubling scan: ceil(log2 T) levels, each one elementwise pass over all
    steps at once. The level of offset d combines every step t >= d with step t - d,
    (f, b)^t <- (f^t f^{t-d}, f^t b^{t-d} + b^t), so each (f, b)^t then spans 2d steps ending at t;
    after the last level, b^t is s^t (s0 is folded into the first step). O(T log T) work for
    log2 T serial steps: the schedule for a device with T-wide parallelism."""
    b = torch.cat([torch.addcmul(b[:, :1], f[:, :1], s0[:, None]), b[:, 1:]], 1)
    steps, d = b.shape[1], 1
    while d < steps:
        b = torch.cat([b[:, :d], torch.addcmul(b[:, d:], f[:, d:], b[:, :-d])], 1)
        if 2 * d < steps:  # only the next level reads the products
            f = torch.cat([f[:, :d], f[:, d:] * f[:, :-d]], 1)
        d *= 2
    return b


def chunked(f: torch.Tensor, b: torch.Tensor, s0: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The recurrence in chunks of C steps (default ~sqrt(T)): about 2 sqrt(T) serial steps, O(T) work."""
    batch, steps, hidden = b.shape
    C = chunk or max(1, math.isqrt(steps))
    N = -(-steps // C)
    pad = N * C - steps
    if pad:  # f = 1, b = 0 past the end change nothing
        f = torch.cat([f, f.new_ones(batch, pad, hidden)], 1)
        b = torch.cat([b, b.new_zeros(batch, pad, hidden)], 1)
    f, b = f.view(batch, N, C, hidden), b.view(batch, N, C, hidden)
    decay = f.cumprod(2)  # (B, N, C, H): prod of f from the chunk's start up to each step
    local = torch.empty_like(b)  # every chunk at once, from a zero state
    local[:, :, 0] = b[:, :, 0]
    for c in range(1, C):
        torch.addcmul(b[:, :, c], f[:, :, c], local[:, :, c - 1], out=local[:, :, c])
    entering = torch.empty_like(b[:, :, 0])  # (B, N, H): the state entering each chunk
    entering[:, 0] = s0
    for n in range(1, N):
        torch.addcmul(local[:, n - 1, -1], decay[:, n - 1, -1], entering[:, n - 1], out=entering[:, n])
    s = local.addcmul_(decay, entering[:, :, None])  # (B, N, C, H)
    return s.view(batch, N * C, hidden)[:, :steps]


def scan(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
         lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state."""
    mx = masks[0]
    batch, steps = xs.shape[:2]
    valid = valid_steps(lengths, steps)
    xs, y_prev = without_padding(xs, valid), without_padding(y_prev, valid)
    if mx is not None:
        xs = xs * mx[:, None, :]
    z = cell.preactivations(cell.project_input(xs, y_prev), None)  # (B, T, K*H), one GEMM
    differentiable_from_outputs = BACKWARD.keys() >= {cell.activation, cell.gate_activation}
    if cell.family in _KIND and compiled.extension_for(z) is not None and differentiable_from_outputs:
        return _cell_scan(cell, z, state, lengths)
    act, sigma = cell.act, cell.sigma
    keep = None if valid is None else valid[:, :, None]  # (B, T, 1)
    rows = torch.arange(batch, device=xs.device)

    def at_last(seq):  # each sequence's value at its last valid step
        return seq[:, -1] if keep is None else seq[rows, lengths - 1]

    def masked(seq):
        return seq if keep is None else torch.where(keep, seq, seq.new_zeros(()))

    kind = cell.family
    if kind in ("vanilla", "feedback"):
        s = act(z)
        return masked(s), at_last(s)
    gates = dict(zip(cell.gates, z.chunk(len(cell.gates), dim=-1)))
    f = None
    if kind == "residual":
        b = act(gates["r"])
    elif kind == "gru":
        f = sigma(gates["z"])
        b = (1 - f) * act(gates["n"])
    else:
        b = sigma(gates["i"]) * act(gates["r"])
        if "f" in gates:
            f = sigma(gates["f"])
    if keep is not None:  # frozen past the end: f = 1, b = 0
        b = torch.where(keep, b, b.new_zeros(()))
        f = None if f is None else torch.where(keep, f, torch.ones_like(f))
    solver = default_solver(z)
    if solver is doubling and cell.gate_activation not in _BOUNDED:
        # its products of f span up to T/2 steps and overflow where |f| > 1; chunked's one chunk
        solver = chunked
    if kind == "lstm":
        c = linear_scan(f, b, state[1], solver)
        h = sigma(gates["o"]) * act(c)
        return masked(h), (at_last(h), c[:, -1])
    s = linear_scan(f, b, state, solver)
    return masked(s), s[:, -1]


# The recurrent kinds; vanilla and OutputFeedbackCell have no recurrence here: s = a(z) in one op.
_KIND = ("residual", "input", "forget", "gru", "lstm")  # the families the compiled scan serves
_BOUNDED = ("sigmoid", "hard_sigmoid", "tanh", "hard_tanh", "softsign")  # gate activations with |f| <= 1
_READS_PREVIOUS = ("forget", "gru")  # kinds whose backward step reads s^{t-1}: only they keep the outputs


def _cell_scan(cell: Cell, z: torch.Tensor, state: State, lengths: torch.Tensor | None) -> tuple[torch.Tensor, State]:
    """Gates and recurrence in one pass over z per direction: the compiled loop (`cell_scan_*` in
    loops.cpp), the activations fused with the recurrence."""
    sizes = [] if lengths is None else lengths.tolist()
    parts = state if isinstance(state, tuple) else (state,)
    out, *finals = _CellScan.apply(cell.family, cell.activation, cell.gate_activation, sizes, z, *parts)
    return out, tuple(finals) if len(finals) > 1 else finals[0]


class _CellScan(torch.autograd.Function):
    """z (B, T, K*H) and the initial state -> outputs (B, T, H) and the final state (parts), whose
    backward runs the same loop in reverse (activations differentiated from their outputs)."""

    @staticmethod
    def forward(ctx, kind, act, sigma, sizes, z, s0, c0=None):
        batch, steps, hidden = z.shape[0], z.shape[1], s0.shape[-1]
        z = z.contiguous()
        gates = torch.empty_like(z)  # the gate values (past a length unset, and never read)
        s0 = s0.contiguous()
        c0 = c0.contiguous() if c0 is not None else None
        new = z.new_zeros if sizes else z.new_empty  # past a length the outputs stay zero
        out = new(batch, steps, hidden)
        cs, tcs = (new(batch, steps, hidden), new(batch, steps, hidden)) if c0 is not None else (None, None)
        compiled.extension().cell_scan_forward(kind, act, sigma, z, gates, s0, c0, out, cs, tcs, sizes)
        rows, last = list(range(batch)), [n - 1 for n in sizes] if sizes else [steps - 1] * batch
        finals = [part[rows, last] for part in (out, cs) if part is not None]  # copies, not views
        ctx.kind, ctx.act, ctx.sigma, ctx.sizes = kind, act, sigma, sizes
        ctx.save_for_backward(gates, out if kind in _READS_PREVIOUS else None, s0, cs, tcs, c0)
        return (out, *finals)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, d_out, *d_finals):
        gates, out, s0, cs, tcs, c0 = ctx.saved_tensors
        # the loop of each sequence starts at its last step, where the final state's gradient enters
        carries = [d.clone(memory_format=torch.contiguous_format) for d in d_finals]
        dz = torch.zeros_like(gates) if ctx.sizes else torch.empty_like(gates)
        compiled.extension().cell_scan_backward(ctx.kind, ctx.act, ctx.sigma, gates, out, s0, cs, tcs, c0,
                                                d_out.contiguous(), carries[0], carries[1] if c0 is not None else None,
                                                dz, ctx.sizes)
        return (None, None, None, None, dz, *carries)
