"""What both fused paths (fused.py, fused_cells.py) do before their loops: the batch sorted by length
(so that at step t the running sequences are the first n_t rows), and the inputs made time-major
with the fed-back outputs beside them, for the one input GEMM of all steps."""

from __future__ import annotations

import torch

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
    """(inputs (T, B, I [+ O]) contiguous, weight (K*H, I [+ O])): x (times its dropout mask) and the
    fed-back y* side by side, so that U x + W y* is one product over all steps."""
    inputs = xs.transpose(0, 1)  # (T, B, I): time-major, so each step's rows are contiguous
    if mx is not None:
        inputs = inputs * mx
    weight = cell.weight_ih
    if y_prev is not None and cell.weight_yh is not None:
        inputs = torch.cat([inputs, y_prev.transpose(0, 1)], dim=-1)  # (T, B, I + O)
        weight = torch.cat([cell.weight_ih, cell.weight_yh], dim=1)  # (K*H, I + O)
    return inputs.contiguous(), weight
