"""Applications, one file each: data + model + metric + defaults. Each is a `Task` (tasks/base.py,
the contract as code): it plugs into the Trainer with `model`, `batches(seed)`, `loss` and
`evaluate(model)`, and into the CLI with `Config` (its flags), `train_defaults`, `artifacts()` /
`from_artifacts()` (what its run directory keeps), and `describe()` / `report(model, run_dir)`.
Optional capabilities are inherited, not probed: a `TextGenerator` serves `rnnlab sample` (and
gives `rnnlab train` its sampling flags).

This module also rebuilds a finished or interrupted run from its directory (`open_run`), and
records what the run's data files held (`run_config`: a sha256 per file named by the task's
`data_files`), so that `changed_data` tells a resumed or evaluated run that its data changed.
config.json also records the rnnlab version that wrote it: a run of a newer rnnlab (a task or
field this one lacks) is refused naming both versions, not read with parts dropped.
"""

from __future__ import annotations

import hashlib
import types
import typing
from pathlib import Path

from .. import __version__
from ..checkpoints import CheckpointError, RunDir, check_weights
from ..config import UnknownFieldsError, field_types, from_dict, to_dict
from ..errors import RunDirError
from ..training import TrainConfig, resolve_device
from .base import Baselined, Captioner, Task, TextGenerator, Translator, capabilities, commands_for
from .caption import CaptionConfig, CaptionTask
from .control import ControlConfig, ControlTask
from .digits import DigitsConfig, DigitsTask
from .forecast import ForecastConfig, ForecastTask
from .language import LanguageConfig, LanguageTask
from .memory import AddingConfig, AddingTask, CopyConfig, CopyTask
from .sentiment import SentimentConfig, SentimentTask
from .translate import TranslateConfig, TranslateTask

__all__ = ["Task", "TextGenerator", "Translator", "Captioner", "Baselined", "capabilities", "commands_for", "TASKS",
           "DEFAULT_TASK", "run_config", "write_artifacts", "open_run", "load_weights", "describe_task", "changed_data",
           "content_hash",
           "LanguageTask", "LanguageConfig", "SentimentTask", "SentimentConfig", "DigitsTask", "DigitsConfig",
           "ForecastTask", "ForecastConfig", "AddingTask", "AddingConfig", "CopyTask", "CopyConfig", "ControlTask",
           "ControlConfig", "CaptionTask", "CaptionConfig", "TranslateTask", "TranslateConfig"]

TASKS = {cls.name: cls for cls in (LanguageTask, SentimentTask, DigitsTask, ForecastTask, AddingTask, CopyTask,
                                   ControlTask, CaptionTask, TranslateTask)}
DEFAULT_TASK = LanguageTask.name


def describe_task(cls) -> str:
    """A task's one-line description."""
    return cls.description


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_config(task) -> dict:
    """What config.json records about the task (the Trainer adds the TrainConfig): its config, with
    the paths of its data files made absolute (so the run opens from any working directory), and
    each data file's content hash."""
    config, data = to_dict(task.config), {}
    for name in type(task).data_files:
        if config.get(name) is not None:
            path = Path(config[name]).resolve()
            try:
                data[name] = {"path": str(path), "sha256": content_hash(path)}
            except OSError as error:
                raise ValueError(f"{type(task).__name__}: {name} must be a readable file or folder; got "
                                 f"{config[name]!r} ({error.strerror})") from None
            config[name] = str(path)
    return {"task": task.name, "unit": task.unit, "task_config": config, **({"data": data} if data else {}),
            "rnnlab_version": __version__}


