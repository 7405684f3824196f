"""`fused`: every ladder cell as one GEMM for the input, one GEMM per step, and a hand-written
backward through time.

Forward, for z^t = Zx^t + V s_read^{t-1} (+ b_hh):
  1. Zx = [x, y_prev] [U, W]^T + b for all B*T rows at once (the feedback y* is known under teacher
     forcing, so W y* is hoisted with U x). This matrix product is left to autograd.
  2. One `addmm` per step for V s_read, the gate arithmetic in place in preallocated buffers.
Backward (`_Loop`), from the gate values the forward kept (activations differentiated from their
outputs, see `activations.py`):
  3. per step, dz^t from ds^t, and ds^{t-1} = (direct term) + dz^t V: one GEMM per step;
  4. after the loop, dV = sum_t dz^t^T s_read^{t-1} as ONE (K*H x B*T) (B*T x H) product (time_major:
     `weight_grad`); dU, dW, dx and dy* come from autograd through step 1, also one product each.

`lengths`: the batch is sorted by length (descending) so that at step t the sequences still running
are the first n_t rows; each step works on those rows only, so a finished sequence's state stays
at its last valid value and its outputs stay zero, as in `reference`, at no extra cost per step.
The padding of xs and y_prev is replaced by zeros first: the one input GEMM and dU read every step.

The loops of steps 2 and 3 run in C++ (`loops.cpp`, see `compiled.py`) on CPU where the extension
is built, for every cell, and in Python otherwise: the same
buffers and equations, without Python's per-operation overhead at every step. On CUDA the Python
loops are captured as CUDA graphs and replayed (`graphs.py`), so that a loop costs one launch.

Serves every ladder cell with depth 1, no zoneout, and activations differentiable from their output
(all but gelu); input and recurrent dropout masks are applied (x * mx before step 1, s * mh where
the gates read s). Under no_grad the per-step buffers are one step long (memory constant in T
besides the outputs).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..cells import Cell, State
from . import compiled, fused_cells, graphs
from .activations import BACKWARD, FORWARD
from .time_major import (
    by_length,
    input_grads,
    inputs_and_weight,
    kept_inputs,
    product,
    steps_multiply_inputs,
    weight_grad,
)

# The families each loop serves (rnnlab.cells: Cell.family); the output-feedback cell is a vanilla cell.
_GATED = {"vanilla": "vanilla", "feedback": "vanilla", "residual": "residual", "input": "input", "forget": "forget"}


def unavailable(cell: Cell, **context) -> str | None:
    """Why `fused` cannot run this cell; None if it can (the LSTMs users ask torch for, peephole,
    layer-norm and projected, have their loops in fused_cells.py, under the same conditions)."""
    if cell.family not in _GATED and cell.family not in ("lstm", "gru", *fused_cells.FAMILIES):
        return f"fused has no loop for the {cell.family!r} family ({type(cell).__name__})"
    if cell.depth > 1:
        return "fused has no deep transition ({depth} > 1)"
    if cell.zoneout:
        return "fused has no {zoneout}"
    for arg in ("activation", "gate_activation"):
        if getattr(cell, arg) not in BACKWARD:
            return (f"fused differentiates activations from their outputs, "
                    f"which {{{arg}}}={getattr(cell, arg)!r} does not allow")
    return None


def fused(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
          lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state."""
    if cell.family in fused_cells.FAMILIES:
        return fused_cells.fused(cell, xs, state, y_prev, lengths, masks)
    parts = state if isinstance(state, tuple) else (state,)
    xs, y_prev, (mx, mh, *parts), sizes, last, unsort = by_length(xs, y_prev, lengths, (*masks, *parts))
    parts = tuple(parts)
    inputs, weight = inputs_and_weight(cell, xs, y_prev, mx)
    gru = cell.family == "gru" and cell.reads_state
    bias, bias_hh = cell.bias_ih, cell.bias_hh
    if bias_hh is not None and not gru:  # b_hh adds to every gate alike: fold it into the one GEMM
        bias, bias_hh = bias + bias_hh, None

    loop = _LSTM(cell) if cell.family == "lstm" else _GRU(cell) if cell.family == "gru" else _Gated(cell)
    tensors = (inputs, weight, bias, cell.weight_hh, bias_hh, mh) + parts
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    hs, *final = _Loop.apply(loop, sizes, last, save, *tensors)
    ys = hs.transpose(0, 1)  # (B, T, H)
    if unsort is not None:
        ys, final = ys.index_select(0, unsort), [f.index_select(0, unsort) for f in final]
    return ys, tuple(final) if len(final) > 1 else final[0]


