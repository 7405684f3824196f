"""What both fused paths (fused.py, fused_cells.py) do before their loops: the batch sorted by length
(so that at step t the running sequences are the first n_t rows), the inputs made time-major
with the fed-back outputs beside them, and the input part: one product over all steps (`product`),
or, where the weights stay in cache, computed by each C++ step itself (`steps_multiply_inputs`)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import compiled
from .reference import valid_steps, without_padding


def by_length(xs, y_prev, lengths, tensors):
    """(xs, y_prev, tensors, sizes, last, unsort): padding zeroed (the input GEMM reads every step);
    where lengths differ, every per-sequence tensor (None allowed) sorted by length, descending, with
    sizes[t] = n_t, last = each sorted sequence's last step and unsort the inverse order; else None."""
    batch, steps = xs.shape[:2]
    valid = valid_steps(lengths, steps)
    xs, y_prev = without_padding(xs, valid), without_padding(y_prev, valid)
    if lengths is None or bool((lengths == steps).all()):
        return xs, y_prev, tuple(tensors), None, None, None
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order]
    # n_t = number of sequences longer than t = B - #(length <= t)
    sizes = (batch - torch.bincount(sorted_lengths, minlength=steps + 1).cumsum(0))[:steps].tolist()
    pick = lambda v: None if v is None else v.index_select(0, order)  # noqa: E731
    return pick(xs), pick(y_prev), tuple(map(pick, tensors)), sizes, sorted_lengths - 1, torch.argsort(order)


def inputs_and_weight(cell, xs, y_prev, mx):
    """(inputs (T, B, I [+ O]), weight (K*H, I [+ O])): x (times its dropout mask) and the fed-back y*
    side by side, so that U x + W y* is one product over all steps. The inputs are time-major but not
    copied (a view of batch-first x where nothing is put beside it): the caller makes them contiguous
    where a product reads them so, or lets the C++ steps read them where they are (`kept_inputs`)."""
    inputs = xs.transpose(0, 1)  # (T, B, I): time-major, a view (each row contiguous, a step's rows apart)
    if mx is not None:
        inputs = inputs * mx
    weight = cell.weight_ih
    if y_prev is not None and cell.weight_yh is not None:
        inputs = torch.cat([inputs, y_prev.transpose(0, 1)], dim=-1)  # (T, B, I + O)
        weight = torch.cat([cell.weight_ih, cell.weight_yh], dim=1)  # (K*H, I + O)
    if inputs.shape[-1] == 0:  # I = 0 and no feedback: the C++ steps and products refuse an empty width, so
        # one zero column beside the inputs and the weight: Zx = 0, and the cat gives their empty gradients back
        inputs = torch.cat([inputs, inputs.new_zeros(inputs.shape[:2] + (1,))], dim=-1)
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], dim=1)
    return inputs, weight


def kept_inputs(inputs, keep: bool):
    """(inputs for the C++ steps that multiply them, the (T, B, F) buffer they fill with a time-major
    copy or None): a time-major view of contiguous batch-first inputs is read where it is (no copy
    before the loop: 0.2-0.5 ms of one thread's time at (32, 128, 100), page faults on a fresh buffer
    included); where `keep` (training: the backward's products read the inputs time-major), the steps'
    threads write the copy as they read each step's rows (so every row of every step must be read: no
    lengths). Other layouts are made contiguous first, as before."""
    if not inputs.transpose(0, 1).is_contiguous() or inputs.is_contiguous():
        return inputs.contiguous(), None
    return inputs, (torch.empty_like(inputs, memory_format=torch.contiguous_format) if keep else None)


# The stacked weight [U, V] in bytes up to which the C++ steps multiply the inputs themselves, by the vector
# width torch's kernels run at (a proxy for the core's generation; docs/BENCHMARKS.md, "Where the steps
# multiply the inputs"): a newer core streams a weight beyond its L2 from L3 fast enough that one product per
# step still beats reading Zx back; an older one does not.
STEP_WEIGHT_BYTES = {"AVX512": 8 << 20}
_STEP_WEIGHT_LIMIT = STEP_WEIGHT_BYTES.get(torch.backends.cpu.get_cpu_capability(), 4 << 20)
ONE_GATE_STEP_WEIGHT_BYTES = 1 << 20


