"""The oracle: unroll the cell module one step at a time. Every fast path is tested against it."""

from __future__ import annotations

import torch

from ..cells import Cell, State


def where_state(keep: torch.Tensor, new: State, old: State) -> State:
    """new where keep (B, 1) is true, old elsewhere; for tensors and (nested) tuples of them: a
    `Stacked` state is a tuple of its layers' states, an LSTM layer's a tuple of two tensors."""
    if isinstance(new, (tuple, list)):
        return tuple(where_state(keep, n, o) for n, o in zip(new, old))
    return torch.where(keep, new, old)


def valid_steps(lengths: torch.Tensor | None, steps: int) -> torch.Tensor | None:
    """(B, T) bool mask of the steps inside each sequence; None when every sequence is full."""
    if lengths is None or bool((lengths == steps).all()):
        return None
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def without_padding(seq: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor | None:
    """seq (B, T, ...) with every step past its sequence's end set to zero: what an implementation
    reads instead of the padding, so that NaN or inf there (a NaN times a zero mask is still NaN)
    reach neither outputs, states nor gradients. valid: `valid_steps`' mask, None when all are full."""
    if seq is None or valid is None:
        return seq
    return torch.where(valid.view(*valid.shape, *(1,) * (seq.dim() - 2)), seq, seq.new_zeros(()))


def reference(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
              lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state.

    Past a sequence's end its output is zero and its state stays at the last valid step; what the
    padding holds is never read (the cell sees zeros there)."""
    steps = xs.shape[1]
    valid = valid_steps(lengths, steps)
    xs, y_prev = without_padding(xs, valid), without_padding(y_prev, valid)
    feedback = y_prev.unbind(1) if y_prev is not None else (None,) * steps
    outs = []
    # unbind, not xs[:, t]: indexing a tensor that needs grad in the loop makes backward O(T^2).
    for t, x_t in enumerate(xs.unbind(1)):
        out, new = cell.step(x_t, state, feedback[t], masks)
        if valid is not None:
            keep = valid[:, t, None]
            new = where_state(keep, new, state)
            out = torch.where(keep, out, out.new_zeros(()))
        state = new
        outs.append(out)
    return torch.stack(outs, dim=1), state
