"""Training: one `Trainer` for every task, configured by a frozen `TrainConfig`.

A task plugs in three things: the model, a batch source (an iterator of `rnnlab.data.Batch` with
`state_dict()` / `load_state_dict()`), and a loss function

    loss, state, count = loss_fn(model, batch, state, teacher_forcing)

that returns the mean loss over the batch's `count` predictions (tokens, sequences, points), the
model's final state, and takes the probability of teacher forcing for models with output feedback.
Optionally an `evaluate(model) -> {"loss": ..., ...}` for validation.

Backpropagation through time:
- full BPTT: each batch from a zero state, gradient through all its steps;
- truncated BPTT: a batch marked `continues` starts from the previous batch's final state,
  detached (stateful batches, as char-rnn); `truncate_every=k` also cuts each batch into windows of
  k steps with one update per window, the state carried (detached) between them. Either way the
  gradient flows back at most one window, and the state flows forward through the whole stream.

A step is one batch: one optimiser update, or one per window with `truncate_every`. The run is
repeatable: the same seed gives the same weights, and a run resumed from a checkpoint gives the same
weights as one that was never interrupted (model, optimiser, RNG, data position, carried state and
early-stopping counters are all in the checkpoint; the learning rate is a function of the step).
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cells import _describe
from .checkpoints import CheckpointError, RunDir, check_weights
from .config import MAX_SEED, MAX_THREADS, ConfigError, knob, to_dict, validate
from .data.batches import Batch, BatchSource
from .init import apply_constraints, regularization_loss

__all__ = ["TrainConfig", "Trainer", "TrainResult", "seed_everything", "resolve_device", "RESUMABLE_FIELDS"]

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
TEACHER_FORCING_SCHEDULES = ("linear", "exponential", "inverse_sigmoid")
PRECISIONS = ("32", "bf16")
# Fields a resumed run may change: they set budgets and bookkeeping, not the trajectory.
RESUMABLE_FIELDS = ("steps", "max_minutes", "device", "threads", "eval_every", "checkpoint_every", "log_every",
                    "patience")

LossFn = Callable[[nn.Module, Batch, Any, float], tuple[torch.Tensor, Any, int]]
Evaluate = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (what to train is the task's config)."""

    steps: int = knob(1000, "training steps (batches) in all; a resumed run continues to this total", low=1)
    max_minutes: float | None = knob(None, "wall-clock budget of this invocation in minutes (none: no limit)", above=0)
    seed: int = knob(0, "seed of every random choice: the same seed gives the same run", low=0, high=MAX_SEED)
    device: str = knob("cpu", "torch device (cpu, cuda, cuda:1, ...; auto: cuda if available)")
    threads: int | None = knob(None, "CPU threads for torch while training (none: torch's default); 1 is "
                                     "much faster on a machine whose cores are busy with other work", low=1,
                                 high=MAX_THREADS)
    optimizer: str = knob("adam", "optimiser", OPTIMIZERS)
    lr: float = knob(2e-3, "peak learning rate", above=0)
    weight_decay: float = knob(0.0, "weight decay (decoupled for adamw, L2 for adam and sgd)", low=0)
    momentum: float = knob(0.9, "momentum of sgd", low=0, below=1)
    lr_schedule: str = knob("cosine", "learning-rate schedule after warm-up", LR_SCHEDULES)
    warmup_steps: int = knob(0, "steps of linear warm-up from 0 to lr", low=0)
    min_lr_ratio: float = knob(0.1, "cosine: the final learning rate as a fraction of lr", low=0, high=1)
    lr_step_every: int = knob(1000, "step schedule: multiply the learning rate by lr_gamma every this many steps",
                              low=1)
    lr_gamma: float = knob(0.5, "step schedule: the factor", above=0, high=1)
    clip_norm: float | None = knob(5.0, "clip the gradient's global norm to this (none: no clipping)", above=0)
    truncate_every: int | None = knob(None, "truncated BPTT: cut each batch into windows of k steps, one "
                                            "update each, the state carried detached (none: whole batch)", low=1)
    teacher_forcing: float = knob(1.0, "probability of feeding back the target rather than the model's own "
                                       "output, at the start (models with output feedback)", low=0, high=1)
    teacher_forcing_end: float | None = knob(None, "scheduled sampling: the probability at the last step "
                                                   "(none: constant teacher_forcing)", low=0, high=1)
    teacher_forcing_schedule: str = knob("linear", "scheduled sampling: the shape of the decay",
                                         TEACHER_FORCING_SCHEDULES)
    eval_every: int = knob(250, "evaluate every this many steps (and at the end)", low=1)
    patience: int | None = knob(None, "early stopping: stop after this many evaluations without a new best "
                                      "(none: never)", low=1)
    checkpoint_every: int = knob(500, "write a checkpoint every this many steps (and at the end)", low=1)
    log_every: int = knob(10, "write the mean training loss to metrics.jsonl every this many steps", low=1)
    precision: str = knob("32", "arithmetic of the forward passes: 32 (float32) or bf16 (torch.autocast to bfloat16; "
                                "weights, gradients and optimiser stay float32)", PRECISIONS)
    ema_decay: float | None = knob(None, "evaluate, keep as best and save the exponential moving average of the "
                                         "weights, updated after every step with this decay (none: the weights "
                                         "themselves)", above=0, below=1)

    def __post_init__(self):
        validate(self)
        if (self.teacher_forcing_schedule == "exponential" and self.teacher_forcing_end == 0
                and self.teacher_forcing > 0):
            raise ConfigError("TrainConfig", "teacher_forcing_end",
                              "> 0 for an exponential schedule (it never reaches 0)", self.teacher_forcing_end)

    def learning_rate(self, step: int) -> float:
        """The learning rate of step `step` (0-based): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** ((step - self.warmup_steps) // self.lr_step_every)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def teacher_forcing_at(self, step: int) -> float:
        """Scheduled sampling (Bengio et al., 2015): the probability of feeding back the target at
        step `step`, from teacher_forcing at step 0 to teacher_forcing_end at the last step."""
        start, end = self.teacher_forcing, self.teacher_forcing_end
        if end is None or end == start:
            return start
        progress = min(1.0, step / max(1, self.steps - 1))
        if self.teacher_forcing_schedule == "linear":
            return start + (end - start) * progress
        if self.teacher_forcing_schedule == "exponential":  # geometric interpolation
            return start * (end / start) ** progress if start > 0 else end * progress
        # inverse sigmoid: flat at first, steepest in the middle, flat at the end.
        weight = 1 / (1 + math.exp(10 * (progress - 0.5)))
        return end + (start - end) * weight


def _check_parameter_groups(model: nn.Module, groups) -> list[dict[str, Any]] | None:
    """The Trainer's parameter_groups, checked: dicts whose "params" cover each trainable parameter
    of `model` once, "lr_scale" a number >= 0, "frozen_steps" an int >= 0."""
    if groups is None:
        return None
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"Trainer: parameter_groups must be a list of dicts; got {type(groups).__name__}")
    seen: dict[int, int] = {}
    checked = []
    for i, group in enumerate(groups):
        unknown = set(group) - {"params", "lr_scale", "frozen_steps"}
        if unknown or "params" not in group:
            raise ValueError(f"Trainer: parameter_groups[{i}] must have 'params' and optionally 'lr_scale', "
                             f"'frozen_steps'; got keys {sorted(group)}")
        scale, frozen = group.get("lr_scale", 1.0), group.get("frozen_steps", 0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
            raise ValueError(f"Trainer: parameter_groups[{i}]['lr_scale'] must be a number >= 0; got {scale!r}")
        if isinstance(frozen, bool) or not isinstance(frozen, int) or frozen < 0:
            raise ValueError(f"Trainer: parameter_groups[{i}]['frozen_steps'] must be an int >= 0; got {frozen!r}")
        checked.append({**group, "params": list(group["params"])})
        for p in checked[-1]["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if set(seen) != trainable or any(n > 1 for n in seen.values()):
        missing, extra = len(trainable - set(seen)), len(set(seen) - trainable)
        twice = sum(n > 1 for n in seen.values())
        raise ValueError(f"Trainer: parameter_groups must hold each trainable parameter of the model once; got "
                         f"{missing} missing, {extra} not the model's trainable parameters, {twice} twice")
    return checked


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's random, before the model is built."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"TrainConfig: device must be a torch device name or 'auto'; got {name!r}") from None


def _detach(state):
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach()
    return tuple(_detach(s) for s in state)


def _to(state, device):
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.to(device)
    return tuple(_to(s, device) for s in state)


class _Diverged(Exception):
    """A window's training loss was NaN or inf (raised before its backward: nothing was changed)."""