def steps_multiply_inputs(inputs, weight, weight_hh) -> bool:
    """Whether the C++ steps should multiply the inputs themselves ([x_t, s'] by [U, V] each step)
    rather than read Zx from one product over all steps. Measured on a 2-core EPYC with AVX2 (1 MiB
    L2 per core), the LSTM forward against torch.nn.LSTM: per step 1.03 vs 1.20 at (32, 128, 100) and
    1.07 vs 1.15 at (64, 256, 100), where the stacked weight (0.5, 2 MiB) stays in cache across steps;
    but 1.34 vs 0.99 at (32, 512, 100) (8 MiB, streamed each step) and 1.10 vs 0.93 at (1, 128, 1000)
    (one row: U is streamed each step for a single row). On a Zen 5 EPYC (AVX-512, the same caches)
    the 8 MiB weight favours the steps too (1.05 vs 1.09 at (32, 512, 100); 32 MiB does not):
    `STEP_WEIGHT_BYTES`. A cell of one gate (vanilla, residual: V is (H, H)) keeps the steps' product
    only while [U, V] fits a core's L2 (1 MiB): at (32, 512) (2 MiB) the one product over all steps made
    its forward 20% and forward+backward 10% faster, on one and two threads, where at (32, 128) and
    (64, 256) the steps' own stayed ahead (docs/BENCHMARKS.md, "Where the steps multiply the inputs")."""
    one_gate = weight_hh is not None and weight_hh.shape[0] == weight_hh.shape[1]
    batch, depth = inputs.shape[1], inputs.shape[-1] + (weight_hh.shape[-1] if weight_hh is not None else 0)
    limit = ONE_GATE_STEP_WEIGHT_BYTES if one_gate else _STEP_WEIGHT_LIMIT
    return batch >= 16 and depth * weight.shape[0] * inputs.element_size() <= limit


def weight_grad(dz, first, states, mask):
    """dV = sum_t dz^t^T read^{t-1}, read^{t-1} = s^{t-1} * mask (s^{-1} = first): dz (T, B, K*H), states
    (T, B, H) -> (K*H, H). Steps 1..T-1 are one product over their T-1 steps, reading the states where they
    are (no (T, B, H) copy of them shifted by a step: its allocation, first touched outside the loops'
    threads, cost more than the copy at (32, 128, 100)); step 0's term is added to it."""
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    if mask is None:
        reads, read0 = flat(states[:-1]), first
    else:
        reads, read0 = flat(states[:-1] * mask), first * mask
    return product(flat(dz[1:]).t(), reads).addmm_(dz[0].t(), read0)


def input_grads(dz, inputs, weight, need_inputs: bool, need_weight: bool):
    """The gradients of Zx = x W^T over all steps, dz (T, B, K*H), inputs (T, B, F): dx = dz W and
    dW = dz^T x, one product each (None where not needed)."""
    flat_dz = dz.reshape(-1, dz.shape[-1])
    d_inputs = product(flat_dz, weight).view_as(inputs) if need_inputs else None
    d_weight = product(flat_dz.t(), inputs.reshape(-1, inputs.shape[-1])) if need_weight else None
    return d_inputs, d_weight


class LinearProduct(torch.autograd.Function):
    """x W^T (+ b) for x (..., F), W (O, F), and its gradients, each one product through oneDNN (`product`):
    autograd's matmul runs the three on MKL, which runs AVX2 kernels on AMD CPUs (half oneDNN's rate on
    AVX-512; the layer-norm LSTM's input product 1.1-1.2x slower at (32, 128, 100)). Not differentiable again."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        y = product(x.reshape(-1, x.shape[-1]), weight.t())
        if bias is not None:
            y += bias
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        d_x, d_weight = input_grads(dy, x, weight, *ctx.needs_input_grad[:2])
        d_bias = dy.reshape(-1, dy.shape[-1]).sum(0) if ctx.with_bias and ctx.needs_input_grad[2] else None
        return d_x, d_weight, d_bias


def product(a, b):
    """a @ b, through oneDNN on CPU where the C++ loops are built (loops.cpp: `product`)."""
    extension = compiled.extension_for(a)
    return extension.product(a, b) if extension is not None else torch.mm(a, b)
