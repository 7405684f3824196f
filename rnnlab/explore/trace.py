"""A language model run over a passage one step at a time, keeping what the page shows: every
layer's state (s, and s_bar for the LSTM), the gate activations, and the next-token logits; and the
statistics computed from them (units correlated with simple features, gate saturation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cells import Cell, GRUCell, LSTMBase
from ..checks import with_article
from ..models import RecurrentModel
from ..runners import Recurrent

__all__ = ["Trace", "check_traceable", "trace_core", "trace_language", "shown_gates", "quantities_of", "FEATURES",
           "feature_values", "correlated_units", "saturation"]


@dataclass
class Trace:
    """Per layer: quantities {name: (T, H)} and gates {name: (T, H)}; logits (T, V) of the next token
    after each step."""

    layers: list[dict[str, dict[str, np.ndarray]]]
    logits: np.ndarray


# The families whose gates are sigma(z_k) of the cell's own projections, which is how the page
# computes them; a peephole LSTM's gates also read s, so the page shows none rather than wrong ones.
GATES_FROM_Z = ("vanilla", "feedback", "residual", "input", "forget", "lstm", "gru", "layernorm-lstm")


def shown_gates(cell: Cell) -> tuple[str, ...]:
    """The gates the page plots: every sigmoid gate (the LSTM's i, f, o; the GRU's r, z), not the
    candidate (r in the ladder's names, n in the GRU's)."""
    if cell.family not in GATES_FROM_Z:
        return ()
    if isinstance(cell, GRUCell):
        return tuple(g for g in cell.gates if g != "n")
    return tuple(g for g in cell.gates if g != "r")


def quantities_of(cell: Cell) -> tuple[str, ...]:
    """What the page can colour the text by: s_bar and s for the LSTM, the state s for the others."""
    return ("s_bar", "s") if isinstance(cell, LSTMBase) else ("s",)


def _gate_values(cell: Cell, zx: torch.Tensor, zh: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The shown gates' activations for one step, from the cell's own projections."""
    if cell.family not in GATES_FROM_Z:
        return {}
    if isinstance(cell, GRUCell):
        if zh is None:  # minGRU: u = sigma(zx_z)
            return {"z": cell.sigma(zx.chunk(2, dim=-1)[0])}
        xr, xu, _ = zx.chunk(3, dim=-1)
        hr, hu, _ = zh.chunk(3, dim=-1)
        return {"r": cell.sigma(xr + hr), "z": cell.sigma(xu + hu)}
    z = cell.preactivations(zx, zh).chunk(len(cell.gates), dim=-1)
    return {g: cell.sigma(part) for g, part in zip(cell.gates, z) if g != "r"}


def check_traceable(core) -> None:
    """ValueError unless every layer of the stack `core` is a Recurrent runner of a ladder cell (the
    page traces cells read one way; a Bidirectional layer is refused), which the model's build decides:
    a caller may check before loading weights."""
    for runner in core.layers:
        if not isinstance(runner, Recurrent):  # a Recurrent runs one Cell
            raise ValueError(f"rnnlab explore: every layer must read the sequence one way (a Recurrent runner of a "
                             f"ladder cell); got {with_article(type(runner).__name__)} layer")


@torch.no_grad()
def trace_core(core, xs: torch.Tensor, ys: torch.Tensor | None = None) -> tuple[list[dict], torch.Tensor]:
    """Run a stack of cells (a `Stacked` of `Recurrent` runners, eval mode) over one sequence xs
    (1, T, I), with y_prev ys (1, T, O) for the layers that take it, from the zero state. Returns
    the layers' quantities and gates, and the top layer's outputs (1, T, H)."""
    check_traceable(core)
    layers = []
    for runner in core.layers:
        cell = runner.cell
        state = cell.initial_state(1, device=xs.device, dtype=torch.float32)
        names = quantities_of(cell)
        kept = {name: [] for name in names}
        gates = {g: [] for g in shown_gates(cell)}
        outputs = []
        for t in range(xs.shape[1]):
            zx = cell.project_input(xs[:, t], None if ys is None or not cell.feedback_size else ys[:, t])
            zh = cell.project_state(cell.read(state))
            for g, value in _gate_values(cell, zx, zh).items():
                gates[g].append(value[0])
            state = cell.combine(zx, zh, state)
            outputs.append(cell.output(state)[0])
            parts = state if isinstance(state, tuple) else (state,)
            for name, part in zip(names, parts):
                kept[name].append(part[0])
        layers.append({"quantities": {k: torch.stack(v).cpu().numpy() for k, v in kept.items()},
                       "gates": {k: torch.stack(v).cpu().numpy() for k, v in gates.items()}})
        xs = torch.stack(outputs)[None]  # (1, T, H): the next layer's input (no dropout in eval)
    return layers, xs