class _Loop(torch.autograd.Function):
    """The input GEMM and the time loop of one cell family, with its backward through time."""

    @staticmethod
    def forward(ctx, loop, sizes, last, save, inputs, weight, bias, weight_hh, bias_hh, mh, *state0):
        steps, batch = inputs.shape[:2]
        ctx.loop, ctx.sizes, ctx.last = loop, sizes, last
        tape = _Tape(steps, sizes, last)
        if compiled.extension_for(inputs) is not None and steps_multiply_inputs(inputs, weight, weight_hh):
            # The C++ steps compute Zx = [x, y*] [U, W]^T a step at a time, in one product with V s'
            # (loops.cpp: Stacked), and add the bias in their pass over the gates: Zx of all steps is
            # never written out and read back. Without grad the gates are a ring of one step. They read
            # the inputs where they are (batch-first x seen time-major) and, for the backward's
            # products, write the time-major copy as they go (`kept_inputs`).
            if save and tape.sizes is not None:  # the steps read only the running rows: the backward's copy first
                inputs = inputs.contiguous()
            inputs, kept = kept_inputs(inputs, save)
            gates = tape.new(inputs, weight.shape[0], keep=save or _one_buffer(loop, tape))
            bias = None if bias is None else bias.contiguous()
            buffers = loop.forward(tape, gates, weight_hh, bias_hh, mh, state0, save, (bias, inputs, weight, kept))
            inputs = inputs if kept is None else kept
        elif compiled.extension_for(inputs) is not None:
            inputs = inputs.contiguous()
            # Zx for all steps in one product (oneDNN's), without its bias, which the C++ steps add in
            # their pass over the gates (addmm would first copy it to every row of every step)
            zx = product(inputs.reshape(steps * batch, -1), weight.t()).view(steps, batch, -1)
            bias = None if bias is None else bias.contiguous()
            buffers = loop.forward(tape, zx, weight_hh, bias_hh, mh, state0, save, (bias,))
        else:
            inputs = inputs.contiguous()
            flat = inputs.reshape(steps * batch, -1)  # (T*B, I + O)
            # Zx for all steps in one GEMM; the loop then turns it into the gate values in place
            zx = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
            zx = zx.view(steps, batch, -1)
            if graphs.enabled(zx):  # one CUDA graph for the whole loop (graphs.py)
                buffers = graphs.replay((_key(loop), "forward", tuple(sizes or ()), save),
                                        lambda zx, w, b, m, *s0: loop.forward(tape, zx, w, b, m, s0, save),
                                        zx, weight_hh, bias_hh, mh, *state0)
            else:
                buffers = loop.forward(tape, zx, weight_hh, bias_hh, mh, state0, save)
        finals = [tape.final(b) for b in buffers[:len(state0)]]
        if save:
            ctx.save_for_backward(inputs, weight, weight_hh, mh, *state0, *buffers)
        return (buffers[0], *finals)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, d_outputs, *d_finals):
        loop, tape, needs = ctx.loop, _Tape(d_outputs.shape[0], ctx.sizes, ctx.last), ctx.needs_input_grad
        inputs, weight, weight_hh, mh, *rest = ctx.saved_tensors
        state0, buffers = rest[:len(d_finals)], rest[len(d_finals):]
        if graphs.enabled(d_outputs):
            n = len(d_finals)
            dz, *grads = graphs.replay(
                (_key(loop), "backward", tuple(ctx.sizes or ()), needs, n),
                lambda d, w, m, *rest: loop.backward(tape, d, rest[:n], w, m, rest[n:2 * n], rest[2 * n:], needs),
                d_outputs, weight_hh, mh, *d_finals, *state0, *buffers)
        else:
            dz, *grads = loop.backward(tape, d_outputs, d_finals, weight_hh, mh, state0, buffers, needs)
        # dx, dU and db over all steps: one product (or sum) each
        d_inputs, d_weight = input_grads(dz, inputs, weight, needs[4], needs[5])
        d_bias = dz.view(-1, dz.shape[-1]).sum(0) if needs[6] else None
        return (None, None, None, None, d_inputs, d_weight, d_bias) + tuple(grads)