def changed_data(run_dir: str | Path) -> list[str]:
    """The run's data files that are missing or differ from what the run recorded, one phrase each
    (naming the file); [] when all match or the run recorded none (runs made before hashes)."""
    run = RunDir(run_dir)
    recorded = run.read_json(run.config_file.name).get("data") or {}
    if not isinstance(recorded, dict):  # edited by hand: name it, not an AttributeError
        raise CheckpointError(f"{run.config_file}: data must be an object of data files; got {recorded!r}")
    changes = []
    for name, entry in sorted(recorded.items()):
        try:
            path, sha256 = Path(entry["path"]), entry["sha256"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{run.config_file}: data entry {name!r} is malformed") from None
        if not path.exists():
            changes.append(f"--{name.replace('_', '-')} {path} is missing")
        elif content_hash(path) != sha256:
            changes.append(f"--{name.replace('_', '-')} {path} has changed since the run was made (sha256 "
                           f"{sha256[:12]}... recorded)")
    return changes


def _matches(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return True  # other annotations (tuples, ...) are checked by the config itself


def _check_types(cls, data, where: str) -> None:
    """CheckpointError naming the field of a hand-edited config.json whose JSON type is wrong."""
    if not isinstance(data, dict):
        return  # from_dict names it
    for name, kind in field_types(cls).items():
        if name not in data:
            continue
        union = typing.get_origin(kind) in (typing.Union, types.UnionType)
        kinds = typing.get_args(kind) if union else (kind,)
        if not any(_matches(data[name], k) for k in kinds):
            expected = " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)
            raise CheckpointError(f"{where}: {name} must be {expected}; got {data[name]!r} "
                                  f"({type(data[name]).__name__}; was the file edited by hand?)")


def write_artifacts(task, run_dir: str | Path) -> None:
    run = RunDir(run_dir)
    for name, value in task.artifacts().items():
        run.write_json(name, value)


def open_run(run_dir: str | Path):
    """(task, train_config) rebuilt from a run directory's config.json and artifacts (the task's
    data is read again; its vocabulary and the like come from the run)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"RUN_DIR must be a run directory (the --out of rnnlab train); got {str(run_dir)!r}, "
                          f"which {'is a file' if run.path.exists() else 'does not exist'}")
    saved = run.read_json(run.config_file.name)
    name = saved.get("task") if isinstance(saved, dict) else None
    if name not in TASKS:
        raise CheckpointError(f"{run.config_file}: task must be one of {sorted(TASKS)}; got {name!r}"
                              + (f" ({_written_by(saved)})" if isinstance(name, str) else ""))
    cls = TASKS[name]
    _check_types(cls.Config, saved.get("task_config", {}), f"{run.config_file}: task_config")
    _check_types(TrainConfig, saved.get("train", {}), f"{run.config_file}: train")
    try:  # a field the file lacks (written before the field existed) reads as what the run did then
        config = from_dict(cls.Config, saved.get("task_config", {}), str(run.config_file))
        train_config = from_dict(TrainConfig, saved.get("train", {}), str(run.config_file))
    except UnknownFieldsError as error:
        raise CheckpointError(f"{run.config_file}: {'task_config' if error.owner == cls.Config.__name__ else 'train'} "
                              f"has field(s) {error.fields} that {error.owner} of this rnnlab lacks: "
                              f"{_written_by(saved)}; nothing was changed") from None
    except (TypeError, ValueError) as error:  # a value out of range (the configs check their fields)
        message = str(error)
        raise CheckpointError(message if str(run.config_file) in message else f"{run.config_file}: {message}") from None
    artifacts = {file: run.read_json(file) for file in cls.artifact_files}
    return cls.from_artifacts(config, artifacts), train_config


def _written_by(saved: dict) -> str:
    """Who wrote a config.json this rnnlab cannot read whole, for the error that refuses it."""
    version = saved.get("rnnlab_version")
    if version is None:
        return "the file names no rnnlab version (edited by hand, or written by a development copy of rnnlab?)"
    if version == __version__:
        return (f"it was written by rnnlab {version}, like this one (edited by hand, or written by a development "
                f"copy of rnnlab?)")
    return f"it was written by rnnlab {version} and this is rnnlab {__version__}; open it with rnnlab {version}"


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