@dataclass
class TrainResult:
    """How a call to `fit` ended. stopped: 'steps', 'time', 'early_stopping', 'solved', 'interrupted' or
    'diverged' (a training loss was not finite: its update was not made, the weights are the last finite
    update's; `step` counts the steps completed before it)."""

    step: int
    stopped: str
    elapsed_s: float
    cpu_s: float
    tokens: int
    last_eval: dict[str, float] | None
    best_eval_loss: float | None
    checkpoint: Path | None


class Trainer:
    """Trains `model` on `batches` with `loss_fn` under `config`; see the module docstring.

    Args:
        model, batches, loss_fn: what the task plugs in.
        config: the TrainConfig.
        evaluate: validation metrics of the model ({"loss": ..., ...}), called in eval mode under
            no_grad every `eval_every` steps and at the end; drives early stopping and best.safetensors.
        solved: whether an evaluation's metrics meet the task's own goal (e.g. the copy task's
            accuracy target); training stops there ('solved'). None: never.
        parameter_groups: the model's trainable parameters split into groups that learn at their own
            pace (discriminative learning rates, Howard and Ruder 2018): dicts of "params", and
            optionally "lr_scale" (the group's learning rate is the schedule's times this; default 1)
            and "frozen_steps" (no update, weight decay included, before this step; default 0). Each
            trainable parameter in exactly one group. None: one group of all, at the schedule's rate.
        run_dir: where checkpoints, config.json, metrics.jsonl and loss.png go (None: nowhere).
        run_config: JSON-able description of what is trained (task and its config), stored in
            config.json next to the TrainConfig so that the run can be rebuilt.
        on_event: called with a dict per event, for progress display: kind 'step' (every step:
            step, loss, lr, tokens_per_s), 'train' (the logged mean loss), 'eval', 'checkpoint'.
    """

    def __init__(self, model: nn.Module, batches, loss_fn: LossFn, config: TrainConfig, *,
                 evaluate: Evaluate | None = None, run_dir: str | Path | None = None,
                 run_config: dict[str, Any] | None = None, on_event: Callable[[dict], None] | None = None,
                 solved: Callable[[dict[str, float]], bool] | None = None,
                 parameter_groups: list[dict[str, Any]] | None = None):
        if not isinstance(config, TrainConfig):  # a wrong kind of object: a TypeError, as the configs' own checks
            raise TypeError(f"Trainer: config must be a TrainConfig; got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer: model must be a torch.nn.Module; got {type(model).__name__}")
        self.config, self.device = config, resolve_device(config.device)
        self.model = model.to(self.device)
        self.parameter_groups = _check_parameter_groups(model, parameter_groups)
        if not hasattr(batches, "__next__"):  # next() failed at the first step, naming no argument
            raise TypeError(f"Trainer: batches must be an iterator of rnnlab.data.Batch (a batch source, or "
                            f"iter(...) of a list); got {type(batches).__name__}")
        if run_dir is not None and not isinstance(batches, BatchSource):
            # it failed at the first checkpoint, after training, on an AttributeError
            raise TypeError(f"Trainer: batches must have state_dict() and load_state_dict() to be checkpointed in "
                            f"run_dir (a resumed run reads on where it stopped); got {type(batches).__name__}")
        self.batches, self.loss_fn, self.evaluate_fn, self.solved_fn = batches, loss_fn, evaluate, solved
        self.solved = False  # the last evaluation met the task's goal
        self.run = RunDir(run_dir) if run_dir is not None else None
        self.run_config = dict(run_config or {})
        self.on_event = on_event or (lambda event: None)
        self.optimizer = self._make_optimizer()
        self.step, self.tokens = 0, 0
        self.elapsed_before, self.cpu_before = 0.0, 0.0  # wall and process CPU seconds of earlier sessions
        self._session_start: tuple[float, float] | None = None
        self.carried = None  # the final state of the last batch, detached
        self.best_eval_loss: float | None = None
        self.evals_since_best = 0
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step = -1
        # --ema-decay: the running average of the weights (state_dict order), and how many steps it has seen
        self.averaged: list[torch.Tensor] | None = None
        self.averaged_steps = 0
        self.resumed = False
        self._stop_requested = False

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c, params = self.config, [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("Trainer: model must have trainable parameters; it has none")
        if self.parameter_groups is not None:
            params = [{"lr_scale": 1.0, "frozen_steps": 0, **group} for group in self.parameter_groups]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    # --- checkpoints ----------------------------------------------------------------------------

    # The hooks below (world_size, _rank_state, _restore, _seed_stream, _stop_reason, _saves_checkpoints)
    # are what rnnlab.distributed.DistributedTrainer overrides: the Trainer itself is one process.
    world_size = 1

    def _rank_state(self) -> dict[str, Any]:
        """What belongs to this process alone: the carried state and the random generators."""
        return {
            "carried": _to(self.carried, "cpu"),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_python": list(random.getstate()[1]),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that the rest of the run depends on."""
        return {
            "world_size": self.world_size,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed()[0],
            "cpu_s": self.elapsed()[1],
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            **self._rank_state(),
            "best_eval_loss": self.best_eval_loss,
            "evals_since_best": self.evals_since_best,
            "last_eval": self.last_eval,
            "last_eval_step": self.last_eval_step,
            "averaged": None if self.averaged is None else [a.detach().cpu().clone() for a in self.averaged],
            "averaged_steps": self.averaged_steps,
        }

    def save_checkpoint(self) -> Path:
        if self.run is None:
            raise ValueError("Trainer.save_checkpoint: run_dir must be given to save checkpoints; got None")
        path = self.run.save(self.step, self.model.state_dict(), self.state_dict())
        self.on_event({"kind": "checkpoint", "step": self.step, "path": str(path)})
        return path

    def resume(self) -> int:
        """Load the run directory's checkpoint into this trainer; returns its step."""
        if self.run is None:
            raise ValueError("Trainer.resume: run_dir must be given to resume; got None")
        if not self.run.path.is_dir():
            raise CheckpointError(f"Trainer.resume: run_dir must be a run directory; got {str(self.run.path)!r}, "
                                  f"which does not exist")
        with self._run_locked():
            return self._resume()

    def _resume(self) -> int:
        step, weights, state = self.run.load(self.device)
        check_weights(self.run.weights_file(step), weights, self.model)
        return self._restore(step, weights, state, self.run.trainer_file(step))

    def _restore(self, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], source) -> int:
        """Load a checkpoint's weights and trainer state (read from `source`) into this trainer."""
        written_by = state.get("world_size", 1)
        if written_by != self.world_size:
            processes = f"{written_by} process{'es' if written_by != 1 else ''}"
            raise CheckpointError(f"{source} was written by {processes}, each carrying its own rows' state, so it "
                                  f"resumes with {written_by} only; got {self.world_size}: resume with "
                                  + (f"torchrun --nproc-per-node {written_by} -m rnnlab train --resume ..."
                                     if written_by > 1 else "rnnlab train --resume ... (without torchrun)"))
        self.model.load_state_dict(weights)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.batches.load_state_dict(state["batches"])
            self.step, self.tokens = step, int(state["tokens"])
            self.elapsed_before, self.cpu_before = float(state["elapsed_s"]), float(state["cpu_s"])
            self.carried = _to(state["carried"], self.device)
            torch.set_rng_state(state["rng_torch"].cpu())
            if state["rng_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
            random.setstate((3, tuple(state["rng_python"]), None))
            self.best_eval_loss, self.evals_since_best = state["best_eval_loss"], state["evals_since_best"]
            self.last_eval, self.last_eval_step = state["last_eval"], state["last_eval_step"]
            averaged = state.get("averaged")  # absent: a checkpoint written before --ema-decay existed
            if (averaged is not None) != (self.config.ema_decay is not None):
                raise ValueError(f"ema_decay is {self.config.ema_decay}, but the checkpoint "
                                 f"{'holds' if averaged is not None else 'lacks'} averaged weights")
            self.averaged = None if averaged is None else [a.to(self.device) for a in averaged]
            self.averaged_steps = int(state.get("averaged_steps", 0))
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CheckpointError(f"{source} does not match this trainer (another optimiser, other data or "
                                  f"another format): {error}") from None
        if self.run is not None:
            self.run.truncate_metrics(step)
        self.resumed = True
        return step

    # --- the loop -------------------------------------------------------------------------------

    def autocast(self):
        """The context of forward passes in the configured precision (backward follows autocast's casts)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def request_stop(self) -> None:
        """Stop after the current step, with a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    @contextmanager
    def _signals_stop(self):
        """Ctrl-C (SIGINT) or SIGTERM (`timeout`, `kill`, a scheduler or container ending the job) asks for
        a stop at the next step boundary, so the checkpoint is consistent; a second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, before in previous.items():
                signal.signal(number, before)

    def _start_run_dir(self) -> None:
        if self.run is None or self.resumed:
            return
        self.run.start_new()  # refuses a folder holding a run or files that are not a run's
        self.run.write_json(self.run.config_file.name, {**self.run_config, "train": to_dict(self.config)})
        self.run.metrics_file.unlink(missing_ok=True)

    def fit(self) -> TrainResult:
        """Train until the step budget, the time budget, early stopping, Ctrl-C or SIGTERM."""
        c = self.config
        if self.run is not None and not self.resumed:
            self.run.check_new()  # before the lock file goes into a folder that is not a run
        with self._run_locked():
            self._start_run_dir()
            threads_before = torch.get_num_threads()
            if c.threads is not None:
                torch.set_num_threads(c.threads)
            try:
                return self._fit()
            finally:
                torch.set_num_threads(threads_before)

    @contextmanager
    def _run_locked(self):
        """The run directory's exclusive lock while training (another process: an error naming its pid)."""
        if self.run is None:
            yield
            return
        with self.run.locked("training"):
            yield

    def _fit(self) -> TrainResult:
        c = self.config
        if not self.resumed:
            self._seed_stream()
        self._stop_requested = False
        started = time.monotonic()
        self._session_start = (started, time.process_time())
        deadline = None if c.max_minutes is None else started + 60 * c.max_minutes
        interval = {"loss": 0.0, "count": 0, "seconds": 0.0}
        stopped = "steps"
        if self.resumed and self.last_eval_step == self.step and self._meets_goal(self.last_eval):
            stopped = "solved"  # a run that stopped solved stays stopped
        with self._signals_stop():
            while self.step < c.steps and stopped != "solved":
                reason = self._stop_reason(deadline)
                if reason is not None:
                    stopped = reason
                    break
                batch_started = time.monotonic()
                try:
                    loss, count = self._train_batch(self._next_batch())
                except _Diverged:  # a NaN or inf loss would make every weight NaN: stop on the last finite ones
                    stopped = "diverged"
                    break
                self._update_average()
                interval["seconds"] += time.monotonic() - batch_started
                self.step += 1
                self.tokens += count
                self._report_step(loss, count, interval)
                if self.evaluate_fn is not None and self.step % c.eval_every == 0:
                    if self._evaluate_and_check():
                        stopped = "solved" if self.solved else "early_stopping"
                        break
                if self._saves_checkpoints() and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.evaluate_fn is not None and self.last_eval_step != self.step and stopped != "interrupted":
                self._evaluate_and_check()
            checkpoint = self.save_checkpoint() if self._saves_checkpoints() else None
        self.elapsed_before, self.cpu_before = self.elapsed()
        self._session_start = None
        if self.run is not None:
            from .plots import plot_losses  # matplotlib only when there is somewhere to put the plot

            plot_losses(self.run.read_metrics(), self.run.path / "loss.png", self.run_config.get("unit", "token"))
        return TrainResult(self.step, stopped, self.elapsed_before, self.cpu_before, self.tokens, self.last_eval,
                           self.best_eval_loss, checkpoint)

    def _seed_stream(self) -> None:
        seed_everything(self.config.seed)  # the training stream starts from the seed, whatever init consumed

    def _stop_reason(self, deadline: float | None) -> str | None:
        """Why to stop before the next step: 'interrupted', 'time', or None to go on."""
        if self._stop_requested:
            return "interrupted"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        return None

    def _saves_checkpoints(self) -> bool:
        return self.run is not None

    def elapsed(self) -> tuple[float, float]:
        """(wall, process CPU) seconds of training so far, over all sessions of the run. CPU time
        is what a busy shared machine does not inflate (with one thread it is the time the run
        would take on a quiet core)."""
        if self._session_start is None:
            return self.elapsed_before, self.cpu_before
        wall, cpu = self._session_start
        return self.elapsed_before + time.monotonic() - wall, self.cpu_before + time.process_time() - cpu

    def _next_batch(self) -> Batch:
        """The next batch; a source that ends or yields something else is a one-line error naming
        `batches` (a bare StopIteration escaped fit(), and a tuple failed on `.to`)."""
        try:
            batch = next(self.batches)
        except StopIteration:
            raise ValueError(f"Trainer: batches ended after {self.step} batches of steps={self.config.steps}; a "
                             f"batch source must yield one batch per step (repeat the data, e.g. epoch after "
                             f"epoch)") from None
        if not isinstance(batch, Batch):
            raise TypeError(f"Trainer: batches must yield rnnlab.data.Batch; got {type(batch).__name__}")
        return batch

    def _train_batch(self, batch: Batch) -> tuple[float, int]:
        """One step: one update per window of the batch. Returns (mean loss, predictions)."""
        batch = batch.to(self.device)
        k = self.config.truncate_every
        if k is None or batch.steps <= k:
            windows = [batch]
        else:
            windows = [batch.window(t, t + k) for t in range(0, batch.steps, k)]
        lr, teacher_forcing = self.config.learning_rate(self.step), self.config.teacher_forcing_at(self.step)
        for group in self.optimizer.param_groups:  # parameter_groups: their own scale, fixed at first
            group["lr"] = 0.0 if self.step < group.get("frozen_steps", 0) else lr * group.get("lr_scale", 1.0)
        self.model.train()
        total, count = 0.0, 0
        for window in windows:
            state = self.carried if window.continues else None
            with self.autocast():
                result = self.loss_fn(self.model, window, state, teacher_forcing)
            if (not isinstance(result, tuple) or len(result) != 3 or not isinstance(result[0], torch.Tensor)
                    or result[0].numel() != 1):
                raise TypeError(f"Trainer: loss_fn must return (loss: a scalar tensor, state, count); got "
                                f"{_describe(result)}")
            loss, state, n = result
            value = loss.item()
            if not self._finite(value):
                raise _Diverged(value)
            self.optimizer.zero_grad(set_to_none=True)
            (loss + regularization_loss(self.model)).backward()
            if self.config.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
            self.optimizer.step()
            apply_constraints(self.model)
            self.carried = _detach(state)
            total, count = total + value * n, count + n
        return total / max(count, 1), count

    def _finite(self, loss: float) -> bool:
        """Whether a window's loss may be trained on (DistributedTrainer: whether every rank's may)."""
        return math.isfinite(loss)

    def _update_average(self) -> None:
        """--ema-decay d: after n steps the average is sum_t (1 - d) d^(n-t) w_t / (1 - d^n) over the
        weights w_1 .. w_n after each step: the moving average, normalised (as Adam's bias correction)
        so the zero it would start from weighs nothing. Integer tensors are copied."""
        decay = self.config.ema_decay
        if decay is None:
            return
        current = list(self.model.state_dict().values())
        self.averaged_steps += 1
        if self.averaged is None:
            self.averaged = [t.detach().clone() for t in current]
            return
        rate = (1 - decay) / (1 - decay ** self.averaged_steps)  # 1 at the first step: the weights themselves
        with torch.no_grad():
            for average, weight in zip(self.averaged, current):
                if average.is_floating_point():
                    average.lerp_(weight, rate)
                else:
                    average.copy_(weight)

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The averaged weights under the model's state_dict names (None without --ema-decay or before
        the first step)."""
        if self.averaged is None:
            return None
        return dict(zip(self.model.state_dict().keys(), self.averaged))

    @contextmanager
    def _evaluated_weights(self):
        """The weights evaluations see and best.safetensors keeps: the average with --ema-decay (the
        model's own weights are put back after), else the model's own."""
        averaged = self.averaged_state_dict()
        if averaged is None:
            yield
            return
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(averaged)
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def _report_step(self, loss: float, count: int, interval: dict) -> None:
        interval["loss"] += loss * count
        interval["count"] += count
        rate = interval["count"] / max(interval["seconds"], 1e-9)  # training time only, not evaluation
        lr = self.config.learning_rate(self.step - 1)
        self.on_event({"kind": "step", "step": self.step, "loss": loss, "lr": lr, "tokens_per_s": rate})
        if self.step % self.config.log_every == 0:
            record = {"kind": "train", "step": self.step, "loss": interval["loss"] / max(interval["count"], 1),
                      "lr": lr, "teacher_forcing": self.config.teacher_forcing_at(self.step - 1),
                      "tokens_per_s": rate, "tokens": self.tokens,
                      "elapsed_s": round(self.elapsed()[0], 2), "cpu_s": round(self.elapsed()[1], 2)}
            self._record(record)
            interval.update(loss=0.0, count=0, seconds=0.0)

    def _record(self, record: dict) -> None:
        if self.run is not None:
            self.run.append_metrics(record)
        self.on_event(record)

    def evaluate(self) -> dict[str, float]:
        """The task's validation metrics of the current model (eval mode, no gradients)."""
        if self.evaluate_fn is None:
            raise ValueError("Trainer.evaluate: needs an evaluate function; got None")
        self.model.eval()
        try:
            with torch.no_grad():
                with self.autocast():
                    metrics = self.evaluate_fn(self.model)
        finally:
            self.model.train()
        if not isinstance(metrics, dict):
            raise TypeError(f"Trainer: evaluate must return a dict with 'loss'; got {type(metrics).__name__}")
        if "loss" not in metrics:
            raise ValueError(f"Trainer: evaluate must return a dict with 'loss'; got keys {sorted(metrics)}")
        return {k: float(v) for k, v in metrics.items()}

    def _meets_goal(self, metrics: dict[str, float] | None) -> bool:
        return self.solved_fn is not None and metrics is not None and bool(self.solved_fn(metrics))

    def _evaluate_and_check(self) -> bool:
        """Evaluate, log, keep the best weights; True when the task's goal is met (self.solved) or
        early stopping says stop."""
        with self._evaluated_weights():
            metrics = self.evaluate()
            best = self.best_eval_loss is None or metrics["loss"] < self.best_eval_loss
            if best and self.run is not None:
                self.run.save_weights(self.run.best_file, self.model.state_dict())
        self.last_eval, self.last_eval_step = metrics, self.step
        self.solved = self._meets_goal(metrics)
        wall, cpu = self.elapsed()
        self._record({"kind": "eval", "step": self.step, **metrics, "elapsed_s": round(wall, 2),
                      "cpu_s": round(cpu, 2)})
        if best:
            self.best_eval_loss, self.evals_since_best = metrics["loss"], 0
            return self.solved
        self.evals_since_best += 1
        if self.solved:
            return True
        return self.config.patience is not None and self.evals_since_best >= self.config.patience
