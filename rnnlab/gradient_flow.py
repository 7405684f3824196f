"""Gradient flow, the reason for the ladder: how far back the error reaches.

For a cell of the ladder on the adding problem (loss at the last step only), the norm of
dLoss/ds^t at every step t says how much the loss can still teach the state t steps back. A vanilla
cell's norms shrink geometrically going back (the product of T Jacobians a'(z) V); the residual
connection adds an identity path, s^t = s^{t-1} + a(z), and the gates let the cell choose how much
of it to keep. `measure_gradient_flow` records the norms at initialisation and after a short
training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cells import LADDER
from .config import MAX_LAYERS, MAX_SEED, MAX_THREADS, ConfigError, knob, validate
from .data.synthetic import ADDING_BASELINE_MSE, adding_batch
from .init import Init
from .plots import pyplot, save_figure
from .runners import Recurrent
from .tables import Table

__all__ = ["GradientFlowConfig", "CellFlow", "GradientFlow", "LADDER_CELLS", "state_gradient_norms", "train_adding",
           "measure_gradient_flow", "selected_steps", "plot_gradient_flow"]

LADDER_CELLS = ("vanilla", "residual", "input", "forget", "lstm", "gru")
INITS = {"torch": Init.torch, "keras": Init.keras}


@dataclass(frozen=True)
class GradientFlowConfig:
    """One gradient-flow measurement; each field declares its type, range and help once."""

    cells: tuple[str, ...] = knob(LADDER_CELLS, "ladder cells, comma-separated", LADDER_CELLS)
    T: int = knob(100, "sequence length of the adding problem", low=2)
    steps: int = knob(300, "training steps (plain Adam)", low=0)
    hidden: int = knob(32, "state size H", low=1)
    depth: int = knob(1, "deep transition: h as an MLP of this many layers (the lecture's claim: a longer path "
                         "between steps)", low=1, high=MAX_LAYERS)
    batch: int = knob(32, "sequences per training batch", low=1)
    lr: float = knob(1e-2, "Adam's learning rate", above=0)
    seed: int = knob(0, "seed of the weights and the data", low=0, high=MAX_SEED)
    # keras's is the default because with it a gated cell learns the task within the short training here.
    init: str = knob("keras", "keras (orthogonal recurrent kernels, zero biases, forget bias 1) or torch (uniform)",
                     tuple(INITS))
    threads: int = knob(1, "torch CPU threads: small matrices on shared cores train faster on one", low=1,
                      high=MAX_THREADS)

    def __post_init__(self):
        validate(self)
        for name in self.cells:  # a cell that refuses the depth (gru: 1 only) fails now, not after the others trained
            try:
                with torch.random.fork_rng(devices=[]):  # building consumes random numbers: leave the stream as it was
                    LADDER[name](2, 1, depth=self.depth)
            except ValueError as error:
                raise ConfigError("GradientFlowConfig", "depth", f"1 while cells holds {name} ({error})",
                                  self.depth) from None


@dataclass
class CellFlow:
    """One cell's norms ||dLoss/ds^t||, t = 1..T, at initialisation and after training."""

    cell: str
    init: list[float]
    trained: list[float]
    loss_init: float
    loss_trained: float
    losses: list[float] = field(default_factory=list)


@dataclass
class GradientFlow:
    """What `measure_gradient_flow` found: the config and each cell's norms."""

    config: GradientFlowConfig
    cells: list[CellFlow]

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "cells": [asdict(f) for f in self.cells]}

    def table(self) -> Table:
        """A row per cell and moment: the loss, the norms at the `selected_steps`, and t=1 over t=T."""
        shown = selected_steps(self.config.T)
        rows = []
        for flow in self.cells:
            for moment, norms, loss in (("init", flow.init, flow.loss_init),
                                        (f"after {self.config.steps}", flow.trained, flow.loss_trained)):
                ratio = norms[0] / norms[-1] if norms[-1] else float("nan")
                rows.append((flow.cell, moment, f"{loss:.3f}", *(f"{norms[t - 1]:.1e}" for t in shown), f"{ratio:.1e}"))
        return Table(("cell", "moment", "MSE", *(f"t={t}" for t in shown), "t=1 / t=T"), tuple(rows),
                     (False, False, *(True,) * (len(shown) + 2)))


