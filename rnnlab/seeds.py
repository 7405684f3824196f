"""One configuration over several seeds: is a result the configuration's, or one seed's luck?

`run_seeds` trains a task's configuration once per seed, each an ordinary run in OUT/seed-S/
(checkpoints, metrics.jsonl, best weights, artifacts: `rnnlab eval OUT/seed-S` works on it), and
scores each run's best weights with the task's `final_metrics` (written to OUT/seed-S/final.json).
It is resumable: a seed whose final.json exists is read, not trained again; one with a checkpoint
is resumed; the others start. So an interrupted call continues where it stopped, and calls for
different seeds (--first, --count) may run side by side and a last call tabulates them all. A
seed folder made with another configuration is refused, never mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CheckpointError, RunDir
from .config import filled, to_dict
from .errors import RunDirError
from .runners import check_implementations
from .tasks import TASKS, load_weights, run_config, write_artifacts
from .training import TrainConfig, Trainer, TrainResult, seed_everything

__all__ = ["SeedRow", "run_seeds", "run_seed", "summarize", "seed_folder", "RESULT_FILE"]

RESULT_FILE = "final.json"
# TrainConfig fields a seed's run may be continued with, other values than it began with: where and how
# fast it runs and how often it writes. The others (--steps too: a finished seed is not extended) must match.
FREE_FIELDS = ("max_minutes", "device", "threads", "checkpoint_every", "log_every")
PRETRAINING_FILE = "pretraining.json"


@dataclass
class SeedRow:
    """One seed's run: the task's final metrics of its best weights, where it stopped, its minutes
    (training, and the pretraining before it where the task has one)."""

    seed: int
    metrics: dict[str, float]
    step: int
    stopped: str
    minutes: float
    cpu_minutes: float
    pretrain_minutes: float = 0.0
    pretrain_cpu_minutes: float = 0.0


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def _as_json(values: dict) -> dict:
    """The values as config.json holds them (tuples as lists)."""
    return json.loads(json.dumps(values))


def _check_same_config(run: RunDir, expected: dict, task_config_class: type) -> None:
    """RunDirError when the seed folder's run was made with another configuration than `expected`
    (the fields that do not change what a finished run is, such as --threads, excepted). A field
    its config.json lacks (written before the field existed) counts as what the run did then."""
    saved = run.read_json(run.config_file.name)
    for section in ("train", "task_config"):  # edited by hand: name it, not a TypeError deep in `filled`
        if not isinstance(saved, dict) or not isinstance(saved.get(section) or {}, dict):
            raise CheckpointError(f"{run.config_file}: {section} must be an object of config fields; got "
                                  f"{(saved.get(section) if isinstance(saved, dict) else saved)!r}")
    saved_train = {k: v for k, v in _as_json(filled(TrainConfig, saved.get("train") or {})).items()
                   if k not in FREE_FIELDS}
    wanted_train = {k: v for k, v in expected["train"].items() if k not in FREE_FIELDS}
    differ = sorted(k for k in set(saved_train) | set(wanted_train) if saved_train.get(k) != wanted_train.get(k))
    saved_task = _as_json(filled(task_config_class, saved.get("task_config") or {}))
    wanted_task = expected["task_config"]
    differ += sorted(k for k in set(saved_task) | set(wanted_task) if saved_task.get(k) != wanted_task.get(k))
    if saved.get("task") != expected["task"]:
        differ.insert(0, "task")
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise RunDirError(f"{run.path} holds a run of another configuration ({', '.join(differ)} {verb}); "
                          f"choose another --out, or give the flags it was made with")


def run_seed(task_name: str, task_config, train_config: TrainConfig, run_dir: str | Path,
             on_event: Callable[[dict], None] | None = None,
             progress: Callable[[str], None] | None = None) -> SeedRow | None:
    """Train (or resume, or read) one seed's run in run_dir; its row, or None when interrupted."""
    cls, run = TASKS[task_name], RunDir(run_dir)
    seed = train_config.seed
    if run.config_file.is_file():
        task_fields = to_dict(task_config)
        for name in cls.data_files:  # as run_config records them: absolute paths
            if task_fields.get(name) is not None:
                task_fields[name] = str(Path(task_fields[name]).resolve())
        expected = {"task": task_name, "task_config": task_fields, "train": to_dict(train_config)}
        _check_same_config(run, _as_json(expected), cls.Config)
    if (run.path / RESULT_FILE).is_file():
        saved = run.read_json(RESULT_FILE)
        try:
            return SeedRow(**{**saved, "metrics": dict(saved["metrics"])})
        except (KeyError, TypeError, ValueError) as error:  # edited by hand, or written by another rnnlab
            raise CheckpointError(f"{run.path / RESULT_FILE} is corrupt: not a seed's result ({type(error).__name__}: "
                                  f"{error}); delete it to score the seed's run again") from None
    seed_everything(seed)  # before the model is built: the same start as `rnnlab train --seed S`
    task = cls(task_config)
    trainer = Trainer(task.model, task.batches(seed), task.loss, train_config, evaluate=task.evaluate,
                      run_dir=run_dir, run_config=run_config(task), on_event=on_event, solved=task.solved,
                      parameter_groups=task.parameter_groups())
    pretrained = {"elapsed_s": 0.0, "cpu_s": 0.0}
    if run.has_checkpoint():
        trainer.resume()
        if (run.path / PRETRAINING_FILE).is_file():
            pretrained = run.read_json(PRETRAINING_FILE)
            if not isinstance(pretrained, dict) or not all(
                    isinstance(pretrained.get(key), (int, float)) for key in ("elapsed_s", "cpu_s")):
                raise CheckpointError(f"{run.path / PRETRAINING_FILE} is corrupt: not a pretraining record (elapsed_s "
                                      f"and cpu_s, in seconds); delete it to count the pretraining's time as 0")
    else:
        run.check_new()
        check_implementations(task.model)  # a refused --implementation fails before the seed's folder is made
        pretrainer = task.pretraining(train_config)
        if pretrainer is not None:
            if progress:
                progress(f"seed {seed}: pretraining, {pretrainer.config.steps} steps")
            pretrainer.on_event = on_event or (lambda event: None)
            result = pretrainer.fit()
            if result.stopped == "interrupted":
                return None
            pretrained = {"steps": result.step, "stopped": result.stopped, "elapsed_s": round(result.elapsed_s, 2),
                          "cpu_s": round(result.cpu_s, 2)}
        run.start_new()
        write_artifacts(task, run_dir)
        if pretrainer is not None:
            run.write_json(PRETRAINING_FILE, pretrained)
    patience = train_config.patience
    if trainer.step >= train_config.steps or (patience is not None and trainer.evals_since_best >= patience):
        # a run that ended but whose final evaluation was not written: training it on would change it
        wall, cpu = trainer.elapsed()
        stopped = "steps" if trainer.step >= train_config.steps else "early_stopping"
        result = TrainResult(trainer.step, stopped, wall, cpu, trainer.tokens, trainer.last_eval,
                             trainer.best_eval_loss, None)
    else:
        result = trainer.fit()
    if result.stopped == "interrupted":
        return None
    if train_config.threads is not None:  # the final evaluation too, not only fit (which restores the default)
        import torch

        torch.set_num_threads(train_config.threads)
    load_weights(task, run_dir, "best", train_config.device)
    row = SeedRow(seed, task.final_metrics(task.model), result.step, result.stopped, round(result.elapsed_s / 60, 3),
                  round(result.cpu_s / 60, 3), round(pretrained["elapsed_s"] / 60, 3),
                  round(pretrained["cpu_s"] / 60, 3))
    # the metrics as pairs: the JSON file's keys are sorted, and the table keeps the task's order
    run.write_json(RESULT_FILE, {**dataclasses.asdict(row), "metrics": list(row.metrics.items())})
    return row


