"""The ladder of cells: the lecture's state update s^t = h(x^t, s^{t-1}, y^{t-1}).

Every cell computes one pre-activation per gate k,

    z_k = U_k x + V_k s_read + W_k y_prev + b_k        (eq. 1 of the lecture, per gate)

from three fused weights with the gates stacked along dim 0 in the order of `cell.gates`:
`weight_ih` (U, shape (K*H, I)), `weight_hh` (V, (K*H, H)) and, with output feedback,
`weight_yh` (W, (K*H, O)); biases `bias_ih` and `bias_hh` as in torch.nn. The candidate the lecture
calls r is torch's g; the LSTM's order i, f, g, o and the GRU's r, z, n are torch's, so a cell
without feedback loads into the matching torch.nn cell with strict=True.

Calling convention, one for all cells:

    out, state = cell(x, state, y_prev=None)          x (B, I), y_prev (B, O), out (B, H)

`cell.forward` checks its arguments; runners call `cell.step`, which does not, once per time step.
A cell's equations are one hook, `combine(zx, zh, state)`: the new state from the input part
zx = U x + W y_prev + b_ih (B, K*H) and the recurrent part zh = V s_read + b_hh (B, K*H, or None
when the cell does not read its state); most cells start with z = `preactivations(zx, zh)`, the
sum through the deep transition, and the GRU reads the two parts apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import ArgumentError, check_flag, check_number, check_tensor_like
from .init import Constrained, Constraints, Init, Regularized, Regularizers

__all__ = [
    "Cell",
    "VanillaCell",
    "ResidualCell",
    "InputGatedCell",
    "ForgetGatedCell",
    "LSTMBase",
    "LSTMCell",
    "GRUCell",
    "OutputFeedbackCell",
    "PeepholeLSTMCell",
    "LayerNormLSTMCell",
    "ProjectedLSTMCell",
    "ACTIVATIONS",
    "State",
]

State = torch.Tensor | tuple[torch.Tensor, ...]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "identity": lambda z: z,
    "hard_sigmoid": F.hardsigmoid,
    "hard_tanh": F.hardtanh,
    "softsign": F.softsign,
    "elu": F.elu,
    "gelu": F.gelu,
}


def _activation(name: str, argument: str, owner: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if not isinstance(name, str):
        raise TypeError(f"{owner}: {argument} must be a name, one of {sorted(ACTIVATIONS)}; "
                        f"got {type(name).__name__} {name!r}")
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: {argument} must be one of {sorted(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]


class _Activation(nn.Module):
    """A named activation as a module, for the deep-transition MLP."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, z):
        return self.fn(z)

    def extra_repr(self):
        return self.name


