"""Conversion to and from torch.nn's recurrent modules, weights shared by value (copied), and the
training mode carried over (an eval-mode module converts to an eval-mode one: no dropout).

A cell that torch.nn computes exactly (`torch_mode`) has torch's parameter names and gate order, so
its state_dict loads into the torch.nn cell with strict=True; these helpers do the same for whole
stacks: `to_torch(Stacked)` -> torch.nn.LSTM/GRU/RNN (batch_first=True) and back with `from_torch`.
A stack of `ProjectedLSTMCell`s is torch.nn.LSTM(proj_size=P) (torch has no projected LSTMCell).
"""

from __future__ import annotations

import warnings

from torch import nn

from .cells import GRUCell, LSTMCell, ProjectedLSTMCell, VanillaCell
from .kernels.native import torch_mode
from .runners import Recurrent, Stacked

__all__ = ["to_torch_cell", "from_torch_cell", "to_torch", "from_torch"]

_TORCH_CELLS = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell}
_TORCH_LAYERS = {"LSTM": nn.LSTM, "GRU": nn.GRU}


def _mode(cell, where: str) -> str:
    if isinstance(cell, ProjectedLSTMCell):
        return _projected_mode(cell, where)
    mode, reason = torch_mode(cell)
    if mode is None:
        raise ValueError(f"{where}: cannot convert; {reason}")
    return mode


def _projected_mode(cell, where: str) -> str:
    """'LSTM+proj' when torch.nn.LSTM(proj_size=P) computes this ProjectedLSTMCell exactly."""
    for reason, bad in (("tanh and sigmoid only", cell.activation != "tanh" or cell.gate_activation != "sigmoid"),
                        ("no output feedback", cell.feedback_size), ("no reads_state=False", not cell.reads_state),
                        ("no cell dropout", cell.dropout or cell.recurrent_dropout), ("no zoneout", cell.zoneout),
                        ("no input of size 0", cell.input_size == 0)):
        if bad:
            raise ValueError(f"{where}: cannot convert; torch.nn.LSTM(proj_size) has {reason}")
    return "LSTM+proj"


def to_torch_cell(cell) -> nn.Module:
    """rnnlab LSTMCell / GRUCell / VanillaCell -> torch.nn.LSTMCell / GRUCell / RNNCell."""
    if isinstance(cell, ProjectedLSTMCell):
        raise ValueError("to_torch_cell: cannot convert ProjectedLSTMCell; torch.nn.LSTMCell has no projection "
                         "(wrap it in Recurrent and use to_torch: torch.nn.LSTM(proj_size=P))")
    mode = _mode(cell, "to_torch_cell")
    bias = cell.bias_ih is not None
    if mode.startswith("RNN"):
        out = nn.RNNCell(cell.input_size, cell.hidden_size, bias, nonlinearity=cell.activation)
    else:
        out = _TORCH_CELLS[mode](cell.input_size, cell.hidden_size, bias)
    out.load_state_dict(cell.state_dict(), strict=True)
    return out.to(cell.weight_ih).train(cell.training)


def from_torch_cell(module: nn.Module):
    """torch.nn.LSTMCell / GRUCell / RNNCell -> the rnnlab cell with the same weights."""
    bias = module.bias
    if isinstance(module, nn.LSTMCell):
        cell = LSTMCell(module.input_size, module.hidden_size, bias=bias)
    elif isinstance(module, nn.GRUCell):
        cell = GRUCell(module.input_size, module.hidden_size, bias=bias)
    elif isinstance(module, nn.RNNCell):
        cell = VanillaCell(module.input_size, module.hidden_size, activation=module.nonlinearity, bias=bias)
    else:
        raise ValueError(f"from_torch_cell: module must be torch.nn.LSTMCell, GRUCell or RNNCell; "
                         f"got {type(module).__name__}")
    cell.load_state_dict(module.state_dict(), strict=True)
    return cell.to(module.weight_ih).train(module.training)


def _layers(runner) -> list:
    if isinstance(runner, Recurrent):
        return [runner]
    if isinstance(runner, Stacked) and all(isinstance(r, Recurrent) for r in runner.layers):
        return list(runner.layers)
    raise ValueError(f"to_torch: runner must be a Recurrent or a Stacked of Recurrent layers; "
                     f"got {type(runner).__name__}")


