"""`fused` for the LSTMs users ask torch for: peephole-lstm, layernorm-lstm and projected-lstm
(rnnlab.cells: PeepholeLSTMCell, LayerNormLSTMCell, ProjectedLSTMCell). fused.py's dispatcher hands
these families here; the scheme is fused.py's:

  1. the input part Zx for all B*T rows at once: one GEMM (U x + W y*, biases folded); for the
     layer-norm LSTM also its input normalisation LN_x, over all steps at once (ATen's layer norm and
     its backward, called by _CellLoop into the gate buffer; the product is time_major.LinearProduct's);
  2. one GEMM per step for V s_bar^{t-1} (the projected LSTM: one more for W_hr), the gate arithmetic
     in place in preallocated (T, B, ...) buffers. In C++, where the weights stay in cache (16 rows
     or more: time_major.steps_multiply_inputs), the peephole and projected LSTMs' steps compute
     x_t U^T themselves instead of step 1 (the layer-norm LSTM's LN_x(x_t U^T), where nothing will
     be differentiated); where nothing will be differentiated (no_grad,
     inference_mode, or no input needing a gradient) every per-step buffer but the outputs is a
     ring of one step (two for c) and nothing is saved;
  3. a hand-written backward through time, one GEMM per step (two for the projected LSTM), and every
     weight gradient after the loop as one product or reduction over all steps (dV, dW_hr, the
     peepholes, the normalisations' gains and shifts).

Per family, besides the LSTM's i, f, o = sigma(.), r = a(.), c = f c' + i r:
  peephole    i, f read p_i c', p_f c'; o reads p_o c;               h = o a(c)
  layernorm   z = Zx + g_h * xhat(V h'), Zx = LN_x(U x + W y) + b_ih + b_hh + beta_h;
              h = o a(g_c * xhat(c) + beta_c)    (xhat: (v - mean) / sqrt(var + eps), per row)
  projected   h = W_hr (o a(c)), (B, P); the gates read h

`lengths` and the dropout masks as in fused.py (the batch sorted by length, each step on the rows
still running). The loops of step 2 and 3 run in C++ (`cell_loops.cpp`, module `rnnlab_cell_loops`
of compiled.py) where it is built, in Python otherwise: the same buffers and equations.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..cells import Cell, State
from . import compiled
from .activations import BACKWARD, FORWARD
from .time_major import (
    LinearProduct,
    by_length,
    input_grads,
    inputs_and_weight,
    product,
    steps_multiply_inputs,
    weight_grad,
)

MODULE = "rnnlab_cell_loops"
FAMILIES = ("peephole-lstm", "layernorm-lstm", "projected-lstm")


def _extension(like):
    return compiled.extension_for(like, MODULE)


def fused(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
          lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H or P), final state (h, c)."""
    xs, y_prev, (mx, mh, h0, c0), sizes, last, unsort = by_length(xs, y_prev, lengths, (*masks, *state))
    inputs, weight = inputs_and_weight(cell, xs, y_prev, mx)
    inputs = inputs.contiguous()  # cell_loops.cpp reads them time-major
    bias = _sum(cell.bias_ih, cell.bias_hh)  # both add to every step's pre-activations alike
    loop = _LOOPS[cell.family](cell)
    if cell.family == "layernorm-lstm":  # Zx = LN_x(U x + W y) + b_ih + b_hh + beta_h
        shift = _sum(_sum(cell.norm_ih.bias, bias), cell.norm_hh.bias if cell.norm_hh is not None else None)
        differentiable = (inputs, weight, cell.norm_ih.weight, shift, cell.weight_hh, mh, h0, c0, *loop.extras(cell))
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)) \
                and _extension(inputs) is not None:
            return _layernorm_inference(cell, loop, inputs, weight, shift, mh, h0, c0, sizes, last, unsort)
        if torch.is_grad_enabled() and (inputs.requires_grad or weight.requires_grad):
            zx = LinearProduct.apply(inputs, weight)
        else:  # nothing to differentiate through the product: oneDNN's (1.2-3.6x faster than matmul here)
            zx = product(inputs.reshape(-1, inputs.shape[-1]), weight.t()).view(*inputs.shape[:2], -1)
        # LN_x is applied by _CellLoop, into the gate buffer (norm: its gain and shift)
        inputs, weight, bias, norm = zx, None, None, (cell.norm_ih.weight, shift)
    else:
        norm = ()
    extras = loop.extras(cell)
    tensors = (inputs, weight, bias, cell.weight_hh, mh, *extras, h0, c0, *norm)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    hs, h_final, c_final = _CellLoop.apply(loop, sizes, last, save, len(extras), *tensors)
    ys = hs.transpose(0, 1)  # (B, T, H or P)
    if unsort is not None:
        ys, h_final, c_final = (t.index_select(0, unsort) for t in (ys, h_final, c_final))
    return ys, (h_final, c_final)