class _Tape:
    """Per-step views of (T, B, ...) buffers, cut to the n_t rows still running at step t."""

    def __init__(self, steps: int, sizes: list[int] | None, last: torch.Tensor | None):
        self.steps, self.sizes, self.last = steps, sizes, last  # last: (B,) each sequence's last step

    def rows(self, views):
        return views if self.sizes is None else [v[:n] for v, n in zip(views, self.sizes)]

    def steps_of(self, buffer):
        """Views for t = 0..T-1; a buffer shorter than T (no_grad) is cycled through."""
        views = buffer.unbind(0)
        views = (views * -(-self.steps // len(views)))[:self.steps]
        return self.rows(views)

    def previous(self, first, buffer):
        """The state read at step t: `first` at t = 0, then the buffer's step t - 1."""
        views = buffer.unbind(0)
        views = ((first,) + views * -(-self.steps // len(views)))[:self.steps]
        return self.rows(views)

    def same(self, tensor):
        """One (B, ...) tensor (a mask, a carry) cut to n_t rows for each step."""
        return self.rows((tensor,) * self.steps) if tensor is not None else (None,) * self.steps

    def final(self, buffer):
        """The state at each sequence's last step (the buffer may be a ring of R < T steps)."""
        ring = buffer.shape[0]
        if self.last is None:
            return buffer[(self.steps - 1) % ring].clone()
        return buffer[self.last % ring, torch.arange(buffer.shape[1], device=buffer.device)]

    def new(self, like, width, keep=True):
        """A (T or 1, B, width) buffer; zeros when there are finished rows, which must read as zero."""
        shape = (self.steps if keep else 1, like.shape[1], width)
        return like.new_zeros(shape) if self.sizes is not None else like.new_empty(shape)


def _one_buffer(loop, tape) -> bool:
    """Whether the loop's gates and states are one (T, B, H) buffer: the vanilla cell's state is its one
    gate's value, s = a(z) (so is the residual cell's with residual='before', s = a(z + s)), so the
    step writes z where s goes and activates it in place (a buffer and a copy per step less; under
    no_grad the buffer the outputs need anyway). Not with `lengths`: the rows of finished sequences must
    read zero, and the Python loop's Zx (one addmm) holds the bias there."""
    return isinstance(loop, _Gated) and loop.kind in ("vanilla", "before") and tape.sizes is None


def _key(loop) -> tuple:
    """What fixes a loop's code path: its class and settings (for graphs.replay)."""
    return (type(loop).__name__,) + tuple(sorted(vars(loop).items()))


def _carry(grad):
    """A contiguous copy of a final state's gradient, which the backward loop turns into s^0's."""
    return grad.clone(memory_format=torch.contiguous_format)


def _gates(buffer, count):
    """Split a (T, B, K*H) buffer into its K gates, each (T, B, H)."""
    return buffer.chunk(count, dim=-1)


def _read(state, mask):
    return state if mask is None else state * mask


def _recurrent(direct, dz, weight_hh, mask, out):
    """out = direct + (dz V) * mask: the gradient reaching s^{t-1} (direct may be None)."""
    if weight_hh is None:
        return out.zero_() if direct is None else out.copy_(direct)
    if mask is None:
        return torch.mm(dz, weight_hh, out=out) if direct is None else torch.addmm(direct, dz, weight_hh, out=out)
    back = torch.mm(dz, weight_hh).mul_(mask)
    return out.copy_(back) if direct is None else torch.add(direct, back, out=out)


class _Gated:
    """Vanilla s = a(z);  residual s = s + a(z)  (or a(z + s) before);  input-gated s = s + i r;
    forget-gated s = f s + i r. z = Zx + V s^{t-1}; the gates are cell.gates, a subset of (i, f, r)."""

    def __init__(self, cell):
        self.kind = _GATED[cell.family]
        if self.kind == "residual" and cell.residual == "before":
            self.kind = "before"
        self.gates, self.act, self.sigma = cell.gates, cell.activation, cell.gate_activation

    def forward(self, tape, zx, weight_hh, bias_hh, mh, state0, save, own=None):
        K, kind, gates = len(self.gates), self.kind, zx
        states = zx if _one_buffer(self, tape) else tape.new(zx, zx.shape[-1] // K)
        extension = compiled.extension_for(zx)
        if extension is not None:
            extension.gated_forward(kind, self.act, self.sigma, gates, weight_hh, mh, state0[0].contiguous(), states,
                                    tape.sizes or [], *(own or ()))
            return states, gates
        per_gate = dict(zip(self.gates, (tape.steps_of(g) for g in _gates(gates, K))))
        r, i, f = per_gate["r"], per_gate.get("i"), per_gate.get("f")
        act, sigma = FORWARD[self.act], FORWARD[self.sigma]
        vt = weight_hh.t() if weight_hh is not None else None
        gs, new = tape.steps_of(gates), tape.steps_of(states)
        prev, masks = tape.previous(state0[0], states), tape.same(mh)
        for t in range(tape.steps):
            g, s_prev = gs[t], prev[t]
            if vt is not None:
                g.addmm_(_read(s_prev, masks[t]), vt)
            if kind == "before":
                g.add_(s_prev)
            act(r[t], r[t])
            if i is not None:
                sigma(i[t], i[t])
            if kind == "vanilla" or kind == "before":
                new[t].copy_(r[t])
            elif kind == "residual":
                torch.add(s_prev, r[t], out=new[t])
            elif kind == "input":
                torch.addcmul(s_prev, i[t], r[t], out=new[t])
            else:
                sigma(f[t], f[t])
                torch.mul(f[t], s_prev, out=new[t]).addcmul_(i[t], r[t])
        return states, gates

    def backward(self, tape, d_out, d_finals, weight_hh, mh, state0, buffers, needs):
        states, gates = buffers
        dz, carry = tape.new(gates, gates.shape[-1]), _carry(d_finals[0])
        extension = compiled.extension_for(gates)
        if extension is not None:
            extension.gated_backward(self.kind, self.act, self.sigma, gates, states, state0[0].contiguous(),
                                     d_out, weight_hh, mh, carry, dz, tape.sizes or [])
        else:
            self.backward_loop(tape, d_out, weight_hh, mh, state0, buffers, dz, carry)
        d_weight = weight_grad(dz, state0[0], states, mh) if weight_hh is not None and needs[7] else None
        return dz, d_weight, None, None, carry

    def backward_loop(self, tape, d_out, weight_hh, mh, state0, buffers, dz, carry):
        states, gates = buffers
        K, kind = len(self.gates), self.kind
        per_gate = dict(zip(self.gates, (tape.steps_of(g) for g in _gates(gates, K))))
        d_gate = dict(zip(self.gates, (tape.steps_of(g) for g in _gates(dz, K))))
        r, i, f = per_gate["r"], per_gate.get("i"), per_gate.get("f")
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        carries, d_outs, prev = tape.same(carry), tape.steps_of(d_out), tape.previous(state0[0], states)
        dzs, masks = tape.steps_of(dz), tape.same(mh)
        for t in reversed(range(tape.steps)):
            ds = carries[t] + d_outs[t]  # dL/ds^t
            if kind in ("vanilla", "before", "residual"):
                act_back(ds, r[t], d_gate["r"][t])
                direct = {"vanilla": None, "before": d_gate["r"][t], "residual": ds}[kind]
            else:
                sigma_back(ds * r[t], i[t], d_gate["i"][t])
                act_back(ds * i[t], r[t], d_gate["r"][t])
                direct = ds
                if kind == "forget":
                    sigma_back(ds * prev[t], f[t], d_gate["f"][t])
                    direct = ds.mul_(f[t])
            _recurrent(direct, dzs[t], weight_hh, masks[t], carries[t])


class _LSTM:
    """i, f, o = sigma(z_i, z_f, z_o), r = a(z_r);  c = f c^{t-1} + i r;  h = o a(c).
    z = Zx + V h^{t-1}; state (h, c)."""

    def __init__(self, cell):
        self.act, self.sigma = cell.activation, cell.gate_activation

    def forward(self, tape, zx, weight_hh, bias_hh, mh, state0, save, own=None):
        hidden, gates = zx.shape[-1] // 4, zx
        hs = tape.new(zx, hidden)
        cs = zx.new_zeros((tape.steps if save else 2, zx.shape[1], hidden))  # a ring of 2 suffices without grad
        tcs = tape.new(zx, hidden, keep=save)  # a(c)
        act, sigma = FORWARD[self.act], FORWARD[self.sigma]
        vt = weight_hh.t() if weight_hh is not None else None
        extension = compiled.extension_for(zx)
        if extension is not None:
            extension.lstm_forward(self.act, self.sigma, gates, weight_hh, mh, state0[0], state0[1].contiguous(),
                                   hs, cs, tcs, tape.sizes or [], *(own or ()))
            return hs, cs, gates, tcs
        gi, gf, gr, go = (tape.steps_of(g) for g in _gates(gates, 4))
        g_if = tape.steps_of(gates[..., :2 * hidden])
        gs, h_new, c_new, tc = (tape.steps_of(b) for b in (gates, hs, cs, tcs))
        h_prev, c_prev, masks = tape.previous(state0[0], hs), tape.previous(state0[1], cs), tape.same(mh)
        for t in range(tape.steps):
            if vt is not None:
                gs[t].addmm_(_read(h_prev[t], masks[t]), vt)
            sigma(g_if[t], g_if[t])
            act(gr[t], gr[t])
            sigma(go[t], go[t])
            torch.mul(gf[t], c_prev[t], out=c_new[t]).addcmul_(gi[t], gr[t])
            act(c_new[t], tc[t])
            torch.mul(go[t], tc[t], out=h_new[t])
        return hs, cs, gates, tcs

    def backward(self, tape, d_out, d_finals, weight_hh, mh, state0, buffers, needs):
        hs, cs, gates, tcs = buffers
        dz = tape.new(gates, gates.shape[-1])
        carry_h, carry_c = _carry(d_finals[0]), _carry(d_finals[1])
        extension = compiled.extension_for(gates)
        if extension is not None:
            extension.lstm_backward(self.act, self.sigma, gates, cs, tcs, state0[1].contiguous(), d_out,
                                    weight_hh, mh, carry_h, carry_c, dz, tape.sizes or [])
        else:
            self.backward_loop(tape, d_out, weight_hh, mh, state0, buffers, dz, carry_h, carry_c)
        d_weight = weight_grad(dz, state0[0], hs, mh) if weight_hh is not None and needs[7] else None
        return dz, d_weight, None, None, carry_h, carry_c

    def backward_loop(self, tape, d_out, weight_hh, mh, state0, buffers, dz, carry_h, carry_c):
        hs, cs, gates, tcs = buffers
        gi, gf, gr, go = (tape.steps_of(g) for g in _gates(gates, 4))
        di, df, dr, do = (tape.steps_of(g) for g in _gates(dz, 4))
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        ch, cc, d_outs, tc = tape.same(carry_h), tape.same(carry_c), tape.steps_of(d_out), tape.steps_of(tcs)
        c_prev, dzs, masks = tape.previous(state0[1], cs), tape.steps_of(dz), tape.same(mh)
        for t in reversed(range(tape.steps)):
            dh = ch[t] + d_outs[t]
            sigma_back(dh * tc[t], go[t], do[t])
            dc = act_back(dh.mul_(go[t]), tc[t], dh).add_(cc[t])
            sigma_back(dc * gr[t], gi[t], di[t])
            sigma_back(dc * c_prev[t], gf[t], df[t])
            act_back(dc * gi[t], gr[t], dr[t])
            torch.mul(dc, gf[t], out=cc[t])
            _recurrent(None, dzs[t], weight_hh, masks[t], ch[t])


class _GRU:
    """r = sigma(zx_r + zh_r), u = sigma(zx_z + zh_z), n = a(zx_n + r zh_n), s = n + u (s^{t-1} - n),
    zh = V s^{t-1} + b_hh. Without a state read (minGRU): u = sigma(zx_z), n = a(zx_n)."""

    def __init__(self, cell):
        self.act, self.sigma = cell.activation, cell.gate_activation

    def forward(self, tape, zx, weight_hh, bias_hh, mh, state0, save, own=None):
        act, sigma = FORWARD[self.act], FORWARD[self.sigma]
        K = 3 if weight_hh is not None else 2
        hidden, gates = zx.shape[-1] // K, zx
        hs = tape.new(zx, hidden)
        # V s + b_hh, of which the n part is kept for backward
        zhs = tape.new(zx, 3 * hidden, keep=save) if weight_hh is not None else None
        extension = compiled.extension_for(zx)
        if extension is not None:
            extension.gru_forward(self.act, self.sigma, gates, weight_hh, bias_hh, mh, state0[0].contiguous(), hs, zhs,
                                  tape.sizes or [], *(own or ()))
            return (hs, gates) if zhs is None else (hs, gates, zhs)
        h_new, h_prev, masks = tape.steps_of(hs), tape.previous(state0[0], hs), tape.same(mh)
        *_, gu, gn = (tape.steps_of(g) for g in _gates(gates, K))
        if weight_hh is None:
            for t in range(tape.steps):
                sigma(gu[t], gu[t])
                act(gn[t], gn[t])
                torch.lerp(gn[t], h_prev[t], gu[t], out=h_new[t])
            return hs, gates
        vt = weight_hh.t()
        g_ru, zh_ru = (tape.steps_of(b[..., :2 * hidden]) for b in (gates, zhs))
        gr, zh_n, zh = tape.steps_of(gates[..., :hidden]), tape.steps_of(zhs[..., 2 * hidden:]), tape.steps_of(zhs)
        for t in range(tape.steps):
            read = _read(h_prev[t], masks[t])
            if bias_hh is None:
                torch.mm(read, vt, out=zh[t])
            else:
                torch.addmm(bias_hh, read, vt, out=zh[t])
            sigma(g_ru[t].add_(zh_ru[t]), g_ru[t])
            act(gn[t].addcmul_(gr[t], zh_n[t]), gn[t])
            torch.lerp(gn[t], h_prev[t], gu[t], out=h_new[t])
        return hs, gates, zhs

    def backward(self, tape, d_out, d_finals, weight_hh, mh, state0, buffers, needs):
        hs, gates, *zhs = buffers
        dzx, carry = tape.new(gates, gates.shape[-1]), _carry(d_finals[0])
        dzh = tape.new(gates, 3 * hs.shape[-1]) if weight_hh is not None else None
        extension = compiled.extension_for(gates)
        if extension is not None:
            extension.gru_backward(self.act, self.sigma, gates, zhs[0] if zhs else None, hs, state0[0].contiguous(),
                                   d_out, weight_hh, mh, carry, dzx, dzh, tape.sizes or [])
        else:
            self.backward_loop(tape, d_out, weight_hh, mh, state0, buffers, dzx, dzh, carry)
        if weight_hh is None:
            return dzx, None, None, None, carry
        d_weight = weight_grad(dzh, state0[0], hs, mh) if needs[7] else None
        d_bias = dzh.sum((0, 1)) if needs[8] else None
        return dzx, d_weight, d_bias, None, carry

    def backward_loop(self, tape, d_out, weight_hh, mh, state0, buffers, dzx, dzh, carry):
        hs, gates, *zhs = buffers
        K = 3 if weight_hh is not None else 2
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        *_, gu, gn = (tape.steps_of(g) for g in _gates(gates, K))
        *_, du, dn = (tape.steps_of(g) for g in _gates(dzx, K))
        carries, d_outs, h_prev = tape.same(carry), tape.steps_of(d_out), tape.previous(state0[0], hs)
        if weight_hh is not None:
            H = hs.shape[-1]
            gr, zh_n, dr = (tape.steps_of(b) for b in (gates[..., :H], zhs[0][..., 2 * H:], dzx[..., :H]))
            dzx_ru, dzh_ru, dzh_n = (tape.steps_of(b) for b in (dzx[..., :2 * H], dzh[..., :2 * H], dzh[..., 2 * H:]))
            dzhs, masks = tape.steps_of(dzh), tape.same(mh)
        for t in reversed(range(tape.steps)):
            dh = carries[t] + d_outs[t]
            act_back(torch.addcmul(dh, dh, gu[t], value=-1), gn[t], dn[t])  # ds/dn = 1 - u
            sigma_back(torch.sub(h_prev[t], gn[t]).mul_(dh), gu[t], du[t])  # ds/du = s^{t-1} - n
            direct = dh.mul_(gu[t])  # ds/ds^{t-1} = u, besides V
            if weight_hh is None:
                carries[t].copy_(direct)
                continue
            torch.mul(dn[t], gr[t], out=dzh_n[t])
            sigma_back(dn[t] * zh_n[t], gr[t], dr[t])
            dzh_ru[t].copy_(dzx_ru[t])
            _recurrent(direct, dzhs[t], weight_hh, masks[t], carries[t])