def _dropout_mask(p: float, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout mask: zeros with probability p, 1/(1-p) elsewhere."""
    return torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(1.0 - p) / (1.0 - p)


class Cell(nn.Module, Regularized, Constrained, ABC):
    """Base of the ladder. Subclasses name their gates and write their equations in `combine`.

    Args:
        input_size: I, size of x^t (0 for a cell driven by feedback alone).
        hidden_size: H, size of the state s^t.
        feedback_size: O, size of the fed-back y^{t-1}; 0 (default) turns output feedback off.
        activation: a, for the candidate r (and the LSTM's output squashing g). Default tanh.
        gate_activation: sigma, for the gates. Default sigmoid.
        reads_state: if False the gates and candidate do not read the state (V = 0, as in minGRU
            and minLSTM): the update becomes linear in s and can be computed by a parallel scan.
        depth: deep transition, the lecture's "let h be a multilayer perceptron": with depth L > 1
            the affine map of eq. 1 goes to H units, then L-1 more layers (activation, linear), the
            last of which gives the K*H gate pre-activations. depth=1 is eq. 1 itself.
        bias: whether the cell has bias_ih and bias_hh.
        init: initialisation scheme (default torch.nn's; `Init.keras()` for Keras's).
        dropout: input dropout on x, one mask per sequence (applied in training only).
        recurrent_dropout: variational dropout on the state the gates read, one mask per sequence.
        zoneout: probability that each unit keeps its previous state at a step (Krueger et al.);
            at evaluation the state is the expectation.
        constraints: per-group projections applied after each optimiser step (`apply_constraints`).
        regularizers: per-group penalties summed by `regularization_loss`.
    """

    gates: tuple[str, ...] = ("r",)
    # What the kernels know this cell as (rnnlab.kernels serve cells by family, never by class): every
    # concrete cell declares its own, so a subclass that changes the equations is never run by a fast
    # path written for its parent's.
    family: str

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if "family" not in cls.__dict__ and not abstract:  # an abstract base shares code, never equations
            raise TypeError(f"{cls.__name__}: a Cell subclass must declare its own `family` (a new name unless it "
                            f"computes exactly what an existing family does); the kernels serve cells by family")
        if "update" in cls.__dict__:  # the hook before combine(zx, zh, state): it would never be called
            raise TypeError(f"{cls.__name__}: write the equations in combine(zx, zh, state) (z = "
                            f"self.preactivations(zx, zh)); update(z, state) is no longer a Cell hook")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        feedback_size: int = 0,
        *,
        activation: str = "tanh",
        gate_activation: str = "sigmoid",
        reads_state: bool = True,
        depth: int = 1,
        bias: bool = True,
        init: Init = Init(),
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        constraints: Constraints = Constraints(),
        regularizers: Regularizers = Regularizers(),
    ):
        super().__init__()
        name = type(self).__name__
        for arg, value, low in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1),
                                ("feedback_size", feedback_size, 0), ("depth", depth, 1)):
            check_number(name, arg, value, integer=True)
            if value < low:
                raise ArgumentError(name, f"{{{arg}}} must be an int >= {low}; got {value!r}")
        for arg, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout), ("zoneout", zoneout)):
            check_number(name, arg, value)
            if not 0.0 <= value < 1.0:
                raise ArgumentError(name, f"{{{arg}}} must be in [0, 1); got {value!r}")
        check_flag(name, "reads_state", reads_state)
        check_flag(name, "bias", bias)
        for arg, value, kind in (("init", init, Init), ("constraints", constraints, Constraints),
                                 ("regularizers", regularizers, Regularizers)):
            if not isinstance(value, kind):
                raise TypeError(f"{name}: {arg} must be an rnnlab {kind.__name__}; got {type(value).__name__}")
        if recurrent_dropout and not reads_state:
            raise ArgumentError(name, f"{{recurrent_dropout}} must be 0 with {{reads_state=False}} (nothing reads the "
                                      f"state); got {recurrent_dropout!r}")
        self.input_size, self.hidden_size, self.feedback_size = input_size, hidden_size, feedback_size
        self.activation, self.gate_activation = activation, gate_activation
        self.act = _activation(activation, "activation", name)
        self.sigma = _activation(gate_activation, "gate_activation", name)
        self.reads_state, self.depth = reads_state, depth
        self.dropout, self.recurrent_dropout, self.zoneout = dropout, recurrent_dropout, zoneout
        self.init, self.constraints, self.regularizers = init, constraints, regularizers

        self.gates = self._gates(reads_state)
        K, H = len(self.gates), hidden_size
        width = H if depth > 1 else K * H  # rows of the first affine map
        self.weight_ih = nn.Parameter(torch.empty(width, input_size))
        self.weight_hh = nn.Parameter(torch.empty(width, H)) if reads_state else None
        self.weight_yh = nn.Parameter(torch.empty(width, feedback_size)) if feedback_size else None
        self.bias_ih = nn.Parameter(torch.empty(width)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(width)) if bias and reads_state else None
        if depth > 1:
            layers: list[nn.Module] = []
            for i in range(depth - 1):
                layers += [_Activation(activation), nn.Linear(H, K * H if i == depth - 2 else H, bias=bias)]
            self.transition = nn.Sequential(*layers)
        else:
            self.transition = None
        self.reset_parameters()

    def _gates(self, reads_state: bool) -> tuple[str, ...]:
        return type(self).gates

    # --- parameters ---------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        K, H = len(self.gates), self.hidden_size
        blocks = K if self.transition is None else 1
        self.init.apply(self.weight_ih, self.init.kernel, H, blocks)
        self.init.apply(self.weight_yh, self.init.kernel, H, blocks)
        self.init.apply(self.weight_hh, self.init.recurrent, H, blocks)
        self.init.apply(self.bias_ih, self.init.bias, H, blocks)
        self.init.apply(self.bias_hh, self.init.bias, H, blocks)
        if self.transition is not None:
            for layer in self.transition:
                if isinstance(layer, nn.Linear):
                    rows = layer.out_features // H
                    self.init.apply(layer.weight, self.init.kernel, H, rows)
                    self.init.apply(layer.bias, self.init.bias, H, rows)
        if self.init.unit_forget_bias and "f" in self.gates:
            last = self.transition[-1].bias if self.transition is not None else self.bias_ih
            if last is None:
                raise ValueError(f"{type(self).__name__}: unit_forget_bias needs bias=True")
            k = self.gates.index("f")
            with torch.no_grad():
                last[k * H:(k + 1) * H] = 1.0
                if self.transition is None and self.bias_hh is not None:
                    self.bias_hh[k * H:(k + 1) * H] = 0.0

    def weight_groups(self) -> dict[str, list[torch.Tensor]]:
        """The parameters of each group that constraints and regularisers act on."""
        kernel = [w for w in (self.weight_ih, self.weight_yh) if w is not None]
        bias = [b for b in (self.bias_ih, self.bias_hh) if b is not None]
        if self.transition is not None:
            kernel += [m.weight for m in self.transition if isinstance(m, nn.Linear)]
            bias += [m.bias for m in self.transition if isinstance(m, nn.Linear) and m.bias is not None]
        return {"kernel": kernel, "recurrent": [self.weight_hh] if self.weight_hh is not None else [], "bias": bias}

    def penalty(self) -> torch.Tensor | None:
        """The weight regularisers' loss term (None when the cell has none)."""
        total = None
        for group, weights in self.weight_groups().items():
            reg = getattr(self.regularizers, group)
            if reg is not None:
                for w in weights:
                    total = reg(w) if total is None else total + reg(w)
        return total

    def constrain(self) -> None:
        """Apply the weight constraints in place (the trainer calls this after each step)."""
        with torch.no_grad():
            for group, weights in self.weight_groups().items():
                con = getattr(self.constraints, group)
                if con is not None:
                    for w in weights:
                        projected = con(w)  # rnnlab's act in place; one that returns the weight, as Keras's
                        if isinstance(projected, torch.Tensor) and projected is not w:  # do, was ignored
                            if projected.shape != w.shape:  # copy_ would broadcast a scalar over the weight
                                raise ValueError(f"{type(self).__name__}: the {group} constraint must change the "
                                                 f"weight in place or return it projected, {tuple(w.shape)}; got "
                                                 f"a tensor {tuple(projected.shape)}")
                            w.copy_(projected)

    # --- state --------------------------------------------------------------------------------

    @property
    def output_size(self) -> int:
        """How wide `output` is, what the runner's ys hold per step: H here; a cell that emits
        something else overrides it (`ProjectedLSTMCell`: its P) or sets it in its `__init__`
        (`self.output_size = P`, as such cells did before this was a property)."""
        return self.__dict__.get("_output_size", self.hidden_size)

    @output_size.setter
    def output_size(self, size: int) -> None:
        self.__dict__["_output_size"] = size

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        """The zero state s^0 for a batch."""
        dtype = dtype or self.weight_ih.dtype
        return torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)

    def read(self, state: State) -> torch.Tensor:
        """What the gates read of the previous state (s; the LSTM's s_bar)."""
        return state

    def output(self, state: State) -> torch.Tensor:
        """What the cell emits for the readout f (s; the LSTM's s_bar)."""
        return state

    def check_state(self, state: State, batch: int, where: str) -> None:
        """ValueError unless `state` has this cell's structure for a batch of `batch`."""
        count = self.__dict__.get("_state_count")
        if count is None:  # how many tensors initial_state makes (0: one, not a tuple), found once: on
            expected = self.initial_state(1, device="meta")  # "meta" it took 20-30 us of every checked call
            count = self.__dict__["_state_count"] = len(expected) if isinstance(expected, tuple) else 0
        if count:
            if not isinstance(state, (tuple, list)) or len(state) != count:
                raise ValueError(f"{where}: state must be a tuple of {count} tensors (B, {self.hidden_size}) "
                                 f"for {type(self).__name__}; got {_describe(state)}")
            parts = state
        else:
            if not isinstance(state, torch.Tensor):
                raise ValueError(f"{where}: state must be a tensor (B, {self.hidden_size}) for "
                                 f"{type(self).__name__}; got {_describe(state)}")
            parts = (state,)
        for part in parts:
            if not isinstance(part, torch.Tensor) or tuple(part.shape) != (batch, self.hidden_size):
                raise ValueError(f"{where}: state must be ({batch}, {self.hidden_size}); got {_describe(part)}")
            check_tensor_like(where, "state", part, self.weight_ih)

    # --- the update ---------------------------------------------------------------------------

    def project_input(self, x: torch.Tensor, y_prev: torch.Tensor | None = None) -> torch.Tensor:
        """U x + b_ih (+ W y_prev): the part that does not depend on the state. Works on (B, I)
        or all steps (B, T, I) at once, which is what lets fast paths hoist it out of the loop."""
        z = F.linear(x, self.weight_ih, self.bias_ih)
        if y_prev is not None and self.weight_yh is not None:
            z = z + F.linear(y_prev, self.weight_yh)
        return z

    def project_state(self, s_read: torch.Tensor) -> torch.Tensor | None:
        """V s_read + b_hh, or None when the cell does not read its state."""
        if self.weight_hh is None:
            return None
        return F.linear(s_read, self.weight_hh, self.bias_hh)

    def preactivations(self, zx: torch.Tensor, zh: torch.Tensor | None) -> torch.Tensor:
        """The K*H gate pre-activations z_k, through the deep transition if there is one."""
        z = zx if zh is None else zx + zh
        return z if self.transition is None else self.transition(z)

    @abstractmethod
    def combine(self, zx: torch.Tensor, zh: torch.Tensor | None, state: State) -> State:
        """The cell's equations: the new state from the input part zx (B, K*H) and the recurrent
        part zh (B, K*H, None when the state is not read), gates in the order of `gates`."""

    def sample_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One dropout mask per sequence for x and for the state read (None when off or in eval)."""
        if not self.training:
            return None, None
        mx = _dropout_mask(self.dropout, (batch, self.input_size), like) if self.dropout else None
        mh = _dropout_mask(self.recurrent_dropout, (batch, self.hidden_size), like) if self.recurrent_dropout else None
        return mx, mh

    def step(self, x: torch.Tensor, state: State, y_prev: torch.Tensor | None = None, masks=(None, None)):
        """One unchecked time step: (out, new_state). Runners call this in their loop."""
        mx, mh = masks
        if mx is not None:
            x = x * mx
        s_read = self.read(state)
        if mh is not None:
            s_read = s_read * mh
        new = self.combine(self.project_input(x, y_prev), self.project_state(s_read), state)
        if self.zoneout:
            new = self._zoneout(state, new)
        return self.output(new), new

    def _zoneout(self, old: State, new: State) -> State:
        p = self.zoneout
        if isinstance(new, tuple):
            return tuple(self._zoneout(o, n) for o, n in zip(old, new))
        if self.training:
            keep = torch.empty_like(new).bernoulli_(p)
            return keep * old + (1 - keep) * new
        return p * old + (1 - p) * new

    def forward(self, x: torch.Tensor, state: State | None = None, y_prev: torch.Tensor | None = None):
        """One checked time step. x (B, I), state as `initial_state` (None: zeros), y_prev (B, O)
        (None with feedback on: y^{t-1} = 0). Returns (out (B, H), new_state)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{name}: x must be (B, {self.input_size}); got {_describe(x)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: x must be a floating-point tensor; got dtype {x.dtype}")
        check_tensor_like(name, "x", x, self.weight_ih)
        batch = x.shape[0]
        if state is None:
            state = self.initial_state(batch, device=x.device, dtype=x.dtype)
        else:
            self.check_state(state, batch, name)
            state = tuple(state) if isinstance(state, list) else state
        self.check_feedback(y_prev, (batch, self.feedback_size), name)
        return self.step(x, state, y_prev, self.sample_masks(batch, x))

    def check_feedback(self, y_prev, shape: tuple[int, ...], where: str) -> None:
        if y_prev is None:
            return
        if not self.feedback_size:
            raise ValueError(f"{where}: y_prev given but {type(self).__name__} has no output feedback "
                             f"(feedback_size=0); build it with feedback_size=O")
        if not isinstance(y_prev, torch.Tensor) or tuple(y_prev.shape) != shape:
            raise ValueError(f"{where}: y_prev must be {shape}; got {_describe(y_prev)}")
        check_tensor_like(where, "y_prev", y_prev, self.weight_ih)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.feedback_size:
            parts.append(f"feedback_size={self.feedback_size}")
        if self.activation != "tanh":
            parts.append(f"activation={self.activation!r}")
        if not self.reads_state:
            parts.append("reads_state=False")
        if self.depth > 1:
            parts.append(f"depth={self.depth}")
        return ", ".join(parts)

    def flops_per_step(self, batch: int = 1) -> int:
        """Multiply-adds x2 of one step's matrix products (the dominant cost), for the
        complexity measurements."""
        K, H = len(self.gates), self.hidden_size
        width = K * H if self.transition is None else H
        fan_in = self.input_size + self.feedback_size + (H if self.reads_state else 0)
        flops = 2 * width * fan_in
        if self.transition is not None:
            flops += sum(2 * m.in_features * m.out_features for m in self.transition if isinstance(m, nn.Linear))
        return batch * flops


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    if isinstance(value, (tuple, list)):  # the first few elements: a (B, T) list of lists would fill a screen
        shown = ", ".join(_describe(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"{type(value).__name__} of {len(value)} [{shown}]"
    return type(value).__name__


class VanillaCell(Cell):
    """Eq. (1) of the lecture:  s^t = a(U x^t + V s^{t-1} + W y^{t-1} + b).

    z = zx + zh (B, H), one block (K = 1); state s (B, H). With a = tanh or relu and no feedback
    this is torch.nn.RNNCell."""

    family = "vanilla"

    gates = ("r",)

    def combine(self, zx, zh, s):
        return self.act(self.preactivations(zx, zh))


class OutputFeedbackCell(Cell):
    """The lecture's special case: only the output recurs, s^t = h(x^t, y^{t-1}) = a(U x + W y + b).

    z = zx = U x + W y_prev + b_ih (B, H): there is no V and no zh, the state is never read;
    state s (B, H). With the targets fed back (teacher forcing) every step is independent of the
    others, so training is parallel over time."""

    family = "feedback"

    gates = ("r",)

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, **options):
        if options.pop("reads_state", False):
            raise ValueError("OutputFeedbackCell: reads_state must be False; the state does not recur")
        dropped = options.get("recurrent_dropout", 0.0)  # the base's error names reads_state, which users never set
        if isinstance(dropped, int | float) and not isinstance(dropped, bool) and 0 < dropped < 1:
            raise ArgumentError("OutputFeedbackCell", f"{{recurrent_dropout}} must be 0: this cell does not read "
                                                      f"its state; got {dropped!r}")
        super().__init__(input_size, hidden_size, feedback_size, reads_state=False, **options)

    def combine(self, zx, zh, s):
        return self.act(self.preactivations(zx, zh))


class ResidualCell(Cell):
    """The residual (skip) connection: r^t = a(z_r), s^t = s^{t-1} + r^t.

    residual="before" adds the state inside the activation instead, s^t = a(z_r + s^{t-1})
    (the lecture's question "should we add the state before or after the activation?").
    z_r = zx + zh (B, H); state s (B, H)."""

    family = "residual"

    gates = ("r",)

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, *, residual: str = "after",
                 **options):
        if residual not in ("after", "before"):
            raise ArgumentError("ResidualCell", f"{{residual}} must be 'after' or 'before'; got {residual!r}")
        self.residual = residual
        super().__init__(input_size, hidden_size, feedback_size, **options)

    def combine(self, zx, zh, s):
        z = self.preactivations(zx, zh)
        if self.residual == "before":
            return self.act(z + s)
        return s + self.act(z)


class InputGatedCell(Cell):
    """The input gate controls write access:
        i^t = sigma(z_i),  r^t = a(z_r),  s^t = s^{t-1} + i^t * r^t.
    z = zx + zh = [z_i | z_r] (B, 2H); state s (B, H)."""

    family = "input"

    gates = ("i", "r")

    def combine(self, zx, zh, s):
        zi, zr = self.preactivations(zx, zh).chunk(2, dim=-1)
        return s + self.sigma(zi) * self.act(zr)


class ForgetGatedCell(Cell):
    """The forget gate lets the cell forget:
        i^t = sigma(z_i),  f^t = sigma(z_f),  r^t = a(z_r),  s^t = f^t * s^{t-1} + i^t * r^t.
    z = zx + zh = [z_i | z_f | z_r] (B, 3H); state s (B, H)."""

    family = "forget"

    gates = ("i", "f", "r")

    def combine(self, zx, zh, s):
        zi, zf, zr = self.preactivations(zx, zh).chunk(3, dim=-1)
        return self.sigma(zf) * s + self.sigma(zi) * self.act(zr)


class LSTMBase(Cell, abstract=True):
    """What the LSTMs share, and no equations: the gates i, f, r, o; the state (s_bar, s), each
    (B, H), zeros at the start; the gates read s_bar and the cell emits it."""

    gates = ("i", "f", "r", "o")

    def initial_state(self, batch, device=None, dtype=None):
        zeros = super().initial_state(batch, device, dtype)
        return zeros, zeros.clone()

    def read(self, state):
        return state[0]

    def output(self, state):
        return state[0]


class LSTMCell(LSTMBase):
    """The lecture's "LSTM in a slide"; the gates read s_bar^{t-1} (and y^{t-1}):
        i, f, o = sigma(z_i), sigma(z_f), sigma(z_o),   r = a(z_r)
        s^t     = f * s^{t-1} + i * r
        s_bar^t = o * a(s^t)
    z = zx + zh = [z_i | z_f | z_r | z_o] (B, 4H), with zh = V s_bar^{t-1} + b_hh. State is (s_bar, s),
    each (B, H), torch's (h, c); the output is s_bar. Gate order i, f, r, o is torch's i, f, g, o,
    so without feedback this is torch.nn.LSTMCell."""

    family = "lstm"

    def combine(self, zx, zh, state):
        _, s = state
        zi, zf, zr, zo = self.preactivations(zx, zh).chunk(4, dim=-1)
        s = self.sigma(zf) * s + self.sigma(zi) * self.act(zr)
        s_bar = self.sigma(zo) * self.act(s)
        return s_bar, s


class GRUCell(Cell):
    """The gated recurrent unit (torch's formulation; gate order r, z, n):
        r = sigma(zx_r + zh_r),  u = sigma(zx_z + zh_z)
        n = a(zx_n + r * zh_n)
        s^t = (1 - u) * n + u * s^{t-1}
    where zx = U x + W y + b_ih and zh = V s + b_hh, each [r | z | n] (B, 3H), read apart (the
    reset gate scales zh_n alone), so the GRU has no deep transition. With reads_state=False
    (minGRU) there is no reset gate: zx = [z | n] (B, 2H), u = sigma(zx_z), n = a(zx_n). State s (B, H)."""

    family = "gru"

    gates = ("r", "z", "n")

    def _gates(self, reads_state):
        return ("r", "z", "n") if reads_state else ("z", "n")

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, **options):
        depth = options.get("depth", 1)
        if isinstance(depth, int) and not isinstance(depth, bool) and depth > 1:
            raise ArgumentError("GRUCell", f"{{depth}} must be 1; the reset gate needs the state's projection apart; "
                                           f"got {depth}")
        super().__init__(input_size, hidden_size, feedback_size, **options)

    def combine(self, zx, zh, s):
        if zh is None:
            zu, zn = zx.chunk(2, dim=-1)
            u, n = self.sigma(zu), self.act(zn)
        else:
            xr, xu, xn = zx.chunk(3, dim=-1)
            hr, hu, hn = zh.chunk(3, dim=-1)
            r, u = self.sigma(xr + hr), self.sigma(xu + hu)
            n = self.act(xn + r * hn)
        return (1 - u) * n + u * s


class PeepholeLSTMCell(LSTMBase):
    """The LSTM with peephole connections (Gers, Schraudolph and Schmidhuber, 2002): the gates see
    the cell state s itself, not only s_bar; i and f read the old s, o the new one:
        z_k = U_k x^t + V_k s_bar^{t-1} + W_k y^{t-1} + b_k
        i = sigma(z_i + p_i * s^{t-1}),  f = sigma(z_f + p_f * s^{t-1}),  r = a(z_r)
        s^t = f * s^{t-1} + i * r
        o = sigma(z_o + p_o * s^t),      s_bar^t = o * a(s^t)
    The peephole weights are diagonal: `weight_peephole` (3, H), rows p_i, p_f, p_o, each U(-1/sqrt(H),
    1/sqrt(H)) at the start. z = zx + zh (B, 4H) as the LSTM's. Shapes: x (B, I), state (s_bar, s)
    each (B, H), y_prev (B, O)."""

    family = "peephole-lstm"

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, **options):
        super().__init__(input_size, hidden_size, feedback_size, **options)
        self.weight_peephole = nn.Parameter(torch.empty(3, hidden_size, dtype=self.weight_ih.dtype))
        bound = 1.0 / hidden_size ** 0.5
        nn.init.uniform_(self.weight_peephole, -bound, bound)

    def combine(self, zx, zh, state):
        _, s = state
        zi, zf, zr, zo = self.preactivations(zx, zh).chunk(4, dim=-1)
        p_i, p_f, p_o = self.weight_peephole
        s_new = self.sigma(zf + p_f * s) * s + self.sigma(zi + p_i * s) * self.act(zr)
        s_bar = self.sigma(zo + p_o * s_new) * self.act(s_new)
        return s_bar, s_new

    def flops_per_step(self, batch: int = 1) -> int:
        return super().flops_per_step(batch) + batch * 2 * 3 * self.hidden_size  # the three diagonal products