def run_seeds(task_name: str, task_config, train_config: TrainConfig, out: str | Path, seeds: range,
              progress: Callable[[str], None] | None = None,
              on_event: Callable[[int], Callable[[dict], None]] | None = None) -> list[SeedRow]:
    """Run `seeds` of one configuration, one after another, in OUT/seed-S/; the rows of those that
    finished (all of them unless interrupted). on_event(seed): the Trainer's event callback for it."""
    if task_name not in TASKS:
        raise ValueError(f"seeds: task must be one of {sorted(TASKS)}; got {task_name!r}")
    if not isinstance(seeds, range) or len(seeds) == 0 or seeds.start < 0:
        raise ValueError(f"seeds: seeds must be a non-empty range of seeds >= 0; got {seeds!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
    if RunDir(out).is_run():
        raise RunDirError(f"--out {out} is a run directory; the seeds' runs go in subfolders of a folder of their own")
    rows = []
    for seed in seeds:
        folder = seed_folder(out, seed)
        if progress:
            state = "done" if (folder / RESULT_FILE).is_file() else \
                "resuming" if RunDir(folder).has_checkpoint() else "training"
            progress(f"seed {seed}: {state} in {folder}")
        row = run_seed(task_name, task_config, dataclasses.replace(train_config, seed=seed), folder,
                       on_event(seed) if on_event else None, progress)
        if row is None:
            break
        rows.append(row)
    return rows


def summarize(rows: list[SeedRow]) -> dict[str, tuple[float, float | None]]:
    """Metric name -> (mean, sample standard deviation) over the rows; the deviation is None for one
    seed, which has no spread to measure (never a zero that would read as a measured one)."""
    if not rows:
        raise ValueError("summarize: rows must not be empty")
    result = {}
    for name in rows[0].metrics:
        values = [row.metrics[name] for row in rows]
        mean = sum(values) / len(values)
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        result[name] = (mean, spread)
    return result
