"""Applications, one file each: data + model + metric + defaults. Each is a `Task` (tasks/base.py,
the contract as code): it plugs into the Trainer with `model`, `batches(seed)`, `loss` and
`evaluate(model)`, and into the CLI with `Config` (its flags), `train_defaults`, `artifacts()` /
`from_artifacts()` (what its run directory keeps), and `describe()` / `report(model, run_dir)`.
Optional capabilities are inherited, not probed: a `TextGenerator` serves `rnnlab sample` (and
gives `rnnlab train` its sampling flags).

This module also rebuilds a finished or interrupted run from its directory (`open_run`).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints import CheckpointError, RunDir, check_weights
from ..config import from_dict, to_dict
from ..training import TrainConfig, resolve_device
from .base import Baselined, Captioner, Task, TextGenerator, Translator, capabilities, commands_for
from .digits import DigitsConfig, DigitsTask
from .forecast import ForecastConfig, ForecastTask
from .language import LanguageConfig, LanguageTask
from .memory import AddingConfig, AddingTask, CopyConfig, CopyTask
from .sentiment import SentimentConfig, SentimentTask
from .translate import TranslateConfig, TranslateTask

__all__ = ["Task", "TextGenerator", "Translator", "Captioner", "Baselined", "capabilities", "commands_for", "TASKS", "DEFAULT_TASK", "run_config", "write_artifacts", "open_run", "load_weights", "describe_task",
           "LanguageTask", "LanguageConfig", "SentimentTask", "SentimentConfig", "DigitsTask", "DigitsConfig",
           "ForecastTask", "ForecastConfig", "AddingTask", "AddingConfig", "CopyTask", "CopyConfig",
           "TranslateTask", "TranslateConfig"]

TASKS = {cls.name: cls for cls in (LanguageTask, SentimentTask, DigitsTask, ForecastTask, AddingTask, CopyTask,
                                   TranslateTask)}
DEFAULT_TASK = LanguageTask.name


def describe_task(cls) -> str:
    """A task's one-line description."""
    return cls.description


def run_config(task) -> dict:
    """What config.json records about the task (the Trainer adds the TrainConfig)."""
    return {"task": task.name, "unit": task.unit, "task_config": to_dict(task.config)}


def write_artifacts(task, run_dir: str | Path) -> None:
    run = RunDir(run_dir)
    for name, value in task.artifacts().items():
        run.write_json(name, value)


def open_run(run_dir: str | Path):
    """(task, train_config) rebuilt from a run directory's config.json and artifacts (the task's
    data is read again; its vocabulary and the like come from the run)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ValueError(f"open_run: run_dir must be a run directory; got {str(run_dir)!r}, which does not exist")
    saved = run.read_json(run.config_file.name)
    name = saved.get("task") if isinstance(saved, dict) else None
    if name not in TASKS:
        raise CheckpointError(f"{run.config_file}: task must be one of {sorted(TASKS)}; got {name!r}")
    cls = TASKS[name]
    config = from_dict(cls.Config, saved.get("task_config", {}), str(run.config_file))
    train_config = from_dict(TrainConfig, saved.get("train", {}), str(run.config_file))
    artifacts = {file: run.read_json(file) for file in cls.artifact_files}
    return cls.from_artifacts(config, artifacts), train_config


def load_weights(task, run_dir: str | Path, which: str = "best", device: str = "cpu") -> Path:
    """Load the run's best (falling back to the last) or last weights into task.model; returns the file."""
    if which not in ("best", "last"):
        raise ValueError(f"load_weights: which must be 'best' or 'last'; got {which!r}")
    run = RunDir(run_dir)
    if which == "best" and run.best_file.is_file():
        file, weights = run.best_file, run.load_weights(run.best_file, resolve_device(device))
    else:
        step, weights, _ = run.load(resolve_device(device))
        file = run.weights_file(step)
    check_weights(file, weights, task.model)
    task.model.load_state_dict(weights)
    task.model.to(resolve_device(device))
    return file