class LayerNormLSTMCell(LSTMBase):
    """The LSTM with layer normalisation (Ba, Kiros and Hinton, 2016): the input and recurrent
    pre-activations are normalised apart over their 4H units, and the cell state before its squashing:
        z = LN_x(U x^t + W y^{t-1}) + LN_h(V s_bar^{t-1}) + b_ih + b_hh
        i, f, o = sigma(z_i), sigma(z_f), sigma(z_o),   r = a(z_r)
        s^t     = f * s^{t-1} + i * r
        s_bar^t = o * a(LN_s(s^t))
    Each LN(v) = gamma * (v - mean(v)) / sqrt(var(v) + 1e-5) + beta has its own gain and shift
    (`norm_ih`, `norm_hh` over 4H, `norm_cell` over H: torch.nn.LayerNorm, gain 1 and shift 0 at the
    start); the biases come after the normalisation, where they are not cancelled by it: here
    zx = LN_x(U x + W y) + b_ih and zh = LN_h(V s_bar) + b_hh, each (B, 4H).
    Shapes: x (B, I), state (s_bar, s) each (B, H), y_prev (B, O)."""

    family = "layernorm-lstm"

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, **options):
        if options.get("depth", 1) > 1:
            raise ArgumentError("LayerNormLSTMCell", f"{{depth}} must be 1; the normalisations act on the gates' "
                                                     f"pre-activations; got {options['depth']}")
        super().__init__(input_size, hidden_size, feedback_size, **options)
        K, H, dtype = len(self.gates), hidden_size, self.weight_ih.dtype
        self.norm_ih = nn.LayerNorm(K * H, dtype=dtype)
        self.norm_hh = nn.LayerNorm(K * H, dtype=dtype) if self.reads_state else None
        self.norm_cell = nn.LayerNorm(H, dtype=dtype)

    def project_input(self, x, y_prev=None):
        z = F.linear(x, self.weight_ih)
        if y_prev is not None and self.weight_yh is not None:
            z = z + F.linear(y_prev, self.weight_yh)
        z = self.norm_ih(z)
        return z if self.bias_ih is None else z + self.bias_ih

    def project_state(self, s_read):
        if self.weight_hh is None:
            return None
        z = self.norm_hh(F.linear(s_read, self.weight_hh))
        return z if self.bias_hh is None else z + self.bias_hh

    def combine(self, zx, zh, state):
        _, s = state
        zi, zf, zr, zo = self.preactivations(zx, zh).chunk(4, dim=-1)
        s = self.sigma(zf) * s + self.sigma(zi) * self.act(zr)
        return self.sigma(zo) * self.act(self.norm_cell(s)), s


