"""The cells' activations for hand-written loops: forward into a given buffer, and the backward
computed from the activation's *output* y = a(z), so a loop need keep only what it computed.

    forward(z, out):          out = a(z)               (out may be z: in place)
    backward(grad, y, out):   out = grad * a'(z)       with a'(z) written in terms of y

    tanh: 1 - y^2     sigmoid: y (1 - y)      relu: [y > 0]        identity: 1
    hard_sigmoid: [0 < y < 1] / 6             hard_tanh: [-1 < y < 1]
    softsign: (1 - |y|)^2  (= 1 / (1 + |z|)^2)                      elu: [y > 0] + [y <= 0] (y + 1)
gelu is not invertible from its output, so loops that keep only y do not offer it.
"""

from __future__ import annotations

import torch

_aten = torch.ops.aten


def _copy(z, out):
    return z if out is z else out.copy_(z)


def _hard_sigmoid(z, out):  # torch's formula, relu6(z + 3) / 6, for bitwise-close results
    return torch.add(z, 3, out=out).clamp_(0, 6).div_(6)


FORWARD = {
    "tanh": lambda z, out: torch.tanh(z, out=out),
    "sigmoid": lambda z, out: torch.sigmoid(z, out=out),
    "relu": lambda z, out: torch.clamp_min(z, 0, out=out),
    "identity": _copy,
    "hard_sigmoid": _hard_sigmoid,
    "hard_tanh": lambda z, out: torch.clamp(z, -1, 1, out=out),
    "softsign": lambda z, out: torch.div(z, z.abs().add_(1), out=out),
    "elu": lambda z, out: torch.where(z > 0, z, torch.expm1(z), out=out),
}

BACKWARD = {
    "tanh": lambda g, y, out: _aten.tanh_backward.grad_input(g, y, grad_input=out),
    "sigmoid": lambda g, y, out: _aten.sigmoid_backward.grad_input(g, y, grad_input=out),
    "relu": lambda g, y, out: _aten.threshold_backward.grad_input(g, y, 0, grad_input=out),
    "identity": lambda g, y, out: _copy(g, out),
    "hard_sigmoid": lambda g, y, out: torch.mul(g, ((y > 0) & (y < 1)) / 6, out=out),
    "hard_tanh": lambda g, y, out: torch.mul(g, y.abs() < 1, out=out),
    "softsign": lambda g, y, out: torch.mul(g, (1 - y.abs()).square_(), out=out),
    "elu": lambda g, y, out: _aten.elu_backward.grad_input(g, 1.0, 1, 1, True, y, grad_input=out),
}
