"""The ladder, measured: every cell from the vanilla RNN to the LSTM and GRU trained on one memory
task with the same parameter budget, the lecture's story from "vanilla forgets" to "the LSTM
remembers" as one table and one plot of learning curves.

Equal budgets, not equal state sizes: a gated cell has K weight blocks per state unit (vanilla and
residual 1, input 2, forget and GRU 3, LSTM 4), so at one H the LSTM would have four times the
weights of the vanilla cell. Each cell gets the H whose model (cell and readout) comes closest to
the reference cell's parameter count at the configured H (`hidden_for_budget`).

Each cell is an ordinary run of the Trainer in OUT/<cell>/ (checkpoints, metrics.jsonl, loss.png),
so an interrupted ladder resumes where it stopped: a cell whose run directory holds a checkpoint
is resumed (to the same step budget, or a new --steps), not restarted. A cell folder made with other
flags is refused, never resumed under the new ones (its weights would be reported as theirs). Ctrl-C
stops the ladder (KeyboardInterrupt once the interrupted cell's checkpoint is saved), not only the cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .checkpoints import RunDir
from .config import MAX_SEED, MAX_THREADS, differences, from_dict, knob, validate
from .errors import RunDirError
from .plots import pyplot, save_figure
from .tables import Table
from .tasks import TASKS, Baselined, run_config
from .training import RESUMABLE_FIELDS, TrainConfig, Trainer, seed_everything

__all__ = ["LADDER_CELLS", "LadderConfig", "LadderRow", "Ladder", "parameter_count", "hidden_for_budget", "run_ladder",
           "plot_ladder"]

LADDER_CELLS = ("vanilla", "residual", "input", "forget", "lstm", "gru")


@dataclass(frozen=True)
class LadderConfig:
    """What `rnnlab ladder TASK` trains: task and training fields (None: the task's own default)."""

    T: int | None = knob(None, "sequence length (adding) or delay (copy) (none: the task's)", low=1)
    hidden: int | None = knob(None, "the LSTM's hidden size, which sets the budget (none: the task's; copy: 64, the "
                                    "plain task's)", low=1)
    batch_size: int | None = knob(None, "sequences per batch (none: the task's)", low=1)
    cells: tuple[str, ...] = knob(LADDER_CELLS, "cells to train, comma-separated", LADDER_CELLS)
    steps: int | None = knob(None, "training steps per cell (none: the task's)", low=1)
    max_minutes: float | None = knob(None, "wall-clock budget per cell (none: the task's)", above=0)
    lr: float | None = knob(None, "peak learning rate (none: the task's)", above=0)
    eval_every: int | None = knob(None, "evaluate every this many steps (none: the task's)", low=1)
    seed: int | None = knob(None, "seed (none: 0)", low=0, high=MAX_SEED)
    threads: int | None = knob(None, "torch CPU threads (none: the task's, 1)", low=1, high=MAX_THREADS)

    TASK_FIELDS: ClassVar[tuple[str, ...]] = ("T", "hidden", "batch_size")
    TRAIN_FIELDS: ClassVar[tuple[str, ...]] = ("steps", "max_minutes", "lr", "eval_every", "seed", "threads")

    def __post_init__(self):
        validate(self)

    def overrides(self, names: tuple[str, ...]) -> dict:
        """The fields of `names` that are set (not None)."""
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def parameter_count(model) -> int:
    """Trainable parameters (a frozen one-hot embedding does not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hidden_for_budget(task_cls, config, cell: str, budget: int) -> tuple[int, int]:
    """(H, parameters): the state size whose model of `cell` comes closest to `budget` parameters.

    A model's count is a quadratic in H (H x H recurrent blocks, H x I input blocks and biases, the
    readout's H x O), so three tiny models (H = 1, 2, 3) give its coefficients exactly and the
    budget's H is a root; building large candidates instead would cost an orthogonal
    initialisation each."""
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"hidden_for_budget: budget must be an int >= 1; got {budget!r}")

    def count(hidden: int) -> int:
        return parameter_count(task_cls(dataclasses.replace(config, cell=cell, hidden=hidden)).model)

    p1, p2, p3 = count(1), count(2), count(3)
    a = (p3 - 2 * p2 + p1) / 2
    b = p2 - p1 - 3 * a
    c = p1 - a - b
    root = (-b + math.sqrt(b * b - 4 * a * (c - budget))) / (2 * a) if a else (budget - c) / b
    fit = lambda h: a * h * h + b * h + c
    hidden = min({max(1, math.floor(root)), max(1, math.ceil(root))}, key=lambda h: abs(fit(h) - budget))
    return hidden, count(hidden)


@dataclass
class LadderRow:
    """One cell's run: its size, its final and best evaluation loss, its minutes and its curve."""

    cell: str
    hidden: int
    params: int
    final: float
    best: float
    baseline: float
    minutes: float
    stopped: str
    steps: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, evaluation loss)
    extra: dict[str, float] = field(default_factory=dict)  # the other metrics of the last evaluation


@dataclass
class Ladder:
    """What `run_ladder` found: the task and a row per cell."""

    task: str
    rows: list[LadderRow]

    def table(self) -> Table:
        """A row per cell: size, steps, losses beside the task's baseline, the task's other metrics, minutes."""
        extra = sorted({k for row in self.rows for k in row.extra})
        rows = tuple((row.cell, str(row.hidden), f"{row.params:,}", str(row.steps), f"{row.final:.4f}",
                      f"{row.best:.4f}", f"{row.baseline:.4f}",
                      *(f"{row.extra.get(k, float('nan')):.3f}" for k in extra), f"{row.minutes:.1f}")
                     for row in self.rows)
        return Table(("cell", "hidden", "params", "steps", "final loss", "best loss", "baseline", *extra, "minutes"),
                     rows, (False, *(True,) * (7 + len(extra))))


