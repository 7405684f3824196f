"""Conversion to and from torch.nn's recurrent modules, weights shared by value (copied).

A cell that torch.nn computes exactly (`torch_mode`) has torch's parameter names and gate order, so
its state_dict loads into the torch.nn cell with strict=True; these helpers do the same for whole
stacks: `to_torch(Stacked)` -> torch.nn.LSTM/GRU/RNN (batch_first=True) and back with `from_torch`.
"""

from __future__ import annotations

import warnings

from torch import nn

from .cells import GRUCell, LSTMCell, VanillaCell
from .kernels.native import torch_mode
from .runners import Recurrent, Stacked

__all__ = ["to_torch_cell", "from_torch_cell", "to_torch", "from_torch"]

_TORCH_CELLS = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell}
_TORCH_LAYERS = {"LSTM": nn.LSTM, "GRU": nn.GRU}


def _mode(cell, where: str) -> str:
    mode, reason = torch_mode(cell)
    if mode is None:
        raise ValueError(f"{where}: cannot convert; {reason}")
    return mode


def to_torch_cell(cell) -> nn.Module:
    """rnnlab LSTMCell / GRUCell / VanillaCell -> torch.nn.LSTMCell / GRUCell / RNNCell."""
    mode = _mode(cell, "to_torch_cell")
    bias = cell.bias_ih is not None
    if mode.startswith("RNN"):
        out = nn.RNNCell(cell.input_size, cell.hidden_size, bias, nonlinearity=cell.activation)
    else:
        out = _TORCH_CELLS[mode](cell.input_size, cell.hidden_size, bias)
    out.load_state_dict(cell.state_dict(), strict=True)
    return out.to(cell.weight_ih)


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
    return cell.to(module.weight_ih)


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
    if getattr(runner, "residual", False):
        raise ValueError("to_torch: cannot convert; torch.nn has no residual connections between layers")
    modes = {_mode(r.cell, "to_torch") for r in layers}
    if len(modes) != 1:
        raise ValueError(f"to_torch: every layer must be the same kind of cell; got {sorted(modes)}")
    mode = modes.pop()
    first = layers[0].cell
    if any(r.cell.hidden_size != first.hidden_size for r in layers):
        raise ValueError("to_torch: every layer must have the same hidden_size")
    bias = first.bias_ih is not None
    kwargs = dict(num_layers=len(layers), bias=bias, batch_first=True, dropout=getattr(runner, "dropout", 0.0))
    if mode.startswith("RNN"):
        out = nn.RNN(first.input_size, first.hidden_size, nonlinearity=mode[4:].lower(), **kwargs)
    else:
        out = _TORCH_LAYERS[mode](first.input_size, first.hidden_size, **kwargs)
    state = {f"{name}_l{k}": p for k, r in enumerate(layers) for name, p in r.cell.state_dict().items()}
    out.load_state_dict(state, strict=True)
    return out.to(first.weight_ih)


def from_torch(module: nn.Module, implementation: str = "auto") -> Stacked:
    """torch.nn.LSTM / GRU / RNN (unidirectional, no projections) -> Stacked with the same weights.

    rnnlab is batch first, (B, T, I). A module with torch's default batch_first=False was fed (T, B, I):
    the same tensor given to the converted runner gives right-shaped, wrong outputs, so converting one
    warns (UserWarning). Transpose such inputs (xs.transpose(0, 1)); to say that the inputs are batch
    first already, set `module.batch_first = True` before converting (the weights are the same)."""
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        raise ValueError(f"from_torch: module must be torch.nn.LSTM, GRU or RNN; got {type(module).__name__}")
    if module.bidirectional or getattr(module, "proj_size", 0):
        raise ValueError("from_torch: bidirectional and projected (proj_size) modules are not supported")
    if not module.batch_first:
        warnings.warn("from_torch: the module reads (T, B, I) (batch_first=False) but the rnnlab runner reads "
                      "(B, T, I); transpose inputs with xs.transpose(0, 1), or set module.batch_first = True "
                      "before converting if they are batch first already", UserWarning, stacklevel=2)
    if isinstance(module, nn.LSTM):
        make = lambda i: LSTMCell(i, module.hidden_size, bias=module.bias)
    elif isinstance(module, nn.GRU):
        make = lambda i: GRUCell(i, module.hidden_size, bias=module.bias)
    else:
        make = lambda i: VanillaCell(i, module.hidden_size, activation=module.nonlinearity, bias=module.bias)
    layers = []
    params = module.state_dict()
    for k in range(module.num_layers):
        cell = make(module.input_size if k == 0 else module.hidden_size)
        cell.load_state_dict({name: params[f"{name}_l{k}"] for name in cell.state_dict()}, strict=True)
        layers.append(Recurrent(cell, implementation))
    return Stacked(*layers, dropout=module.dropout).to(module.weight_ih_l0)
