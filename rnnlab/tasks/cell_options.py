"""The cell's own options, the lecture's "differences to the official implementation", as knobs the
configs of the tasks built of ladder cells inherit (language, sentiment, digits, forecast, adding,
copy), so each is a flag of `rnnlab train` for them:

    --activation, --gate-activation    a and sigma
    --depth                            deep transition: h as an MLP
    --residual before|after            the residual cell's s + a(z) or a(z + s)
    --init torch|keras                 initialisation scheme
    --input-dropout, --recurrent-dropout, --zoneout
    --max-norm                         weight constraint on the kernels
    --l1, --l2, --activity-l2          regularisers
    --no-state-read                    V = 0 (minGRU/minLSTM): linear in s, a parallel scan serves it
    --proj-size                        the projected LSTM's P < H (--cell projected-lstm only)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cells import ACTIVATIONS
from ..config import MAX_LAYERS, ConfigError, knob
from ..init import L1L2, Constraints, Init, MaxNorm, Regularizers

__all__ = ["CellOptions", "INITS", "config_field"]

INITS = {"torch": Init.torch, "keras": Init.keras}

# The cell's arguments a task config sets under another name (cell_options below, and the task
# configs' `hidden`); the other CellOptions fields are the arguments of their own name.
_RENAMED = {"dropout": "input_dropout", "reads_state": "state_read", "hidden_size": "hidden"}


def config_field(argument: str) -> str | None:
    """The field of a task config that sets the cell's `argument` (None where none does), so an
    error of the cell can name what the user set (the CLI: the flag)."""
    if argument in _RENAMED:
        return _RENAMED[argument]
    return argument if argument in CellOptions.__dataclass_fields__ else None


@dataclass(frozen=True)
class CellOptions:
    """Options of the cells of a task's model (a base of the task configs; each task adds its own fields)."""

    activation: str = knob("tanh", "a: the candidate's activation (and the LSTM's output squashing)",
                           tuple(ACTIVATIONS))
    gate_activation: str = knob("sigmoid", "sigma: the gates' activation", tuple(ACTIVATIONS))
    depth: int = knob(1, "deep transition: h as an MLP of this many layers (1: the lecture's eq. 1)", low=1,
                      high=MAX_LAYERS)
    residual: str = knob("after", "the residual cell: s + a(z) (after) or a(z + s) (before)", ("after", "before"))
    init: str | None = knob(None, "initialisation: torch (uniform) or keras (Glorot kernels, orthogonal recurrent "
                                  "kernels, forget bias 1); none: the task's own", tuple(INITS))
    input_dropout: float = knob(0.0, "the cell's dropout on x, one mask per sequence", low=0, below=1)
    recurrent_dropout: float = knob(0.0, "variational dropout on the state the gates read", low=0, below=1)
    zoneout: float = knob(0.0, "probability that a unit keeps its previous state at a step", low=0, below=1)
    max_norm: float | None = knob(None, "constrain each unit's incoming kernel and recurrent weights to this norm "
                                        "(none: free)", above=0)
    l1: float = knob(0.0, "L1 penalty on the kernels and recurrent kernels", low=0)
    l2: float = knob(0.0, "L2 penalty on the kernels and recurrent kernels", low=0)
    activity_l2: float = knob(0.0, "L2 penalty on each layer's outputs (Keras's: sum over the output / batch)", low=0)
    state_read: bool = knob(True, "the gates and candidate read the state (--no-state-read: V = 0)")
    proj_size: int | None = knob(None, "projected-lstm: the size P < H of the projected output the gates read "
                                       "(none: H // 2)", low=1)

    def cell_options(self, cell: str, default_init: Init = Init()) -> dict:
        """Keyword arguments for the cell class of `cell` (a LADDER name)."""
        weights = L1L2(self.l1, self.l2) if (self.l1 or self.l2) else None
        options = dict(
            activation=self.activation, gate_activation=self.gate_activation, depth=self.depth,
            init=INITS[self.init]() if self.init else default_init, dropout=self.input_dropout,
            recurrent_dropout=self.recurrent_dropout, zoneout=self.zoneout,
            constraints=Constraints(kernel=MaxNorm(self.max_norm), recurrent=MaxNorm(self.max_norm))
            if self.max_norm else Constraints(),
            regularizers=Regularizers(kernel=weights, recurrent=weights,
                                      activity=L1L2(l2=self.activity_l2) if self.activity_l2 else None))
        if cell == "residual":
            options["residual"] = self.residual
        if cell == "projected-lstm":
            options["proj_size"] = self.proj_size
        elif self.proj_size is not None:
            raise ConfigError(type(self).__name__, "proj_size", "none unless the cell is projected-lstm "
                              f"(the cell is {cell!r})", self.proj_size)
        if not self.state_read:  # only when asked: the feedback cell never reads its state and says so
            options["reads_state"] = False
        return options