def _layernorm_inference(cell, loop, inputs, weight, shift, mh, h0, c0, sizes, last, unsort):
    """The layer-norm LSTM where nothing is differentiated, in the C++ loop, no autograd: each step normalises
    its rows of Zx = x_t U^T itself (LN_x), where the weights stay in cache also computing them, into a gate
    buffer of one step; else they are one product over all steps, normalised in place (no pass of ATen's
    layer_norm over them, whose output would be a second (T, B, 4H) buffer)."""
    tape = _Tape(inputs.shape[0], sizes, last, save=False)
    norm = (cell.norm_ih.weight.contiguous(), shift.contiguous(), cell.norm_ih.eps)
    if steps_multiply_inputs(inputs, weight, cell.weight_hh):
        gates, own = tape.new(inputs, weight.shape[0], ring=1), (inputs, weight, *norm)
    else:
        gates = product(inputs.reshape(-1, inputs.shape[-1]), weight.t()).view(*inputs.shape[:2], -1)
        own = (None, None, *norm)
    hs, cs, *_ = loop.forward(tape, gates, cell.weight_hh, mh, loop.extras(cell), h0.contiguous(), c0.contiguous(),
                              own)
    ys, h_final, c_final = hs.transpose(0, 1), tape.final(hs), tape.final(cs)
    if unsort is not None:
        ys, h_final, c_final = (t.index_select(0, unsort) for t in (ys, h_final, c_final))
    return ys, (h_final, c_final)


def _sum(a, b):
    return a if b is None else b if a is None else a + b