def to_torch(runner) -> nn.Module:
    """Recurrent or Stacked (no residual) -> torch.nn.LSTM / GRU / RNN with batch_first=True."""
    layers = _layers(runner)
    stacked = runner if isinstance(runner, Stacked) else None  # a Recurrent has no connections between layers
    if stacked is not None and stacked.residual:
        raise ValueError("to_torch: cannot convert; torch.nn has no residual connections between layers")
    modes = {_mode(r.cell, "to_torch") for r in layers}
    if len(modes) != 1:
        raise ValueError(f"to_torch: every layer must be the same kind of cell; got {sorted(modes)}")
    mode = modes.pop()
    first = layers[0].cell
    if any(r.cell.hidden_size != first.hidden_size for r in layers):
        raise ValueError("to_torch: every layer must have the same hidden_size")
    if any(r.cell.output_size != first.output_size for r in layers):  # one kind of cell: P differs, if any
        raise ValueError("to_torch: every layer must have the same proj_size")
    bias = first.bias_ih is not None
    kwargs = dict(num_layers=len(layers), bias=bias, batch_first=True,
                  dropout=stacked.dropout if stacked is not None else 0.0)
    if mode == "LSTM+proj":
        out = nn.LSTM(first.input_size, first.hidden_size, proj_size=first.proj_size, **kwargs)
    elif mode.startswith("RNN"):
        out = nn.RNN(first.input_size, first.hidden_size, nonlinearity=mode[4:].lower(), **kwargs)
    else:
        out = _TORCH_LAYERS[mode](first.input_size, first.hidden_size, **kwargs)
    state = {f"{name}_l{k}": p for k, r in enumerate(layers) for name, p in r.cell.state_dict().items()}
    out.load_state_dict(state, strict=True)
    return out.to(first.weight_ih).train(runner.training)  # an eval-mode stack must not come back dropping out


def from_torch(module: nn.Module, implementation: str = "auto") -> Stacked:
    """torch.nn.LSTM / GRU / RNN (unidirectional) -> Stacked with the same weights; an LSTM with
    proj_size P > 0 becomes a stack of ProjectedLSTMCell.

    rnnlab is batch first, (B, T, I). A module with torch's default batch_first=False was fed (T, B, I):
    the same tensor given to the converted runner gives right-shaped, wrong outputs, so converting one
    warns (UserWarning). Transpose such inputs (xs.transpose(0, 1)); to say that the inputs are batch
    first already, set `module.batch_first = True` before converting (the weights are the same)."""
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise ValueError(f"from_torch: module must be torch.nn.LSTM, GRU or RNN; got {type(module).__name__}")
    if module.bidirectional:
        raise ValueError("from_torch: bidirectional modules are not supported")
    if not module.batch_first:
        warnings.warn("from_torch: the module reads (T, B, I) (batch_first=False) but the rnnlab runner reads "
                      "(B, T, I); transpose inputs with xs.transpose(0, 1), or set module.batch_first = True "
                      "before converting if they are batch first already", UserWarning, stacklevel=2)
    if isinstance(module, nn.LSTM) and module.proj_size:
        make = lambda i: ProjectedLSTMCell(i, module.hidden_size, bias=module.bias, proj_size=module.proj_size)
    elif isinstance(module, nn.LSTM):
        make = lambda i: LSTMCell(i, module.hidden_size, bias=module.bias)
    elif isinstance(module, nn.GRU):
        make = lambda i: GRUCell(i, module.hidden_size, bias=module.bias)
    else:
        make = lambda i: VanillaCell(i, module.hidden_size, activation=module.nonlinearity, bias=module.bias)
    layers = []
    params = module.state_dict()
    for k in range(module.num_layers):
        cell = make(module.input_size if k == 0 else layers[-1].output_size)
        cell.load_state_dict({name: params[f"{name}_l{k}"] for name in cell.state_dict()}, strict=True)
        layers.append(Recurrent(cell, implementation))
    return Stacked(*layers, dropout=module.dropout).to(module.weight_ih_l0).train(module.training)