# The ladder compares the cells on the plain task: where a task's defaults carry one cell's long run
# (copy: H = 128, a 2,000-step mixed curriculum, the chrono initialisation, lr 5e-3 over 15,000
# steps), the ladder keeps the plain settings its recorded comparison used (docs/RESULTS.md,
# "ladder"); flags still override them.
PLAIN_TASK = {"copy": ({"hidden": 64, "curriculum": 0, "mix": 0.0, "chrono": False}, {"lr": 1e-2})}


def run_ladder(task_name: str, config_overrides: dict, train_overrides: dict, out: str | Path,
               cells: tuple[str, ...] = LADDER_CELLS, reference: str = "lstm",
               progress: Callable[[str], None] | None = None) -> Ladder:
    """Train every cell of `cells` on the task with the reference cell's parameter budget.

    config_overrides: task config fields (T, hidden, ...); `hidden` is the reference cell's H.
    train_overrides: TrainConfig fields over the task's train_defaults (steps, max_minutes, ...)."""
    if task_name not in TASKS or not issubclass(TASKS[task_name], Baselined):
        ladder_tasks = sorted(name for name, cls in TASKS.items() if issubclass(cls, Baselined))
        raise ValueError(f"ladder: TASK must be one of {ladder_tasks}; got {task_name!r}")
    unknown = [c for c in (*cells, reference) if c not in LADDER_CELLS]
    if unknown or not cells:
        raise ValueError(f"ladder: cells must be some of {LADDER_CELLS}; got {','.join(cells)!r}")
    task_cls = TASKS[task_name]
    plain_config, plain_train = PLAIN_TASK.get(task_name, ({}, {}))
    config = task_cls.Config(**{**plain_config, **config_overrides, "cell": reference})
    train_config = dataclasses.replace(task_cls.train_defaults, **{**plain_train, **train_overrides})
    budget = parameter_count(task_cls(config).model)
    out, rows = Path(out), []
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
    if RunDir(out).is_run():
        raise RunDirError(f"--out {out} is a run directory; the ladder's runs go in subfolders of a folder "
                          f"of their own")
    for cell in cells:
        hidden, params = hidden_for_budget(task_cls, config, cell, budget)
        if progress:
            progress(f"{cell}: hidden {hidden}, {params:,} parameters (budget {budget:,}), {train_config.steps} steps")
        rows.append(_train_cell(task_cls, dataclasses.replace(config, cell=cell, hidden=hidden), train_config,
                                out / cell, params))
        if rows[-1].stopped == "interrupted":  # Ctrl-C (the cell's checkpoint is saved): stop the ladder, not the cell
            raise KeyboardInterrupt
    return Ladder(task_name, rows)


def _train_cell(task_cls, config, train_config: TrainConfig, run_dir: Path, params: int) -> LadderRow:
    if RunDir(run_dir).config_file.is_file():
        _check_same_cell(RunDir(run_dir), task_cls, config, train_config)
    seed_everything(train_config.seed)  # before the model is built: the same start as `rnnlab train`
    task = task_cls(config)
    trainer = Trainer(task.model, task.batches(train_config.seed), task.loss, train_config,
                      evaluate=task.evaluate, run_dir=run_dir, run_config=run_config(task))
    if RunDir(run_dir).has_checkpoint():
        trainer.resume()
    result = trainer.fit()
    curve = [(r["step"], r["loss"]) for r in RunDir(run_dir).read_metrics() if r.get("kind") == "eval"]
    last = result.last_eval or {}
    return LadderRow(config.cell, config.hidden, params, last.get("loss", float("nan")),
                     result.best_eval_loss if result.best_eval_loss is not None else float("nan"),
                     task.baseline, result.elapsed_s / 60, result.stopped, result.step, curve,
                     {k: v for k, v in last.items() if k not in ("loss", "baseline")})


def _check_same_cell(run: RunDir, task_cls, config, train_config: TrainConfig) -> None:
    """RunDirError when a cell's folder holds a run made with other flags (only those `train --resume`
    may change excepted): resuming it would train one configuration's weights on another's task and
    report them under the new flags. A field its config.json lacks reads as what the run did then."""
    saved, where = run.read_json(run.config_file.name), str(run.config_file)
    if not isinstance(saved, dict) or saved.get("task") != task_cls.name:
        task = saved.get("task") if isinstance(saved, dict) else None
        raise RunDirError(f"{run.path} holds a run of task {task!r}, not {task_cls.name!r}; choose another --out")
    stored = from_dict(task_cls.Config, saved.get("task_config") or {}, where)
    stored_train = from_dict(TrainConfig, saved.get("train") or {}, where)
    differ = [*differences(stored, config),
              *(name for name in differences(stored_train, train_config) if name not in RESUMABLE_FIELDS)]
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise RunDirError(f"{run.path} holds a run of another configuration ({', '.join(differ)} {verb}); "
                          f"choose another --out, or give the flags it was made with")


def plot_ladder(rows: list[LadderRow], path: str | Path, title: str) -> Path:
    """The evaluation loss of every cell against the training step, log scale, baseline dashed."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        if row.curve:
            steps, losses = zip(*row.curve)
            axes.plot(steps, losses, marker="o", markersize=2, lw=1.2, label=f"{row.cell} (H={row.hidden})")
    if rows:
        axes.axhline(rows[0].baseline, color="black", ls="--", lw=1, label=f"baseline {rows[0].baseline:.3f}")
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("evaluation loss (held-out sequences)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return save_figure(figure, path)