class ProjectedLSTMCell(LSTMBase):
    """The LSTM with a projection (Sak, Senior and Beaufays, 2014; torch.nn.LSTM's proj_size): the
    output s_bar is the cell's P < H units projected down, and the gates read it:
        z_k = U_k x^t + V_k s_bar^{t-1} + W_k y^{t-1} + b_k          V_k (H, P)
        i, f, o = sigma(z_i), sigma(z_f), sigma(z_o),   r = a(z_r)
        s^t     = f * s^{t-1} + i * r
        s_bar^t = W_hr (o * a(s^t))                                   W_hr (P, H)
    Weights: `weight_ih` (4H, I), `weight_hh` (4H, P), `weight_hr` (P, H), `weight_yh` (4H, O), torch's
    names and shapes, so without feedback its state_dict loads into torch.nn.LSTM(I, H, proj_size=P)
    (suffix _l0) with strict=True (`rnnlab.interop`). State (s_bar (B, P), s (B, H)), torch's (h, c);
    the output is s_bar (B, P): `output_size` is P. proj_size None: H // 2. The recurrent dropout
    masks what the gates read, s_bar (B, P)."""

    family = "projected-lstm"

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0, *, proj_size: int | None = None,
                 **options):
        name = type(self).__name__
        if proj_size is None and isinstance(hidden_size, int):
            proj_size = max(hidden_size // 2, 1)
        check_number(name, "proj_size", proj_size, integer=True)
        if isinstance(hidden_size, int) and not 1 <= proj_size < max(hidden_size, 2):
            raise ArgumentError(name, f"{{proj_size}} must be an int in [1, {{hidden_size}}) = [1, {hidden_size}); "
                                      f"got {proj_size!r}")
        if options.get("depth", 1) > 1:
            raise ArgumentError(name, f"{{depth}} must be 1; the gates read the projection of the state; "
                                      f"got {options['depth']}")
        self.proj_size = proj_size
        super().__init__(input_size, hidden_size, feedback_size, **options)
        K, H, P = len(self.gates), hidden_size, proj_size
        if self.weight_hh is not None:  # V reads s_bar: (4H, P), not (4H, H)
            self.weight_hh = nn.Parameter(torch.empty(K * H, P, dtype=self.weight_ih.dtype))
            self.init.apply(self.weight_hh, self.init.recurrent, H, K)
        self.weight_hr = nn.Parameter(torch.empty(P, H, dtype=self.weight_ih.dtype))
        self.init.apply(self.weight_hr, self.init.kernel, H, 1)

    def reset_parameters(self):
        super().reset_parameters()
        if getattr(self, "weight_hr", None) is not None:  # not yet there when Cell.__init__ calls this
            self.init.apply(self.weight_hr, self.init.kernel, self.hidden_size, 1)

    @property
    def output_size(self) -> int:
        return self.proj_size

    def initial_state(self, batch, device=None, dtype=None):
        dtype = dtype or self.weight_ih.dtype
        return (torch.zeros(batch, self.proj_size, device=device, dtype=dtype),
                torch.zeros(batch, self.hidden_size, device=device, dtype=dtype))

    def check_state(self, state, batch, where):
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{where}: state must be a tuple of 2 tensors, (B, {self.proj_size}) and "
                             f"(B, {self.hidden_size}), for {type(self).__name__}; got {_describe(state)}")
        for part, size in zip(state, (self.proj_size, self.hidden_size)):
            if not isinstance(part, torch.Tensor) or tuple(part.shape) != (batch, size):
                raise ValueError(f"{where}: state must be ({batch}, {self.proj_size}) and ({batch}, "
                                 f"{self.hidden_size}); got {_describe(state)}")
            check_tensor_like(where, "state", part, self.weight_ih)

    def sample_masks(self, batch, like):
        mx, mh = super().sample_masks(batch, like)
        if mh is not None:
            mh = _dropout_mask(self.recurrent_dropout, (batch, self.proj_size), like)
        return mx, mh

    def combine(self, zx, zh, state):
        _, s = state
        zi, zf, zr, zo = self.preactivations(zx, zh).chunk(4, dim=-1)
        s = self.sigma(zf) * s + self.sigma(zi) * self.act(zr)
        return F.linear(self.sigma(zo) * self.act(s), self.weight_hr), s

    def weight_groups(self):
        groups = super().weight_groups()
        groups["recurrent"] = groups["recurrent"] + [self.weight_hr]
        return groups

    def extra_repr(self):
        return super().extra_repr() + f", proj_size={self.proj_size}"

    def flops_per_step(self, batch: int = 1) -> int:
        K, H, P = len(self.gates), self.hidden_size, self.proj_size
        fan_in = self.input_size + self.feedback_size + (P if self.reads_state else 0)
        return batch * (2 * K * H * fan_in + 2 * P * H)


LADDER: dict[str, type[Cell]] = {
    "vanilla": VanillaCell,
    "residual": ResidualCell,
    "input": InputGatedCell,
    "forget": ForgetGatedCell,
    "lstm": LSTMCell,
    "gru": GRUCell,
    "feedback": OutputFeedbackCell,
    "peephole-lstm": PeepholeLSTMCell,
    "layernorm-lstm": LayerNormLSTMCell,
    "projected-lstm": ProjectedLSTMCell,
}