def _flat(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def state_gradient_norms(runner: Recurrent, readout: nn.Module, xs: torch.Tensor, targets: torch.Tensor
                         ) -> tuple[list[float], float]:
    """Norms of dLoss/ds^t for t = 1..T, and the loss; the loss is the MSE of the readout of the
    last output against `targets`.

    dLoss/ds^t is the gradient with respect to the state as the rest of the sequence receives it:
    what autograd would give for s^t if the runner were restarted from it as a leaf. The runner is
    stepped here, one `runner.step` per t, and each state handed on is an alias (a view) of the
    step's result, so that autograd returns exactly that gradient in one backward pass for every t;
    the alias matters for the LSTM, whose s_bar^t = o * tanh(s^t) is computed from s^t: without it
    the gradient of s^t would also count the path through s_bar^t of the same step. A state of
    several tensors (the LSTM's (s_bar, s)) counts them together: the norm of the concatenation."""
    state = runner.initial_state(xs.shape[0], xs.device, xs.dtype)
    handed = []
    for x_t in xs.unbind(1):
        _, state = runner.step(x_t, state)
        state = tuple(p.view_as(p) for p in state) if isinstance(state, tuple) else state.view_as(state)
        handed.append(state)
    loss = nn.functional.mse_loss(readout(runner.cell.output(state)), targets)
    flat = [part for s in handed for part in _flat(s)]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)  # unused: the LSTM's s^T, which f never reads
    per = len(_flat(handed[0]))
    norms = []
    for t in range(len(handed)):
        parts = [g for g in grads[t * per:(t + 1) * per] if g is not None]
        norms.append(float(torch.sqrt(sum(g.square().sum() for g in parts))) if parts else 0.0)
    return norms, float(loss.detach())


def train_adding(runner: Recurrent, readout: nn.Module, config: GradientFlowConfig,
                 generator: torch.Generator) -> list[float]:
    """A plain Adam loop on fresh adding batches; returns the loss of every step.

    Plain on purpose: the Trainer (rnnlab.training) is not merged yet, and a short, fixed loop is
    all this comparison needs. The gradient norm is clipped at 1 so that a cell whose gradients
    explode still trains a little instead of diverging."""
    params = list(runner.parameters()) + list(readout.parameters())
    optimiser = torch.optim.Adam(params, lr=config.lr)
    losses = []
    for _ in range(config.steps):
        xs, targets = adding_batch(config.batch, config.T, generator)
        ys, _ = runner(xs)
        loss = nn.functional.mse_loss(readout(ys[:, -1]), targets)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


def measure_gradient_flow(config: GradientFlowConfig, progress=None) -> GradientFlow:
    """For each cell of `config.cells`, its norms at initialisation and after training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return GradientFlow(config, [_cell_flow(name, config, progress) for name in config.cells])
    finally:
        torch.set_num_threads(threads)


def _cell_flow(name: str, config: GradientFlowConfig, progress) -> CellFlow:
    """One cell: norms on a fixed evaluation batch at initialisation, train, norms again."""
    if progress:
        progress(f"{name}: training {config.steps} steps on the adding problem, T={config.T}, depth {config.depth}")
    torch.manual_seed(config.seed)
    runner = Recurrent(LADDER[name](2, config.hidden, init=INITS[config.init](), depth=config.depth),
                       implementation="reference")
    readout = nn.Linear(config.hidden, 1)
    # The same evaluation batch for every cell and both moments, drawn apart from training data.
    xs, targets = adding_batch(256, config.T, torch.Generator().manual_seed(config.seed + 10_000))
    init, loss_init = state_gradient_norms(runner, readout, xs, targets)
    losses = train_adding(runner, readout, config, torch.Generator().manual_seed(config.seed))
    trained, loss_trained = state_gradient_norms(runner, readout, xs, targets)
    return CellFlow(name, init, trained, loss_init, loss_trained, losses)


def selected_steps(steps: int) -> list[int]:
    """The t (1-based) the table shows: the first, a quarter, half, three quarters, the last."""
    return sorted({1, max(1, steps // 4), max(1, steps // 2), max(1, 3 * steps // 4), steps})


def plot_gradient_flow(results: list[CellFlow], path: Path, steps: int) -> Path:
    """Two panels, at initialisation and after training: ||dLoss/ds^t|| against t, log scale."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=80, sharey=True)
    for ax, moment in zip(axes, ("init", "trained")):
        for flow in results:
            norms = [max(n, 1e-30) for n in getattr(flow, moment)]
            ax.plot(range(1, len(norms) + 1), norms, label=flow.cell)
        ax.set_yscale("log")
        ax.set_xlabel("step t (the loss is at t = T)")
        ax.set_title("at initialisation" if moment == "init" else "after training", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("||dLoss / ds^t||")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Gradient flow on the adding problem, T={steps} (baseline MSE {ADDING_BASELINE_MSE:.3f})",
                 fontsize=10)
    return save_figure(fig, path, dpi=80)