@torch.no_grad()
def trace_language(model: RecurrentModel, ids: torch.Tensor) -> Trace:
    """Run a language model (rnnlab.tasks.language.build_model's) over ids (T,) from the zero state,
    step by step through its cells, in eval mode."""
    was_training = model.training
    model.eval()
    ids = ids.to(next(model.parameters()).device)[None]  # (1, T)
    if model.feedback_map is None:
        xs, ys = model.input_map(ids), None  # the token enters as x ...
    else:
        # ... or as y^{t-1}
        xs, ys = ids.new_zeros(1, ids.shape[1], 0, dtype=torch.float32), model.feedback_map.from_target(ids)
    layers, outputs = trace_core(model.core, xs, ys)
    logits = model.readout(outputs)[0]
    model.train(was_training)
    return Trace(layers, logits.cpu().numpy())


# --- statistics ----------------------------------------------------------------------------------

FEATURES = ("position in line", "inside quotes", "inside brackets", "vowel", "upper case", "space or new line")


def feature_values(tokens: list[str]) -> dict[str, np.ndarray]:
    """Simple per-token features of a passage (after reading token t)."""
    position, quoted, bracketed = [], [], []
    column, in_quotes, depth = 0, False, 0
    for token in tokens:
        column = 0 if token == "\n" else column + 1
        if token == '"':
            in_quotes = not in_quotes
        if token in ("(", "[", "{"):
            depth += 1
        elif token in (")", "]", "}"):
            depth = max(0, depth - 1)
        position.append(column)
        quoted.append(in_quotes)
        bracketed.append(depth > 0)
    values = {
        "position in line": position, "inside quotes": quoted, "inside brackets": bracketed,
        "vowel": [t.lower() in ("a", "e", "i", "o", "u") for t in tokens],
        "upper case": [t.isupper() for t in tokens],
        "space or new line": [t.isspace() for t in tokens],
    }
    return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def correlated_units(values: np.ndarray, features: dict[str, np.ndarray], top: int = 8) -> list[dict]:
    """For each feature that varies: the `top` units whose value (T, H) is most correlated with it
    (Pearson), as {"feature", "units": [[unit, r], ...]}, strongest |r| first."""
    result = []
    centred = values - values.mean(0)
    spread = np.sqrt((centred ** 2).sum(0))
    for name, feature in features.items():
        f = feature - feature.mean()
        norm = np.sqrt((f ** 2).sum())
        if norm == 0:
            continue  # constant in this passage (no quotes at all, say): nothing to correlate with
        r = (centred * f[:, None]).sum(0) / np.where(spread > 0, spread * norm, np.inf)
        order = np.argsort(-np.abs(r))[:top]
        result.append({"feature": name, "units": [[int(u), round(float(r[u]), 4)] for u in order]})
    return result


def saturation(gate: np.ndarray, low: float = 0.1, high: float = 0.9) -> dict[str, list[float]]:
    """Per unit, the fraction of time a gate (T, H) is left-saturated (< low) and right-saturated
    (> high): the scatter plot of Karpathy et al. (2015)."""
    return {"left": np.round((gate < low).mean(0), 4).tolist(), "right": np.round((gate > high).mean(0), 4).tolist()}
