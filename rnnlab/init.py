"""Initialisers, weight constraints and regularisers shared by every cell.

The lecture's "differences to the official implementation": a special initialisation scheme, weight
constraints and regularisation. Each is a small typed object a cell takes by keyword; nothing here
knows about any particular cell beyond its weight groups:

    kernel     weight_ih and weight_yh   (what reads x and y)
    recurrent  weight_hh                 (what reads the state)
    bias       bias_ih and bias_hh
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .checks import check_flag, check_number

__all__ = [
    "Init",
    "MaxNorm",
    "NonNeg",
    "UnitNorm",
    "L1L2",
    "Constraints",
    "Regularizers",
    "regularization_loss",
    "apply_constraints",
    "Regularized",
    "Constrained",
]

SCHEMES = ("uniform", "xavier_uniform", "xavier_normal", "orthogonal", "kaiming_uniform", "zeros")


def _init_block(block: torch.Tensor, scheme: str, hidden_size: int) -> None:
    """Initialise a (rows, fan_in) weight in place."""
    if scheme == "uniform":  # torch.nn's RNN default: U(-1/sqrt(H), 1/sqrt(H))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(block, -bound, bound)
    elif block.numel() == 0:
        return
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(block)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(block)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(block)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(block, a=math.sqrt(5))
    else:  # zeros
        nn.init.zeros_(block)


@dataclass(frozen=True)
class Init:
    """How a cell's weights start. Each scheme is applied to a whole stacked weight, as Keras does:
    Glorot's bound for an LSTM's input kernel is sqrt(6 / (I + 4H)) (fan-out = every gate's
    units), and `orthogonal` makes the whole (K*H, H) recurrent kernel's columns orthonormal
    (Keras's (H, K*H) kernel has orthonormal rows: the same matrix transposed).

    Defaults are torch.nn's (every weight and bias U(-1/sqrt(H), 1/sqrt(H))); `Init.keras()` is
    Keras's (Glorot-uniform kernels, orthogonal recurrent kernels, zero biases, forget bias 1).
    """

    kernel: str = "uniform"
    recurrent: str = "uniform"
    bias: str = "uniform"
    unit_forget_bias: bool = False

    def __post_init__(self):
        for name in ("kernel", "recurrent", "bias"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Init: {name} must be a scheme name, one of {SCHEMES}; "
                                f"got {type(value).__name__} {value!r}")
            if value not in SCHEMES:
                raise ValueError(f"Init: {name} must be one of {SCHEMES}; got {value!r}")
        check_flag("Init", "unit_forget_bias", self.unit_forget_bias)

    @classmethod
    def torch(cls) -> Init:
        return cls()

    @classmethod
    def keras(cls) -> Init:
        return cls("xavier_uniform", "orthogonal", "zeros", unit_forget_bias=True)

    def apply(self, weight: torch.Tensor | None, scheme: str, hidden_size: int, blocks: int) -> None:
        """Initialise a stacked (blocks*H, fan_in) weight or (blocks*H,) bias, all gates at once
        (`blocks` is kept for callers; the fan-out of Glorot's bound counts every gate)."""
        if weight is None:
            return
        with torch.no_grad():
            _init_block(weight if weight.dim() > 1 else weight.unsqueeze(1), scheme, hidden_size)


# --- constraints: projections applied after each optimiser step -------------------------------


@dataclass(frozen=True)
class MaxNorm:
    """Rescale each unit's incoming weights (a row of a torch (out, in) weight) to norm <= max_value."""

    max_value: float = 3.0

    def __post_init__(self):
        check_number("MaxNorm", "max_value", self.max_value)
        if not self.max_value > 0:
            raise ValueError(f"MaxNorm: max_value must be > 0; got {self.max_value!r}")

    def __call__(self, w: torch.Tensor) -> None:
        if w.dim() < 2:
            w.clamp_(-self.max_value, self.max_value)
            return
        norms = w.norm(dim=1, keepdim=True)
        w.mul_(norms.clamp(max=self.max_value) / norms.clamp(min=1e-12))


@dataclass(frozen=True)
class NonNeg:
    """Clip weights to be non-negative."""

    def __call__(self, w: torch.Tensor) -> None:
        w.clamp_(min=0.0)


@dataclass(frozen=True)
class UnitNorm:
    """Rescale each unit's incoming weights to norm 1."""

    def __call__(self, w: torch.Tensor) -> None:
        if w.dim() < 2:
            w.div_(w.norm().clamp(min=1e-12))
        else:
            w.div_(w.norm(dim=1, keepdim=True).clamp(min=1e-12))


Constraint = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class Constraints:
    """Constraint per weight group; None leaves a group free. A constraint changes the weight in
    place (MaxNorm, NonNeg, UnitNorm) or returns the projected weight, as Keras's constraints do."""

    kernel: Constraint | None = None
    recurrent: Constraint | None = None
    bias: Constraint | None = None

    def __post_init__(self):
        _check_callables(self, ("kernel", "recurrent", "bias"), "MaxNorm(3.0)")


# --- regularisers: loss terms the trainer adds ------------------------------------------------


@dataclass(frozen=True)
class L1L2:
    """l1 * sum|w| + l2 * sum w^2."""

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        for name in ("l1", "l2"):
            check_number("L1L2", name, getattr(self, name))
            if not getattr(self, name) >= 0:
                raise ValueError(f"L1L2: {name} must be >= 0; got {getattr(self, name)!r}")

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        loss = w.new_zeros(())
        if self.l1:
            loss = loss + self.l1 * w.abs().sum()
        if self.l2:
            loss = loss + self.l2 * w.pow(2).sum()
        return loss


Regularizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Regularizers:
    """Regulariser per weight group; `activity` penalises a runner's outputs (B, T, H) as Keras
    does: the regulariser's value on the whole output (L1L2 sums over elements) divided by B."""

    kernel: Regularizer | None = None
    recurrent: Regularizer | None = None
    bias: Regularizer | None = None
    activity: Regularizer | None = None

    def __post_init__(self):
        _check_callables(self, ("kernel", "recurrent", "bias", "activity"), "L1L2(l2=1e-4)")


def _check_callables(groups, names: tuple[str, ...], example: str) -> None:
    """TypeError unless each group's entry is None or a function of the weight (e.g. not a bare number)."""
    for name in names:
        value = getattr(groups, name)
        if isinstance(value, type):  # the class itself is callable: it failed at the first step, printing a weight
            raise TypeError(f"{type(groups).__name__}: {name} must be None or callable on a weight, e.g. {example}; "
                            f"got the class {value.__name__} (call it: {value.__name__}(...))")
        if value is not None and not callable(value):
            raise TypeError(f"{type(groups).__name__}: {name} must be None or callable on a weight, e.g. {example}; "
                            f"got {type(value).__name__} {value!r}")


class Regularized(abc.ABC):
    """A module that adds a term to the loss, `penalty()`, which `regularization_loss` sums over a
    model: the cells (their weights' regularisers) and the `Recurrent` runners (the activity's)."""

    @abc.abstractmethod
    def penalty(self) -> torch.Tensor | None:
        """The term (a scalar tensor), or None when there is none."""


class Constrained(abc.ABC):
    """A module whose weights are projected back onto their sets after each optimiser step,
    `constrain()`, which `apply_constraints` calls over a model: the cells."""

    @abc.abstractmethod
    def constrain(self) -> None:
        """Apply the constraints in place."""


def regularization_loss(module: nn.Module) -> torch.Tensor:
    """Sum of every regulariser in `module`: weight penalties of its cells plus the activity
    penalties its runners recorded in their last forward (every `Regularized` module's `penalty()`).
    The trainer adds this to the loss."""
    _check_module("regularization_loss", module)
    total = None
    for sub in module.modules():
        if isinstance(sub, Regularized):
            term = sub.penalty()
            if term is not None:
                total = term if total is None else total + term
    if total is None:
        p = next(module.parameters(), None)
        return torch.zeros(()) if p is None else p.new_zeros(())
    return total


def apply_constraints(module: nn.Module) -> None:
    """Project every constrained weight of `module` back onto its set (call after optimiser.step()):
    every `Constrained` module's `constrain()`."""
    _check_module("apply_constraints", module)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, Constrained):
                sub.constrain()


def _check_module(where: str, module) -> None:
    if not isinstance(module, nn.Module):  # a tensor or a list failed on `.modules`, naming nothing
        raise TypeError(f"{where}: module must be a torch.nn.Module (the model); got {type(module).__name__}")
