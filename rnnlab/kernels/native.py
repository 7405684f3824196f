"""`native`: torch's own fused recurrent kernels (oneDNN / ATen on CPU, cuDNN on GPU), called on the
rnnlab cell's own parameters, so gradients land on them and nothing is copied that could drift.

The conditions, as Keras documents its cuDNN ones. `native` serves a cell when
  1. it is an `LSTMCell`, a `GRUCell`, or a `VanillaCell` with activation tanh or relu, with the
     standard activations (tanh candidate, sigmoid gates) and `reads_state=True`;
  2. it has `depth=1` (no deep transition), no zoneout and `input_size > 0`;
  3. no recurrent-dropout mask is sampled (training with `recurrent_dropout > 0`). An input-dropout
     mask is fine: it scales x before the kernel, which is exactly what the cell does;
  4. output feedback only under teacher forcing (`y_prev` given). Then the cell computes
     U x + W y_prev = [U W] [x; y_prev], so the kernel gets the input [x, y_prev] and the input
     weight [weight_ih, weight_yh] (concatenated in the graph, not copied into a parameter).
  5. under CPU autocast, the LSTM only where torch's oneDNN LSTM has the autocast dtype for this CPU:
     on CPUs without bf16 instructions (an AVX2 AMD EPYC) torch.nn.LSTM itself raises "could not
     create a primitive descriptor" (pytorch/pytorch#88136), so `auto` takes the next implementation.
`lengths` are served by packing (`pack_padded_sequence`, unsorted): outputs past a sequence's end
are zero and the final state is the one at its last valid step, as in `reference`.
"""

from __future__ import annotations

import functools

import torch
from torch import _VF
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..cells import Cell, State
from ..checks import spelled

_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def torch_mode(cell: Cell, *, feedback: bool = False, dropout: bool = False) -> tuple[str | None, str]:
    """torch's name for the cell ('LSTM', 'GRU', 'RNN_TANH', 'RNN_RELU') and '' when torch.nn computes
    exactly this cell; (None, reason) when it does not.

    feedback=True accepts output feedback and dropout=True the cell's dropout settings: torch's
    kernels can still run such a cell (teacher-forced y* as part of the input; a dropout mask
    applied outside), though no torch.nn module holds it."""
    mode, reason = _marked_mode(cell, feedback=feedback, dropout=dropout)
    return mode, spelled(reason)


def _marked_mode(cell: Cell, *, feedback: bool, dropout: bool) -> tuple[str | None, str]:
    """torch_mode, the cell's arguments in its reason marked for checks.spelled."""
    modes = {"lstm": "LSTM", "gru": "GRU", "vanilla": "RNN"}
    mode = modes.get(cell.family)
    if mode is None:
        return None, f"{type(cell).__name__} has no torch.nn counterpart"
    if mode == "RNN":
        if cell.activation not in ("tanh", "relu"):
            return None, f"torch.nn.RNN has tanh or relu only; the cell uses {{activation}}={cell.activation!r}"
        mode = "RNN_" + cell.activation.upper()
    elif cell.activation != "tanh" or cell.gate_activation != "sigmoid":
        return None, "torch.nn's LSTM and GRU use tanh and sigmoid only"
    for reason, bad in (("output feedback", cell.feedback_size and not feedback),
                        ("{reads_state=False}", not cell.reads_state),
                        ("a deep transition ({depth} > 1)", cell.depth > 1),
                        ("recurrent dropout", cell.recurrent_dropout and not dropout),
                        ("input dropout", cell.dropout and not dropout),
                        ("{zoneout}", cell.zoneout),
                        ("an input of size 0", cell.input_size == 0)):
        if bad:
            return None, f"torch.nn has no {reason}"
    return mode, ""


def _mode(cell: Cell) -> tuple[str | None, str]:
    """torch's kernel for the cell, or (None, reason): torch.nn's conditions, with teacher-forced
    feedback and dropout settings allowed (a recurrent-dropout mask is checked per call)."""
    return _marked_mode(cell, feedback=True, dropout=True)


def unavailable(cell: Cell, masks=(None, None), **context) -> str | None:
    """Why torch's fused kernels cannot compute this configuration exactly; None if they can."""
    mode, reason = _mode(cell)
    if mode is None:
        return reason
    if masks[1] is not None:
        return "torch.nn has no recurrent-dropout mask"
    if mode == "LSTM" and context.get("autocast") and context.get("device", "cpu") == "cpu":
        dtype = torch.get_autocast_dtype("cpu")
        if not cpu_autocast_lstm_runs(dtype):
            return f"torch's LSTM kernel has no {str(dtype).removeprefix('torch.')} for this CPU under autocast"
    return None


@functools.cache
def cpu_autocast_lstm_runs(dtype: torch.dtype) -> bool:
    """Whether torch.nn.LSTM runs under CPU autocast to `dtype` on this machine: tried once per process
    on one step of a width-8 LSTM of zero weights (oneDNN's support depends on the CPU's instructions, not
    on a flag; no module is made, so the random generator is left as it was)."""
    zero = lambda *shape: torch.zeros(shape)  # noqa: E731
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            _VF.lstm(zero(1, 1, 8), (zero(1, 1, 8), zero(1, 1, 8)), [zero(32, 8), zero(32, 8)], False, 1, 0.0, False,
                     False, False)
    except RuntimeError:
        return False
    return True


def native(cell: Cell, xs: torch.Tensor, state: State, y_prev: torch.Tensor | None,
           lengths: torch.Tensor | None, masks) -> tuple[torch.Tensor, State]:
    """xs (B, T, I), y_prev (B, T, O) or None -> outputs (B, T, H), final state, by torch's kernel."""
    mode = _mode(cell)[0]
    mx, _ = masks
    if mx is not None:
        xs = xs * mx[:, None, :]
    weight_ih = cell.weight_ih
    if y_prev is not None:
        xs = torch.cat([xs, y_prev], dim=-1)  # (B, T, I + O)
        weight_ih = torch.cat([weight_ih, cell.weight_yh], dim=1)  # (K*H, I + O)
    has_bias = cell.bias_ih is not None
    weights = [weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if has_bias else [])
    lstm = mode == "LSTM"
    hx = tuple(s.unsqueeze(0) for s in state) if lstm else state.unsqueeze(0)  # (1, B, H)
    kernel = _KERNELS[mode]
    # cuDNN keeps what its backward needs only in "train" mode (dropout is 0 either way), so ask for it
    # whenever a gradient may be taken, whatever the module's train/eval flag says.
    train = torch.is_grad_enabled()
    if lengths is None:
        result = kernel(xs, hx, weights, has_bias, 1, 0.0, train, False, True)
        ys, final = result[0], result[1:]
    else:
        packed = pack_padded_sequence(xs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(h.index_select(1, order) for h in hx) if lstm else hx.index_select(1, order)
        result = kernel(packed.data, packed.batch_sizes, hx, weights, has_bias, 1, 0.0, train, False)
        packed_out = type(packed)(result[0], packed.batch_sizes, order, unorder)
        ys, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=xs.shape[1])
        final = tuple(h.index_select(1, unorder) for h in result[1:])
    if lstm:
        return ys, (final[0][0], final[1][0])
    return ys, final[0][0]