class _CellLoop(torch.autograd.Function):
    """The input GEMM (unless Zx comes given: weight None) and the time loop, with its backward.
    rest: the loop's extras, h0, c0, and where Zx comes given and is to be layer-normalised first (the
    layer-norm LSTM: LN_x(x U^T)), that norm's gain and shift (`loop.eps_x` its epsilon)."""

    @staticmethod
    def forward(ctx, loop, sizes, last, save, n_extra, inputs, weight, bias, weight_hh, mh, *rest):
        extras, (h0, c0), norm = rest[:n_extra], rest[n_extra:n_extra + 2], rest[n_extra + 2:]
        steps, batch = inputs.shape[:2]
        tape = _Tape(steps, sizes, last, save)
        compiled_loop, own, norm_saved = _extension(inputs) is not None, (), ()
        if weight is None and norm:
            # LN_x(Zx) here rather than by autograd before the call: the loop writes the gates into this
            # buffer of its own, where autograd's output would need a (T, B, 4H) copy kept intact
            gates, mean, rstd = torch.native_layer_norm(inputs, (inputs.shape[-1],), norm[0], norm[1], loop.eps_x)
            norm_saved = (mean, rstd, *norm)
        elif weight is None:  # Zx given, made by autograd: a copy where it must stay intact
            gates = inputs.clone() if save else inputs
        elif compiled_loop and steps_multiply_inputs(inputs, weight, weight_hh):
            # each C++ step computes x_t U^T itself and adds the bias: no (T, B, 4H) Zx is written and
            # read back, and without grad the gates are a ring of one step (as fused.py's LSTM)
            gates, own = tape.new(inputs, weight.shape[0], ring=1), (_contiguous(bias), inputs, weight)
        elif compiled_loop:  # Zx in one product (oneDNN's) without its bias, which the C++ steps add
            gates = product(inputs.reshape(steps * batch, -1), weight.t()).view(steps, batch, -1)
            own = (_contiguous(bias),)
        else:
            flat = inputs.reshape(steps * batch, -1)
            gates = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
            gates = gates.view(steps, batch, -1)
        buffers = loop.forward(tape, gates, weight_hh, mh, extras, h0.contiguous(), c0.contiguous(), own)
        hs, cs = buffers[0], buffers[1]
        ctx.loop, ctx.sizes, ctx.last, ctx.n_extra, ctx.n_norm = loop, sizes, last, n_extra, len(norm_saved)
        if save:
            ctx.save_for_backward(inputs, weight, weight_hh, mh, h0, c0, *extras, *buffers, *norm_saved)
        return hs, tape.final(hs), tape.final(cs)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_h, d_c):
        loop, needs = ctx.loop, ctx.needs_input_grad
        inputs, weight, weight_hh, mh, h0, c0, *rest = ctx.saved_tensors
        extras, buffers = rest[:ctx.n_extra], rest[ctx.n_extra:len(rest) - ctx.n_norm]
        norm_saved = rest[len(rest) - ctx.n_norm:]
        tape = _Tape(d_hs.shape[0], ctx.sizes, ctx.last, True)
        carry_h = d_h.clone(memory_format=torch.contiguous_format)  # becomes dL/dh0
        carry_c = d_c.clone(memory_format=torch.contiguous_format)
        dz, d_weight_hh, d_extras = loop.backward(tape, d_hs, carry_h, carry_c, weight_hh, mh, extras,
                                                  h0.contiguous(), c0.contiguous(), buffers, needs[8], needs[10:])
        d_norm = ()
        if weight is None and norm_saved:  # through LN_x: ATen's own backward of it
            mean, rstd, gain, shift = norm_saved
            wanted = [needs[5], gain is not None and needs[-2], shift is not None and needs[-1]]
            d_inputs, d_gain, d_shift = torch.ops.aten.native_layer_norm_backward(
                dz, inputs, [inputs.shape[-1]], mean, rstd, gain, shift, wanted)
            d_weight, d_bias, d_norm = None, None, (d_gain, d_shift)
        elif weight is None:
            d_inputs, d_weight, d_bias = (dz if needs[5] else None), None, None
        else:
            d_inputs, d_weight = input_grads(dz, inputs, weight, needs[5], needs[6])
            d_bias = dz.view(-1, dz.shape[-1]).sum(0) if needs[7] else None
        return (None,) * 5 + (d_inputs, d_weight, d_bias, d_weight_hh, None, *d_extras, carry_h, carry_c, *d_norm)


class _Tape:
    """Per-step views of (T, B, ...) buffers, cut to the n_t rows still running at step t. Without
    `save` (nothing will be differentiated) a buffer may be a ring of R < T steps: step t is t % R."""

    def __init__(self, steps, sizes, last, save=True):
        self.steps, self.sizes, self.last, self.save = steps, sizes, last, save

    def rows(self, t, view):
        return view if self.sizes is None else view[:self.sizes[t]]

    def at(self, buffer, t):
        return self.rows(t, buffer[t % buffer.shape[0]])

    def previous(self, first, buffer, t):
        return self.rows(t, first if t == 0 else buffer[(t - 1) % buffer.shape[0]])

    def final(self, buffer):
        ring = buffer.shape[0]
        if self.last is None:
            return buffer[(self.steps - 1) % ring].clone()
        return buffer[self.last % ring, torch.arange(buffer.shape[1], device=buffer.device)]

    def new(self, like, width, ring=None):
        """A (T, B, width) buffer, or where nothing is saved and `ring` is given a ring of that many
        steps (c, which the next step reads while it writes its own: 2); zeros when there are
        finished rows, which must read as zero."""
        steps = self.steps if self.save or ring is None else min(ring, self.steps)
        shape = (steps, like.shape[1], width)
        return like.new_zeros(shape) if self.sizes is not None else like.new_empty(shape)

    def n(self, t, batch):
        return batch if self.sizes is None else self.sizes[t]


def _contiguous(t):
    return None if t is None else t.contiguous()


def _read(h, mask, n):
    return h if mask is None else h * mask[:n]


def _previous_all(first, buffer):
    """(T, B, ...) of the value each step read: first, then the buffer shifted by one step."""
    return torch.cat([first[None], buffer[:-1]], dim=0)


class _Loop:
    """What the three loops' Python paths share: their activations and extras, the views of a forward
    and of a backward step, the LSTM's gates and c, and its backward through c."""

    extra_names = ()  # the cell's parameters the loop reads besides the LSTM's (`extras`)

    def __init__(self, cell):
        self.act, self.sigma = cell.activation, cell.gate_activation

    @classmethod
    def extras(cls, cell):
        return tuple(getattr(cell, name) for name in cls.extra_names)

    @staticmethod
    def forward_steps(tape, gates, weight_hh, mh, h0, hs, c0, cs):
        """For t from 0 to T-1: t, step t's gates with V h' (h' masked) added, and c'. (Lazy: step t reads
        h' once the caller has written it.)"""
        vt = weight_hh.t() if weight_hh is not None else None
        for t in range(tape.steps):
            g = tape.at(gates, t)
            if vt is not None:
                g.addmm_(_read(tape.previous(h0, hs, t), mh, tape.n(t, gates.shape[1])), vt)
            yield t, g, tape.previous(c0, cs, t)

    def gates_and_c(self, g, c_prev, c):
        """The LSTM's gates in place, i, f, o = sigma(.), r = a(.), and c = f c' + i r into c; returns o."""
        act, sigma, H = FORWARD[self.act], FORWARD[self.sigma], c.shape[-1]
        gi, gf, gr, go = g.chunk(4, dim=-1)
        sigma(g[:, :2 * H], g[:, :2 * H])
        act(gr, gr)
        sigma(go, go)
        torch.mul(gf, c_prev, out=c).addcmul_(gi, gr)
        return go

    @staticmethod
    def backward_steps(tape, d_hs, carry_h, carry_c, c0, cs, gates, tcs, dz):
        """For t from T-1 down to 0, the views step t reads: t, the gates (i, f, r, o) and their gradients'
        slots, a(c) and c', the outputs' gradient, and the n_t rows of the carries."""
        for t in reversed(range(tape.steps)):
            n = tape.n(t, gates.shape[1])
            yield (t, tape.at(gates, t).chunk(4, dim=-1), tape.at(dz, t).chunk(4, dim=-1), tape.at(tcs, t),
                   tape.previous(c0, cs, t), tape.at(d_hs, t), carry_h[:n], carry_c[:n])

    def through_c(self, dc, gates, d_gates, c_prev, cc):
        """dz_i, dz_f, dz_r from dc (dL/dc) into their slots; returns cc = dc f (dc', before a peephole's part)."""
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        (gi, gf, gr, _), (di, df, dr, _) = gates, d_gates
        sigma_back(dc * gr, gi, di)
        sigma_back(dc * c_prev, gf, df)
        act_back(dc * gi, gr, dr)
        return torch.mul(dc, gf, out=cc)


class _Peephole(_Loop):
    """i = sigma(z_i + p_i c'), f = sigma(z_f + p_f c'), r = a(z_r), c = f c' + i r,
    o = sigma(z_o + p_o c), h = o a(c). Buffers: hs, cs, gates, tcs (a(c))."""

    family, extra_names = "peephole", ("weight_peephole",)

    def forward(self, tape, gates, weight_hh, mh, extras, h0, c0, own=()):
        (peep,) = extras
        H = c0.shape[1]
        hs, cs, tcs = tape.new(gates, H), tape.new(gates, H, ring=2), tape.new(gates, H, ring=1)
        extension = _extension(gates)
        if extension is not None:
            extension.peephole_forward(self.act, self.sigma, gates, weight_hh, mh, peep.contiguous(), h0, c0, hs, cs,
                                       tcs, tape.sizes or [], *own)
            return hs, cs, gates, tcs
        act, sigma = FORWARD[self.act], FORWARD[self.sigma]
        p_i, p_f, p_o = peep
        for t, g, c_prev in self.forward_steps(tape, gates, weight_hh, mh, h0, hs, c0, cs):
            gi, gf, gr, go = g.chunk(4, dim=-1)
            sigma(gi.addcmul_(p_i, c_prev), gi)
            sigma(gf.addcmul_(p_f, c_prev), gf)
            act(gr, gr)
            c = tape.at(cs, t)
            torch.mul(gf, c_prev, out=c).addcmul_(gi, gr)
            sigma(go.addcmul_(p_o, c), go)
            tc = tape.at(tcs, t)
            act(c, tc)
            torch.mul(go, tc, out=tape.at(hs, t))
        return hs, cs, gates, tcs

    def backward(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, extras, h0, c0, buffers, need_v, need_extras):
        hs, cs, gates, tcs = buffers
        (peep,) = extras
        dz = tape.new(gates, gates.shape[-1])
        extension = _extension(gates)
        d_peep = None
        if extension is not None:  # sums the peepholes' gradients as it goes
            d_peep = gates.new_empty(3, gates.shape[-1] // 4) if need_extras[0] else None
            extension.peephole_backward(self.act, self.sigma, gates, cs, tcs, c0, d_hs, weight_hh, mh,
                                        peep.contiguous(), carry_h, carry_c, dz, tape.sizes or [], d_peep)
        else:
            self.backward_loop(tape, d_hs, carry_h, carry_c, weight_hh, mh, peep, c0, buffers, dz)
            if need_extras[0]:
                c_prev = _previous_all(c0, cs)
                di, df, _, do = dz.chunk(4, dim=-1)
                d_peep = torch.stack([(di * c_prev).sum((0, 1)), (df * c_prev).sum((0, 1)), (do * cs).sum((0, 1))])
        d_v = weight_grad(dz, h0, hs, mh) if weight_hh is not None and need_v else None
        return dz, d_v, (d_peep,)

    def backward_loop(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, peep, c0, buffers, dz):
        hs, cs, gates, tcs = buffers
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        p_i, p_f, p_o = peep
        steps = self.backward_steps(tape, d_hs, carry_h, carry_c, c0, cs, gates, tcs, dz)
        for t, g, d, tc, c_prev, dy, ch, cc in steps:
            (_, _, _, go), (di, df, _, do) = g, d
            dh = ch + dy
            sigma_back(dh * tc, go, do)
            dc = act_back(dh.mul_(go), tc, dh).add_(cc).addcmul_(do, p_o)
            self.through_c(dc, g, d, c_prev, cc).addcmul_(di, p_i).addcmul_(df, p_f)
            _recurrent(tape.at(dz, t), weight_hh, mh, ch)


def _recurrent(dz, weight_hh, mask, out):
    """out = (dz V) * mask: the gradient reaching the state the gates read (the LSTMs have no direct term)."""
    if weight_hh is None:
        return out.zero_()
    if mask is None:
        return torch.mm(dz, weight_hh, out=out)
    return out.copy_(torch.mm(dz, weight_hh).mul_(mask[:out.shape[0]]))


def _normalise(v, eps, out):
    """out = (v - mean) / sqrt(var + eps) over the last dim; returns rstd (rows,)."""
    if v.shape[0] == 0:  # no row still running (lengths all below T): var_mean would warn of 0 degrees of freedom
        return v.new_empty(0)
    var, mean = torch.var_mean(v, dim=-1, unbiased=False, keepdim=True)
    rstd = (var + eps).rsqrt_()
    torch.sub(v, mean, out=out).mul_(rstd)
    return rstd.squeeze(-1)


def _normalise_backward(d_xhat, xhat, rstd):
    """dv from d(xhat) for xhat = (v - mean) * rstd, per row."""
    mean_d = d_xhat.mean(-1, keepdim=True)
    mean_dx = (d_xhat * xhat).mean(-1, keepdim=True)
    return (d_xhat - mean_d - xhat * mean_dx).mul_(rstd[:, None])


class _LayerNorm(_Loop):
    """z = Zx + g_h * xhat(V h'); i, f, o, r as the LSTM; c = f c' + i r; h = o a(g_c xhat(c) + beta_c).
    Buffers: hs, cs, gates, tcs (a(LN_c c)), xh (xhat of V h'), rh (its rstd), xc (xhat of c), rc."""

    family = "layernorm"

    def __init__(self, cell):
        super().__init__(cell)
        self.eps_h = cell.norm_hh.eps if cell.norm_hh is not None else 0.0
        self.eps_c = cell.norm_cell.eps
        self.eps_x = cell.norm_ih.eps  # LN_x, which _CellLoop applies

    @staticmethod
    def extras(cell):
        return (cell.norm_hh.weight if cell.norm_hh is not None else None, cell.norm_cell.weight, cell.norm_cell.bias)

    def forward(self, tape, gates, weight_hh, mh, extras, h0, c0, own=()):
        gain_h, gain_c, shift_c = extras
        batch, H = c0.shape
        hs, cs, tcs, xc = tape.new(gates, H), tape.new(gates, H, ring=2), tape.new(gates, H, ring=1), \
            tape.new(gates, H, ring=1)
        rc = tape.new(gates, 1, ring=1)[..., 0]
        xh = tape.new(gates, 4 * H, ring=1) if weight_hh is not None else None
        rh = tape.new(gates, 1, ring=1)[..., 0] if weight_hh is not None else None
        buffers = (hs, cs, gates, tcs, xc, rc) + ((xh, rh) if xh is not None else ())
        extension = _extension(gates)
        if extension is not None:
            extension.layernorm_forward(self.act, self.sigma, gates, weight_hh, mh, gain_h, gain_c.contiguous(),
                                        shift_c.contiguous(), self.eps_h, self.eps_c, h0, c0, hs, cs, tcs, xc, rc,
                                        xh, rh, tape.sizes or [], *own)
            return buffers
        act = FORWARD[self.act]
        vt = weight_hh.t() if weight_hh is not None else None
        for t in range(tape.steps):
            n = tape.n(t, batch)
            g, c_prev = tape.at(gates, t), tape.previous(c0, cs, t)
            if vt is not None:
                x_h = tape.at(xh, t)
                torch.mm(_read(tape.previous(h0, hs, t), mh, n), vt, out=x_h)
                tape.at(rh, t).copy_(_normalise(x_h, self.eps_h, x_h))
                g.addcmul_(gain_h, x_h)
            c, x_c, tc = tape.at(cs, t), tape.at(xc, t), tape.at(tcs, t)
            go = self.gates_and_c(g, c_prev, c)
            tape.at(rc, t).copy_(_normalise(c, self.eps_c, x_c))
            act(torch.addcmul(shift_c, gain_c, x_c, out=tc), tc)
            torch.mul(go, tc, out=tape.at(hs, t))
        return buffers

    def backward(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, extras, h0, c0, buffers, need_v, need_extras):
        hs, cs, gates, tcs, xc, rc, *rest = buffers
        xh, rh = rest if rest else (None, None)
        gain_h, gain_c, _ = extras
        H = c0.shape[1]
        dz = tape.new(gates, 4 * H)
        d_ln_c = tape.new(gates, H)  # dL/d(LN_c output), for the gain and shift of LN_c after the loop
        dzh = tape.new(gates, 4 * H) if weight_hh is not None else None  # dL/d(V h'), for dV
        extension = _extension(gates)
        if extension is not None:  # sums the gains' and shift's gradients as it goes
            d_gain_h = gates.new_empty(4 * H) if xh is not None else None
            d_gain_c, d_shift_c = gates.new_empty(H), gates.new_empty(H)
            extension.layernorm_backward(self.act, self.sigma, gates, cs, tcs, xc, rc, xh, rh, c0, d_hs, weight_hh, mh,
                                         gain_h, gain_c.contiguous(), carry_h, carry_c, dz, d_ln_c, dzh, d_gain_h,
                                         d_gain_c, d_shift_c, tape.sizes or [])
        else:
            self.backward_loop(tape, d_hs, carry_h, carry_c, weight_hh, mh, gain_h, gain_c, c0, buffers, dz, d_ln_c,
                               dzh)
            d_gain_h = (dz * xh).sum((0, 1)) if xh is not None else None
            d_gain_c, d_shift_c = (d_ln_c * xc).sum((0, 1)), d_ln_c.sum((0, 1))
        d_v = weight_grad(dzh, h0, hs, mh) if weight_hh is not None and need_v else None
        return dz, d_v, tuple(g if need else None for g, need in zip((d_gain_h, d_gain_c, d_shift_c), need_extras))

    def backward_loop(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, gain_h, gain_c, c0, buffers, dz, d_ln_c,
                      dzh):
        hs, cs, gates, tcs, xc, rc, *rest = buffers
        xh, rh = rest if rest else (None, None)
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        steps = self.backward_steps(tape, d_hs, carry_h, carry_c, c0, cs, gates, tcs, dz)
        for t, g, d, tc, c_prev, dy, ch, cc in steps:
            go, do = g[3], d[3]
            dh = ch + dy
            sigma_back(dh * tc, go, do)
            d_ln = act_back(dh.mul_(go), tc, tape.at(d_ln_c, t))
            dc = _normalise_backward(d_ln * gain_c, tape.at(xc, t), tape.at(rc, t)).add_(cc)
            self.through_c(dc, g, d, c_prev, cc)
            if weight_hh is None:
                ch.zero_()
                continue
            d_zh = tape.at(dzh, t)
            d_zh.copy_(_normalise_backward(tape.at(dz, t) * gain_h, tape.at(xh, t), tape.at(rh, t)))
            _recurrent(d_zh, weight_hh, mh, ch)


class _Projected(_Loop):
    """The LSTM's gates from z = Zx + V h' (V (4H, P)); m = o a(c), h = W_hr m (B, P).
    Buffers: hs (T, B, P), cs, gates, tcs (a(c)), ms (m)."""

    family, extra_names = "projected", ("weight_hr",)

    def forward(self, tape, gates, weight_hh, mh, extras, h0, c0, own=()):
        (w_hr,) = extras
        H, P = c0.shape[1], w_hr.shape[0]
        hs, cs = tape.new(gates, P), tape.new(gates, H, ring=2)
        tcs, ms = tape.new(gates, H, ring=1), tape.new(gates, H, ring=1)
        extension = _extension(gates)
        if extension is not None:
            extension.projected_forward(self.act, self.sigma, gates, weight_hh, mh, w_hr, h0, c0, hs, cs, tcs, ms,
                                        tape.sizes or [], *own)
            return hs, cs, gates, tcs, ms
        act, rt = FORWARD[self.act], w_hr.t()
        for t, g, c_prev in self.forward_steps(tape, gates, weight_hh, mh, h0, hs, c0, cs):
            c, tc, m = tape.at(cs, t), tape.at(tcs, t), tape.at(ms, t)
            go = self.gates_and_c(g, c_prev, c)
            act(c, tc)
            torch.mul(go, tc, out=m)
            torch.mm(m, rt, out=tape.at(hs, t))
        return hs, cs, gates, tcs, ms

    def backward(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, extras, h0, c0, buffers, need_v, need_extras):
        hs, cs, gates, tcs, ms = buffers
        (w_hr,) = extras
        dz = tape.new(gates, gates.shape[-1])
        dh_all = tape.new(gates, hs.shape[-1])  # dL/dh^t, for dW_hr after the loop
        extension = _extension(gates)
        if extension is not None:
            extension.projected_backward(self.act, self.sigma, gates, cs, tcs, c0, d_hs, weight_hh, mh, w_hr,
                                         carry_h, carry_c, dz, dh_all, tape.sizes or [])
        else:
            self.backward_loop(tape, d_hs, carry_h, carry_c, weight_hh, mh, w_hr, c0, buffers, dz, dh_all)
        d_v = weight_grad(dz, h0, hs, mh) if weight_hh is not None and need_v else None
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        d_hr = product(flat(dh_all).t(), flat(ms)) if need_extras[0] else None
        return dz, d_v, (d_hr,)

    def backward_loop(self, tape, d_hs, carry_h, carry_c, weight_hh, mh, w_hr, c0, buffers, dz, dh_all):
        hs, cs, gates, tcs, ms = buffers
        act_back, sigma_back = BACKWARD[self.act], BACKWARD[self.sigma]
        steps = self.backward_steps(tape, d_hs, carry_h, carry_c, c0, cs, gates, tcs, dz)
        for t, g, d, tc, c_prev, dy, ch, cc in steps:
            go, do = g[3], d[3]
            dh = torch.add(ch, dy, out=tape.at(dh_all, t))
            dm = dh.mm(w_hr)  # (n, H)
            sigma_back(dm * tc, go, do)
            dc = act_back(dm.mul_(go), tc, dm).add_(cc)
            self.through_c(dc, g, d, c_prev, cc)
            _recurrent(tape.at(dz, t), weight_hh, mh, ch)


_LOOPS = {"peephole-lstm": _Peephole, "layernorm-lstm": _LayerNorm, "projected-lstm": _Projected}
