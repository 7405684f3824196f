"""The `rnnlab` command: the only place that parses argv or prints."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import threading
import time
import typing
from contextlib import contextmanager
from pathlib import Path

from . import __version__, tables
from .checks import with_article

# --- flags generated from config dataclasses ---------------------------------------------------


class FlagError(ValueError):
    """A flag's value is wrong: printed as one line `rnnlab COMMAND: error: --flag must be ...`."""

    def __init__(self, command: str, message: str):
        self.command = command
        super().__init__(message)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to read the flags, no usage block."""

    def error(self, message: str):
        from .distributed import is_reporter  # under torchrun every rank parses the same line: rank 0 says it

        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if is_reporter() else None)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag is reported by the command it was given to (`rnnlab bench:
        error: unrecognized arguments: --x`), whose --help lists the flags it takes."""
        args = sys.argv[1:] if args is None else list(args)
        commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
        command = commands.get(args[0]) if args else None
        # A flag the command does not know, refused before argparse reads the value after it as a
        # positional: `train --hiden 300` said "argument task: invalid choice: '300'". Without a
        # known command only the first word is ours to judge (`rnnlab trains ...`: argparse's word).
        command, words = (command, args[1:]) if command is not None else (self, args[:1])
        for arg in words:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]  # a word with a space is a value to argparse (`--prompt "-- hence"`)
            if name.startswith("--") and " " not in arg and not any(o.startswith(name)
                                                                     for o in command._option_string_actions):
                command.error(f"unrecognized arguments: {arg}")
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = commands.get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def flag_name(field: str) -> str:
    """The CLI's one translation of a config field's name: `max_minutes` -> `--max-minutes`."""
    return "--" + field.replace("_", "-")


def _parse_value(kind, meta: dict, optional: bool):
    """argparse type for a field: the knob's own parser, comma lists for tuples ('all' for every
    choice), 'none' for None where the field allows it."""
    item = (typing.get_args(kind) or (str,))[0] if typing.get_origin(kind) is tuple else None

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            if meta.get("parse"):
                return meta["parse"](text)
            if item is not None:
                if meta.get("choices") and text.strip() == "all":
                    return tuple(meta["choices"])
                parts = [part.strip() for part in text.split(",")] if text.strip() else []
                if "" in parts:  # '1,,2' or '1,': as the flags with parsers of their own (--sizes) refuse it
                    raise argparse.ArgumentTypeError(f"must be a comma-separated list without empty items; "
                                                     f"got {text!r}")
                return tuple(item(part) for part in parts)
            return kind(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error) if meta.get("parse") else f"invalid value {text!r}") from None

    parse.__name__ = getattr(item or kind, "__name__", "value")  # argparse names the type in its error messages
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls, defaults, title: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the config dataclass `cls` (but those in `skip`). The flags default to
    SUPPRESS, so the namespace holds only what the user gave; `defaults` (an instance) supplies the
    values shown in --help."""
    from .config import field_types, unwrap_optional

    group = parser.add_argument_group(title)
    for name, kind in field_types(cls).items():
        if name in skip:
            continue
        meta = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        options = dict(dest=name, default=argparse.SUPPRESS, help=f"{meta.get('help', '')} (default: {shown})")
        base, optional = unwrap_optional(kind)
        if base is bool:
            group.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, **options)
            continue
        scalar_choices = meta.get("choices") and typing.get_origin(base) is not tuple
        if scalar_choices:
            options["choices"] = meta["choices"]
        metavar = meta.get("metavar") or (None if scalar_choices else name.upper())
        group.add_argument(flag_name(name), type=_parse_value(base, meta, optional), metavar=metavar, **options)


def _given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def config_from_flags(cls, args: argparse.Namespace, command: str, base=None):
    """`base` (default: cls()) with the fields the user set; a field's error names its flag."""
    from .config import ConfigError

    try:
        return dataclasses.replace(base if base is not None else cls(), **_given(args, cls))
    except ConfigError as error:
        raise FlagError(command, error.for_flag(flag_name(error.field))) from None


# --- train -----------------------------------------------------------------------------------


class Progress:
    """The trainer's on_event callback: a tqdm bar with loss, learning rate and throughput, and a
    line per evaluation."""

    def __init__(self, total: int, initial: int, unit: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.unit = unit

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "step":
            self.bar.update(1)
            self.bar.set_postfix({"loss": f"{event['loss']:.3f}", "lr": f"{event['lr']:.2e}",
                                  f"{self.unit}s/s": f"{event['tokens_per_s']:,.0f}"}, refresh=False)
        elif kind == "eval":
            metrics = {k: v for k, v in event.items() if k not in ("kind", "step", "elapsed_s", "cpu_s")}
            self.bar.write(f"step {event['step']:>6}  validation {event['loss']:.4f} nats/{self.unit}  "
                           f"{event['bits']:.4f} bits/{self.unit}" if "bits" in event else
                           f"step {event['step']:>6}  validation "
                           + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _working(what: str):
    """A long phase without a progress bar of its own: say what it is before it starts, show on a
    terminal that it is alive (seconds so far, and how far it got where the loop reports it through
    rnnlab.progress), and say how long it took."""
    from . import progress

    tty, started, stop = sys.stderr.isatty(), time.monotonic(), threading.Event()
    done = [0, 0]

    def tick():
        while not stop.wait(1.0):
            seconds = time.monotonic() - started
            share = f" {100 * done[0] / done[1]:.0f}%" if done[1] else ""
            left = (f", about {seconds * (done[1] - done[0]) / done[0]:.0f} s left" if done[0] and done[1] else "")
            print(f"\r{what}...{share} {seconds:.0f} s{left}   ", end="", file=sys.stderr, flush=True)

    print(f"{what}...", end="" if tty else "\n", file=sys.stderr, flush=True)
    ticker = threading.Thread(target=tick, daemon=True)
    if tty:
        ticker.start()
    try:
        with progress.reporting(lambda d, t: done.__setitem__(slice(None), [d, t])):
            yield
    finally:
        stop.set()
        if tty:
            ticker.join()
        clear = "\x1b[K" if tty else ""  # the rest of the progress line
        print(f"{chr(13) if tty else ''}{what}: {time.monotonic() - started:.0f} s{clear}", file=sys.stderr, flush=True)


def _check_device(name: str) -> None:
    """ValueError naming --device when it names a device this machine lacks (torch would fail deep inside)."""
    import torch

    from .training import resolve_device

    try:
        device = resolve_device(name)
    except ValueError:
        raise ValueError(f"--device must be a torch device name (cpu, cuda, cuda:1, ...) or 'auto'; "
                         f"got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device must be a device this machine has; got {name!r}, but CUDA is not available "
                             f"here (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device must be a device this machine has; got {name!r}, but there are "
                             f"{torch.cuda.device_count()} CUDA devices")


def _check_at_least(args, minimum: int, *names: str) -> None:
    """ValueError naming the flag whose int value is below `minimum` (None passes); a SharedError, as
    every torchrun rank reads the same flags."""
    from .distributed import SharedError

    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise SharedError(f"--{name.replace('_', '-')} must be >= {minimum}; got {value}")


def _check_at_most(args, maximum: int, *names: str) -> None:
    """ValueError naming the flag whose int value is above `maximum` (None passes); a SharedError."""
    from .distributed import SharedError

    for name in names:
        value = getattr(args, name, None)
        if value is not None and value > maximum:
            raise SharedError(f"--{name.replace('_', '-')} must be at most {maximum:,}; got {value:,}")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one (taskset, a
    container's CPU set), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _note_threads(command: str, counts, whose: str = "") -> None:
    """One note on stderr where --threads asks for more threads than the CPUs this process may use:
    rnnlab's C++ loops keep their team to the CPUs, but torch's own matrix products run every thread,
    several to a CPU (3-18x slower than one thread, docs/BENCHMARKS.md). Not an error: a user may
    mean it (bench times exactly that)."""
    from .distributed import is_reporter

    cpus = usable_cpus()
    over = [n for n in counts if n is not None and n > cpus]
    if over and is_reporter():
        asked = ",".join(str(n) for n in counts if n is not None)
        print(f"rnnlab {command}: note: --threads {asked}{whose} asks for more threads than the {cpus} CPU"
              f"{'s' if cpus != 1 else ''} this process may use: rnnlab's C++ loops keep to {cpus}, but torch's "
              f"matrix products run {max(over)} threads on them, often several times slower; --threads {cpus} "
              f"or fewer avoids that", file=sys.stderr)


def _train_setup(args):
    """(task, train_config, run_dir, resumed) from the flags: a new run, or the run to resume with
    the flags it may change."""
    from .checkpoints import RunDir
    from .checks import ArgumentError
    from .config import MAX_LENGTH, differences, from_dict
    from .distributed import SharedError
    from .errors import RunDirError
    from .runners import check_implementations
    from .tasks import DEFAULT_TASK, TASKS, changed_data, open_run
    from .training import RESUMABLE_FIELDS, seed_everything

    task_name = args.task or DEFAULT_TASK
    cls = TASKS[task_name]
    task_flags, train_flags = _given(args, cls.Config), _given(args, type(cls.train_defaults))
    _check_at_least(args, 0, "samples", "sample_length")
    _check_at_most(args, MAX_LENGTH, "sample_length")
    samples, length = getattr(args, "samples", 0), getattr(args, "sample_length", 0)
    if samples * max(length, 1) > MAX_LENGTH:  # a typo's --samples 999999999 sampled for days after the training
        raise SharedError(f"--samples x --sample-length must be at most {MAX_LENGTH:,} tokens in all; got {samples:,} "
                          f"x {length:,}")
    if "device" in train_flags:
        _check_device(train_flags["device"])
    if args.resume is None:
        train_config = dataclasses.replace(cls.train_defaults, **train_flags)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or f"runs/{task_name}-{stamp}")
        RunDir(run_dir).check_new()  # before the data is read: refuse a folder that is not ours at once
        seed_everything(train_config.seed)  # before the model is built: the initial weights follow the seed
        task = cls(cls.Config(**task_flags))
        try:  # a refused --implementation fails here, not after the run is made
            check_implementations(task.model)
        except ValueError as error:  # made of the flags: every torchrun rank raises it alike
            raise SharedError(error.named(_cell_flag) if isinstance(error, ArgumentError) else str(error)) from None
        return task, train_config, run_dir, False
    if args.out is not None:
        raise SharedError("rnnlab train: --out and --resume exclude each other; a resumed run stays in its directory")
    RunDir(args.resume).check_resumable()
    task, stored = open_run(args.resume)
    if changes := changed_data(args.resume):
        raise RunDirError(f"rnnlab train --resume {args.resume}: {'; '.join(changes)}; a resumed run must read the "
                          f"data it was trained on (restore it, or start a new run)")
    if args.task is not None and task.name != args.task:
        raise ValueError(f"rnnlab train: the run in {args.resume} is {with_article(repr(task.name))} run; got task "
                         f"{args.task!r}")
    task_flags = _given(args, type(task.config))  # the run's own task's flags (the parser was built for it)
    changed = differences(task.config, from_dict(type(task.config), {**dataclasses.asdict(task.config), **task_flags},
                                                 "rnnlab train"))
    changed.update({k: v for k, v in differences(stored, dataclasses.replace(stored, **train_flags)).items()
                    if k not in RESUMABLE_FIELDS})
    if changed:
        listed = ", ".join(f"--{k.replace('_', '-')} {new} (the run has {old})" for k, (old, new) in changed.items())
        raise ValueError(f"rnnlab train: a resumed run keeps its configuration; got {listed}. Only "
                         f"{', '.join('--' + f.replace('_', '-') for f in RESUMABLE_FIELDS)} may change")
    resumable = {k: v for k, v in train_flags.items() if k in RESUMABLE_FIELDS}
    return task, dataclasses.replace(stored, **resumable), Path(args.resume), True


def cmd_train(args) -> int:
    """Train a task (default: the character language model on the bundled Shakespeare); under
    torchrun, data-parallel over its processes (rnnlab/distributed.py)."""
    from . import distributed
    from .checkpoints import RunDir

    task, train_config, run_dir, resumed = _train_setup(args)  # every rank alike, before any joins the group
    _check_device(train_config.device)  # a resumed run's own device too
    _note_threads("train", [train_config.threads], "" if hasattr(args, "threads") else " (the run's)")
    group = distributed.join(train_config.device) if distributed.launched() else None
    try:
        if group is not None and group.rank != 0:  # only rank 0 writes the run directory, so only it locks it
            return _train(args, task, train_config, run_dir, resumed, group)
        # for the whole run: a second process gets an error naming this one
        with RunDir(run_dir).locked("rnnlab train"):
            return _train(args, task, train_config, run_dir, resumed, group)
    finally:
        distributed.leave(group)


def _pretrain(task, train_config, run_dir: Path | None) -> dict | None:
    """Run the task's pretraining (Task.pretraining) if it has one, with a progress bar where
    `run_dir` is given (the reporting process); returns what it did (steps, loss, minutes), which
    the run directory keeps as pretraining.json."""
    trainer = task.pretraining(train_config)
    if trainer is None:
        return None
    from .checkpoints import RunDir

    progress = None
    if run_dir is not None:
        RunDir(run_dir).check_new()  # before minutes of pretraining: refuse a folder that is not ours
        print(f"pretraining {task.name}: {trainer.config.steps} steps")
        progress = trainer.on_event = Progress(trainer.config.steps, 0, "token")
    losses: list[float] = []
    chained = trainer.on_event

    def record(event):
        if event["kind"] == "train" or (event["kind"] == "step" and not losses):
            losses[:] = [event["loss"]]  # the last logged mean (the last step's loss before the first log)
        chained(event)

    trainer.on_event = record
    try:
        result = trainer.fit()
    finally:
        if progress is not None:
            progress.close()
    if result.stopped == "interrupted":
        raise KeyboardInterrupt
    done = {"steps": result.step, "stopped": result.stopped, "loss": losses[-1] if losses else None,
            "elapsed_s": round(result.elapsed_s, 2), "cpu_s": round(result.cpu_s, 2)}
    if run_dir is not None:
        loss = "" if done["loss"] is None else f", training loss {done['loss']:.3f} nats/token"
        print(f"pretrained ({result.stopped}) {result.step} steps{loss} in {result.elapsed_s / 60:.1f} min "
              f"({result.cpu_s / 60:.1f} min of process CPU time)")
    return done


def _train(args, task, train_config, run_dir: Path, resumed: bool, group) -> int:
    """Train, and on the reporting process (the only one, or rank 0 of torchrun's) show and report."""
    from . import distributed
    from .checkpoints import RunDir
    from .tasks import run_config, write_artifacts
    from .training import Trainer

    reporter = group is None or group.rank == 0
    pretrained = None
    if not resumed:  # every rank alike (the same seed, the same weights); only the reporter shows it
        pretrained = _pretrain(task, train_config, run_dir if reporter else None)
    if reporter and not resumed:
        RunDir(run_dir).start_new()
        if pretrained is not None:
            RunDir(run_dir).write_json("pretraining.json", pretrained)
    parts = (task.model, task.batches(train_config.seed), task.loss, train_config)
    options = dict(evaluate=task.evaluate, run_dir=run_dir, run_config=run_config(task), solved=task.solved,
                   parameter_groups=task.parameter_groups())
    trainer = Trainer(*parts, **options) if group is None else distributed.DistributedTrainer(group, *parts, **options)
    if resumed:
        trainer.resume()
    elif reporter:
        write_artifacts(task, run_dir)
    if not reporter:
        return 130 if trainer.fit().stopped == "interrupted" else 0
    processes = "" if group is None else \
        f" on {group.world_size} process{'es' if group.world_size != 1 else ''} ({group.backend})"
    print(f"{'resuming' if resumed else 'training'} {task.name}{processes}: {task.describe()}; run directory {run_dir}")
    if resumed and trainer.step >= train_config.steps:  # `--steps 2` read as "2 more": say that nothing trains
        print(f"note: the run is at step {trainer.step:,}, not below --steps {train_config.steps:,}: nothing is "
              f"trained (--steps counts from the run's start; give more than {trainer.step:,} to train on)",
              file=sys.stderr)
    progress = Progress(train_config.steps, trainer.step, task.unit)
    trainer.on_event = progress
    try:
        result = trainer.fit()
    finally:
        progress.close()
    minutes = result.elapsed_s / 60
    print(f"stopped ({result.stopped}) at step {result.step} after {minutes:.1f} min in all "
          f"({result.cpu_s / 60:.1f} min of process CPU time), {result.tokens / max(result.elapsed_s, 1e-9):,.0f} "
          f"{task.unit}s/s overall")
    if result.stopped == "diverged":
        print(f"diverged: the training loss was not finite (nan or inf) at step {result.step + 1}, whose update was "
              f"not made: the weights are the last finite update's. Train anew with a lower --lr or a --clip-norm")
    if result.stopped == "interrupted":
        again = "rnnlab train" if group is None else f"torchrun {distributed.launch_flags(group)} -m rnnlab train"
        print(f"interrupted: checkpoint saved; continue with: {again} --resume {run_dir}")
        return 130
    if train_config.threads is not None:  # the report's evaluations too, not only fit (which restores the default)
        import torch

        torch.set_num_threads(train_config.threads)
    from .tasks import load_weights

    file = load_weights(task, run_dir, "best", train_config.device)
    print(f"weights: {file}")
    with _working("final evaluation of the best weights on all held-out data"):
        lines = task.report(task.model, run_dir)
    for line in lines:
        print(line)
    if getattr(args, "samples", 0):  # only a TextGenerator's parser has the sampling flags
        _note_unknown(task, args.prompt)
    for i in range(getattr(args, "samples", 0)):
        text = task.sample_text(task.model, args.prompt, args.sample_length, temperature=0.8, seed=i)
        print(f"\n--- sample {i + 1} (temperature 0.8) ---\n{args.prompt}{text}")
    return 0


# --- seeds -----------------------------------------------------------------------------------


def cmd_seeds(args) -> int:
    """Train one configuration over several seeds; print per-seed metrics, their mean and std."""
    from . import seeds
    from .config import MAX_SEED
    from .tasks import TASKS

    _check_at_least(args, 1, "count")
    _check_at_least(args, 0, "first")
    if args.first + args.count - 1 > MAX_SEED:  # torch reads a seed's low 32 bits: a larger one repeats a smaller
        raise ValueError(f"--first and --count must name seeds up to {MAX_SEED}; got seeds {args.first} to "
                         f"{args.first + args.count - 1}")
    cls = TASKS[args.task]
    task_config = config_from_flags(cls.Config, args, "seeds")
    train_config = config_from_flags(type(cls.train_defaults), args, "seeds", cls.train_defaults)
    _check_device(train_config.device)
    _note_threads("seeds", [train_config.threads])
    out = Path(args.out or f"runs/seeds-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    chosen = range(args.first, args.first + args.count)
    print(f"rnnlab seeds {args.task}: seeds {chosen.start} to {chosen.stop - 1}, one after another, in {out}/seed-S/")

    def watch(seed):
        def on_event(event):
            if event["kind"] == "eval":
                shown = "  ".join(f"{k} {v:.4f}" for k, v in event.items()
                                  if k not in ("kind", "step", "elapsed_s", "cpu_s"))
                print(f"  seed {seed} step {event['step']:>6}  validation {shown}", flush=True)
        return on_event

    rows = seeds.run_seeds(args.task, task_config, train_config, out, chosen,
                           progress=lambda line: print(line, flush=True), on_event=watch)
    if not rows:
        print(f"interrupted before a seed finished; continue with the same command (--out {out})")
        return 130
    names = list(rows[0].metrics)
    pretrained = any(row.pretrain_minutes for row in rows)
    minutes = "pretraining + training wall (CPU) minutes" if pretrained else "wall (CPU) minutes"
    print(f"\n| seed | {' | '.join(names)} | stopped at step | {minutes} |")
    print("| ---: | " + "---: | " * len(names) + "---: | --- |")
    for row in rows:
        spent = (f"{row.pretrain_minutes:.1f} + {row.minutes:.1f} ({row.pretrain_cpu_minutes:.1f} + "
                 f"{row.cpu_minutes:.1f})" if pretrained else f"{row.minutes:.1f} ({row.cpu_minutes:.1f})")
        print(f"| {row.seed} | " + " | ".join(f"{row.metrics[n]:.4g}" for n in names)
              + f" | {row.step:,} ({row.stopped}) | {spent} |")
    summary = seeds.summarize(rows)
    if len(rows) == 1:  # one seed: its value, no spread (a "+- 0" would read as a measured one)
        print("| **n = 1 (no spread)** | " + " | ".join(f"**{m:.4g}**" for m, _ in summary.values()) + " | | |")
    else:
        print("| **mean +- std** | " + " | ".join(f"**{m:.4g}** +- {s:.2g}" for m, s in summary.values()) + " | | |")
    if len(rows) < len(chosen):
        print(f"interrupted after {len(rows)} of {len(chosen)} seeds; continue with the same command (--out {out})")
        return 130
    return 0


# --- bench, complexity, gradients -------------------------------------------------------


def json_folder(path: str | Path) -> Path:
    """Create the folder of a JSON report's `path` (a command calls this before its run too, so that a
    path it cannot write fails at once, not after minutes of measuring)."""
    import errno

    from .errors import WriteError

    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"cannot write {path}: it is a folder; name a file in it")
    if path.exists() and not _is_report(path):  # a run's config.json, a user's file: never replaced
        raise ValueError(f"cannot write {path}: it exists and is not a JSON report of rnnlab bench, complexity or "
                         f"gradients; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        why = f"{path.parent} is not a folder" if isinstance(error, FileExistsError) else error.strerror or error
        raise WriteError(error.errno, f"cannot write {path}: {why}") from error
    if not os.access(path.parent, os.W_OK):  # a read-only folder that exists: said now, not after the measuring
        raise WriteError(errno.EACCES, f"cannot write {path}: {path.parent} is read-only (permission denied)")
    return path


def check_figures(*paths: Path) -> None:
    """Refuse, before a command measures or trains, the figures it would draw over files that are not
    figures rnnlab drew (a user's picture in the --out folder); rnnlab's own are replaced."""
    from .plots import drawn_by_rnnlab

    for path in paths:
        if path.exists() and not drawn_by_rnnlab(path):
            raise ValueError(f"cannot write {path}: it exists and is not a figure rnnlab drew; choose another --out")


def _is_report(path: Path) -> bool:
    """Whether `path` holds a JSON report these commands write (which a new run may replace)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and bool({"machine", "rows", "regimes", "cells"} & set(data))


def write_json_report(path: str | Path, data) -> Path:
    """Write a command's JSON report (`--json`, a run folder's complexity.json): its folder created,
    written whole or not at all (a temporary file renamed into place, as run directories are)."""
    import json

    from .checkpoints import write_atomic

    path = json_folder(path)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    return path


def cmd_bench(args) -> int:
    """Time rnnlab's implementations against torch.nn side by side; print a table, optionally JSON."""
    from . import bench

    base = dataclasses.replace(bench.BenchConfig(), **bench.QUICK) if args.quick else None
    config = config_from_flags(bench.BenchConfig, args, "bench", base)
    if args.json:
        json_folder(args.json)
    _note_threads("bench", config.threads)
    if args.generation is not None:
        return _bench_generation(args, config)
    result = bench.run_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    _print_bench(result.describe(), result.table(), result.untimed())
    paired = result.thread_table()
    if paired is not None:
        first = config.threads[0]
        print()
        print(f"the ratio to torch.nn.LSTM at each thread count over that at {first}, paired by repetition "
              f"(each repetition times every count in turn): median, min-max, and the repetitions where it was "
              f"higher than at {first} thread(s)")
        print()
        print(tables.markdown(paired))
    if args.json:
        print(f"wrote {write_json_report(args.json, result.to_dict())}")
    return 0


def _print_bench(header: list[str], table: tables.Table, footer: list[str] | tuple[str, ...] = ()) -> None:
    """A bench's lines above its table, the table (Markdown), and the lines below it."""
    print("\n".join(header))
    print()
    print(tables.markdown(table))
    if footer:
        print()
        print("\n".join(footer))


GENERATION_FIELDS = ("reps", "threads", "seed")  # the BenchConfig fields `bench --generation` reads


def _bench_generation(args, config) -> int:
    """`rnnlab bench --generation RUN_DIR`: sampling speed of a trained language run at batch 1."""
    import torch

    from . import bench_generation
    from .config import MAX_LENGTH
    from .tasks import load_weights, open_run
    from .tasks.language import LanguageTask, sample

    _check_at_least(args, 1, "generation_length", "generation_top_k")
    _check_at_most(args, MAX_LENGTH, "generation_length")
    ignored = [flag_name(name) for name in _given(args, type(config)) if name not in GENERATION_FIELDS]
    if ignored:  # the grid's flags: sampling times one model on the CPU, so they were silently ignored
        raise ValueError(f"rnnlab bench --generation: {', '.join(ignored)} set the grid of implementations, which "
                         f"sampling does not read (it takes --reps, --threads, --seed and the --generation-* flags)")
    if len(config.threads) != 1:
        counts = ",".join(map(str, config.threads))
        raise ValueError(f"rnnlab bench --generation: --threads must be one count; got {counts}")
    task, _ = open_run(args.generation)
    if not isinstance(task, LanguageTask):
        raise ValueError(f"rnnlab bench --generation: RUN_DIR must be a language run; got "
                         f"{with_article(repr(task.name))} run")
    load_weights(task, args.generation, "best", "cpu")
    prompt = torch.as_tensor(task.vocabulary.encode(["\n"]))  # rnnlab sample's default prompt
    length, top_k, temperature = args.generation_length, args.generation_top_k, 0.8  # rnnlab sample's temperature

    def sampler(implementation, generator):
        return sample(task.model, prompt, length, temperature, top_k, generator, implementation=implementation)

    result = bench_generation.run_generation_bench(
        task.model, sampler, prompt, length, temperature, top_k, reps=config.reps, threads=config.threads[0],
        seed=config.seed, progress=lambda line: print(line, file=sys.stderr, flush=True))
    _print_bench(result.describe(), result.table())
    if args.json:
        print(f"wrote {write_json_report(args.json, result.to_dict())}")
    return 0


def cmd_complexity(args) -> int:
    """Measure the lecture's complexity table; print it, write JSON and log-log plots."""
    from datetime import datetime

    from . import complexity

    base = complexity.ComplexityConfig(**complexity.QUICK) if args.quick else None
    config = config_from_flags(complexity.ComplexityConfig, args, "complexity", base)
    _note_threads("complexity", [config.threads])
    out = Path(args.out) if args.out else Path("runs") / f"complexity-{datetime.now():%Y%m%d-%H%M%S}"
    for path in (out / "complexity.json", *([args.json] if args.json else [])):
        json_folder(path)
    check_figures(*(out / f"{quantity}.png" for quantity in complexity.QUANTITIES))
    print(f"rnnlab complexity: {config.cell}, H={config.hidden}, I={config.input}, B={config.batch}, "
          f"k={config.window}, device {config.device}")
    result = complexity.measure(config, progress=lambda line: print("  measuring", line, flush=True))
    print()
    print(tables.markdown(result.table()))
    print(f"\nExponents: log-log least-squares slopes over T = {config.T[0]}..{config.T[-1]}; "
          f"O(1) and O(log T) -> 0, O(sqrt T) -> 0.5, O(T) -> 1. Serial steps count ops on the longest chain "
          f"({result.ops_per_step} per {config.cell} step). {complexity.FLOPS_CONVENTION}")
    data = result.to_dict()
    write_json_report(out / "complexity.json", data)
    if args.json:
        write_json_report(args.json, data)
    plots = complexity.plot_results(result, out)
    print(f"\nwrote {out / 'complexity.json'}" + (f", {args.json}" if args.json else "")
          + f" and {len(plots)} plots in {out}/")
    return 0


def cmd_gradients(args) -> int:
    """Norms of dLoss/ds^t for each ladder cell on the adding problem, at init and after training."""
    from datetime import datetime

    from . import gradient_flow as gf

    config = config_from_flags(gf.GradientFlowConfig, args, "gradients")
    _note_threads("gradients", [config.threads])
    out = Path(args.out) if args.out else Path("runs") / f"gradients-{datetime.now():%Y%m%d-%H%M%S}"
    json_folder(out / "gradients.json")
    check_figures(out / "gradients.png")
    result = gf.measure_gradient_flow(config, progress=lambda line: print("  ", line, flush=True))
    print(f"\n||dLoss/ds^t|| on the adding problem (T={config.T}, H={config.hidden}, depth {config.depth}, "
          f"init {config.init}; loss at t=T; "
          f"baseline MSE {gf.ADDING_BASELINE_MSE:.3f})\n")
    print(tables.markdown(result.table()))
    write_json_report(out / "gradients.json", result.to_dict())
    path = gf.plot_gradient_flow(result.cells, out / "gradients.png", config.T)
    print(f"\nwrote {out / 'gradients.json'} and {path}")
    return 0


# --- tasks and ladder -------------------------------------------------------------------------


def cmd_tasks(args) -> int:
    """List the registered tasks, one line each."""
    from .tasks import DEFAULT_TASK, TASKS, describe_task

    width = max(len(name) for name in TASKS)
    for name, cls in TASKS.items():
        print(f"{name:<{width}}  {describe_task(cls)}{' (default)' if name == DEFAULT_TASK else ''}")
    return 0


def cmd_ladder(args) -> int:
    """Train every ladder cell with equal parameter budgets on one memory task; a table and a plot."""
    from datetime import datetime

    from . import ladder

    settings = config_from_flags(ladder.LadderConfig, args, "ladder")
    _note_threads("ladder", [settings.threads])
    config, train = settings.overrides(settings.TASK_FIELDS), settings.overrides(settings.TRAIN_FIELDS)
    cells = settings.cells
    out = Path(args.out) if args.out else Path("runs") / f"ladder-{args.task}-{datetime.now():%Y%m%d-%H%M%S}"
    check_figures(out / "ladder.png")
    try:
        result = ladder.run_ladder(args.task, config, train, out, cells,
                                   progress=lambda line: print("  training", line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: the cell's checkpoint is saved; continue with the same command (--out {out})")
        return 130
    rows, T = result.rows, config.get("T")
    print(f"\nrnnlab ladder {args.task}: equal parameter budgets (the LSTM's at its hidden size); "
          f"loss on held-out sequences; steps: those trained (fewer where the time budget stopped a cell)\n")
    print(tables.markdown(result.table()))
    low, high = min(row.params for row in rows), max(row.params for row in rows)
    title = f"{args.task}{f', T={T}' if T else ''}: equal parameter budgets ({low:,} to {high:,} parameters)"
    path = ladder.plot_ladder(rows, out / "ladder.png", title)
    print(f"\nwrote {path}; each cell's run in {out}/<cell>/")
    return 0


# --- sample and eval -------------------------------------------------------------------------


def _open_trained(args, capability=None, refusal: str = "", check=None):
    """(task, weights file) of the run in args.run_dir; with `capability`, a run whose task lacks it
    is refused before its weights are loaded, as one that `check(task)` refuses (a ValueError)."""
    import torch

    from .config import MAX_THREADS
    from .tasks import commands_for, load_weights, open_run

    _check_at_least(args, 1, "threads")
    if args.threads is not None and args.threads > MAX_THREADS:  # OpenMP fails to make so many: a segfault
        raise ValueError(f"--threads must be at most {MAX_THREADS}; got {args.threads}")
    _check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    task, _ = open_run(args.run_dir)
    if capability is not None and not isinstance(task, capability):
        raise ValueError(f"{refusal.format(task=with_article(repr(task.name)))}; what serves it: "
                         f"{commands_for(type(task))}")
    if check is not None:
        check(task)
    _note_threads(args.command, [args.threads])  # once the run serves: not before an error about it
    file = load_weights(task, args.run_dir, args.weights, args.device)
    return task, file


def _note_unknown(task, prompt: str) -> None:
    """A note naming the tokens of the prompt that the run's vocabulary lacks (read as <unk>)."""
    _say_unknown("the prompt's", task.unknown_in(prompt))


def _say_unknown(whose: str, unknown: list[str], vocabulary: str = "vocabulary") -> None:
    """The one note for input tokens a run's vocabulary lacks (the first 20 of them), on stderr."""
    if unknown:
        shown = unknown[:20] + ([f"... {len(unknown) - 20} more"] if len(unknown) > 20 else [])
        print(f"note: {whose} {shown} are not in the {vocabulary}; the model reads them as <unk>", file=sys.stderr)


def cmd_sample(args) -> int:
    """Generate text from a trained run, the model's own outputs fed back after the prompt."""
    from .config import MAX_LENGTH, MAX_SEED
    from .tasks import TextGenerator

    _check_at_least(args, 0, "length", "seed")
    _check_at_most(args, MAX_LENGTH, "length")
    _check_at_least(args, 1, "top_k")
    if args.seed > MAX_SEED:  # torch reads a seed's low 32 bits: a larger one repeats a smaller
        raise ValueError(f"--seed must be at most {MAX_SEED}; got {args.seed}")
    if not 0 <= args.temperature < math.inf:  # inf: every probability NaN
        raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy); got {args.temperature}")
    task, _ = _open_trained(args, TextGenerator, "rnnlab sample: {task} run does not generate text")
    _note_unknown(task, args.prompt)
    if args.engine == "onnxruntime":
        text = _sample_onnxruntime(task, args)
    else:
        text = task.sample_text(task.model, args.prompt, args.length, args.temperature, args.top_k, args.seed)
    print(args.prompt + text)
    return 0


# --- export (ONNX) and sampling on the exported step ----------------------------------------------


def _sample_onnxruntime(task, args) -> str:
    """Sample on the step graph of the loaded weights, exported (and checked) into a temporary folder:
    always the weights --weights names, never a stale file. The task (a TextGenerator) gives the ids
    read first and turns the sampled ones into text; onnxruntime runs --threads threads (torch's
    count without it, as the PyTorch engine does)."""
    import tempfile

    import torch

    from . import export

    try:
        graph = export.StepGraph(task.model.eval())
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "step.onnx"
            export.export_model(graph, path)
            export.verify(graph, path)
            # the session holds the model; the file may go
            stepper = export.OnnxStep(path, graph, threads=args.threads or torch.get_num_threads())
    except export.MissingExtra as error:
        raise ValueError(f"rnnlab sample --engine onnxruntime: {error}") from None
    ids = export.sample_ids(stepper, task.prompt_ids(args.prompt), args.length, args.temperature, args.top_k,
                            torch.Generator().manual_seed(args.seed))
    return task.continuation(ids)


def cmd_export(args) -> int:
    """Export a trained run as ONNX (sequence and step graphs), verified in onnxruntime."""
    from . import export

    exported_by = export.exported_by_rnnlab

    def exportable(task) -> None:  # the model's kind decides, not its weights: refused before they load
        try:
            export.SequenceGraph(task.model)
        except ValueError as error:
            raise ValueError(f"rnnlab export: {with_article(repr(task.name))} run cannot be exported: "
                             f"{str(error).removeprefix('export: ')}") from None

    if args.out:  # before the run is read (the default, RUN_DIR/model.onnx, is always one)
        if Path(args.out).suffix != ".onnx":
            raise ValueError(f"rnnlab export: --out must name a .onnx file; got {args.out!r}")
        if not Path(args.out).parent.is_dir():
            raise ValueError(f"rnnlab export: --out's folder {str(Path(args.out).parent)!r} does not exist")
        for path in (Path(args.out), export.step_path(args.out)):  # a user's model is never replaced
            try:
                ours = not path.exists() or exported_by(path)
            except export.MissingExtra as error:
                raise ValueError(f"rnnlab export: {error}") from None
            if not ours:
                raise ValueError(f"rnnlab export: {str(path)!r} exists and is not a graph rnnlab exported; choose "
                                 f"another --out")
    task, file = _open_trained(args, check=exportable)  # on the CPU: the exported graph is device-neutral
    out = Path(args.out) if args.out else Path(args.run_dir) / "model.onnx"
    model = task.model.eval()
    print(f"weights: {file}")
    try:
        graphs = [(export.SequenceGraph(model), out)]
        try:
            graphs.append((export.StepGraph(model), export.step_path(out)))
        except ValueError as error:  # a model without a one-step form still exports its sequence graph
            print(f"no step graph: {error}", file=sys.stderr)
        for graph, path in graphs:
            export.export_model(graph, path)
            worst = export.verify(graph, path)
            checked = ("batch sizes " + ", ".join(map(str, export.CHECK_BATCHES)) +
                       ("" if isinstance(graph, export.StepGraph) else
                        ", lengths " + ", ".join(map(str, export.CHECK_LENGTHS))))
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; inputs {', '.join(graph.input_names())}); "
                  f"onnxruntime matches PyTorch within {worst:.1e} ({checked})")
    except export.MissingExtra as error:
        raise ValueError(f"rnnlab export: {error}") from None
    return 0


def cmd_eval(args) -> int:
    """The task's metrics of a trained run (its best weights by default), next to its baselines."""
    from .tasks import changed_data

    task, file = _open_trained(args)
    print(f"weights: {file}")
    for change in changed_data(args.run_dir):
        print(f"rnnlab: warning: {change}; the metrics below are on the data as it is now", file=sys.stderr)
    with _working("evaluating on all held-out data"):
        lines = task.report(task.model, args.run_dir)
    for line in lines:
        print(line)
    return 0


# --- explore -----------------------------------------------------------------------------------


def cmd_explore(args) -> int:
    """Write one offline HTML page that shows what the run's model holds in its state and gates."""
    from .config import MAX_LENGTH
    from .explore import build_page
    from .explore.page import MARKER

    _check_at_most(args, MAX_LENGTH, "length")  # below: build_page refuses a length below 1
    out = Path(args.out) if args.out else Path(args.run_dir) / "explore.html"
    if out.is_dir():  # it read the folder as the page: "Is a directory", naming no flag
        raise ValueError(f"rnnlab explore: --out {str(out)!r} is a folder; name the page's .html file")
    if out.exists() and not out.read_text(encoding="utf-8", errors="replace").startswith(MARKER):
        raise ValueError(f"rnnlab explore: --out {out} exists and is not an explore page; choose another --out")
    if args.out:  # before the page is built (it said "Not a directory" after): the first folder that exists
        existing = next(p for p in out.absolute().parents if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            why = "is not a folder" if not existing.is_dir() else "cannot be written"
            raise ValueError(f"rnnlab explore: cannot write --out {out}: {existing} {why}")
    page = build_page(args.run_dir, text_file=args.text, prompt=args.prompt, length=args.length, weights=args.weights)
    passage = "the prompt's" if args.prompt is not None else f"{args.text}'s" if args.text else "the passage's"
    _say_unknown(passage, page.unknown)  # as rnnlab sample says of its prompt
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page.html, encoding="utf-8")
    size = out.stat().st_size / 1e6
    if page.loss_float16 is None:
        how = "the views computed here; the model is not in the page"
    else:
        live = page.live_model
        opening = "the model runs in the page (float16 weights: " if live else "the model is not in the page ("
        how = (opening + f"{page.loss_float16:.4f} nats/token on the passage, {page.loss_float32:.4f} with the run's "
                         f"float32 weights)")
    print(f"wrote {out} ({size:.1f} MB): {page.passage_tokens:,} steps; {how}")
    print(f"open it in a browser: {out.resolve().as_uri()}")
    return 0


# --- caption ----------------------------------------------------------------------------------


def cmd_caption(args) -> int:
    """Caption the user's images with a trained caption run, or draw a grid of held-out strips with theirs."""
    from .data.images import read_image
    from .plots import drawn_by_rnnlab
    from .tasks import Captioner

    if args.images and (args.out is not None or args.count is not None):  # they were silently ignored
        flags = [f for f, v in (("--out", args.out), ("--count", args.count)) if v is not None]
        raise ValueError(f"rnnlab caption: {' and '.join(flags)} set{'' if len(flags) > 1 else 's'} the grid of "
                         f"held-out strips, drawn only without IMAGE; with IMAGE the captions are printed; got "
                         f"{' and '.join(flags)} with {len(args.images)} IMAGE")
    count = GRID_STRIPS if args.count is None else args.count
    if count < 1:
        raise ValueError(f"rnnlab caption: --count must be >= 1; got {count}")
    out = Path(args.out) if args.out else Path(args.run_dir) / "captions.png"
    if args.out and not args.images:  # before the run is read (the default is always a .png in the run)
        if out.suffix.lower() != ".png" or not out.parent.is_dir():
            raise ValueError(f"rnnlab caption: --out must be a .png file in an existing folder; got {str(out)!r}")
        if out.exists() and not drawn_by_rnnlab(out):  # a user's picture is never replaced
            raise ValueError(f"rnnlab caption: --out {str(out)!r} exists and is not a figure rnnlab drew; "
                             f"choose another --out")
    task, file = _open_trained(args, Captioner, "rnnlab caption: {task} run does not caption images")
    if not args.images:
        print(f"weights: {file}")
        print(f"wrote {task.plot_grid(task.model, out, count)}")
        return 0
    for path in args.images:
        image = read_image(path)
        try:
            image = task.check_images(image[None])
        except ValueError:
            raise ValueError(f"rnnlab caption: {path} is {image.shape[0]}x{image.shape[1]} pixels (rows x columns); "
                             f"this run reads strips {task.rows} pixels high and 1 to {task.width} wide (digits "
                             f"{task.rows}x{task.columns} side by side)") from None
        print(f"{path}: {task.caption(task.model, image)[0]}")
    return 0


GRID_STRIPS = 24  # caption's grid without --count


def add_caption_command(sub) -> argparse.ArgumentParser:
    caption = sub.add_parser("caption", help="caption images with a trained caption run (no image: a grid of "
                                             "held-out strips with their captions)")
    caption.add_argument("run_dir", metavar="RUN_DIR")
    caption.add_argument("images", metavar="IMAGE", nargs="*",
                         help="picture files (PNG, ...) of digits side by side, 8 pixels high, ink dark or light")
    caption.add_argument("--out", metavar="PNG", help="where the grid goes (default: RUN_DIR/captions.png)")
    caption.add_argument("--count", type=int, default=None,
                         help=f"held-out strips in the grid (default: {GRID_STRIPS})")
    caption.set_defaults(func=cmd_caption)
    return caption
# --- translate (the translate task's own command) -------------------------------------------


def cmd_translate(args) -> int:
    """Translate sentences with a trained translate run: the one given, or each line of stdin."""
    from .config import MAX_BEAM
    from .tasks import Translator

    if not 1 <= args.beam <= MAX_BEAM:
        raise ValueError(f"rnnlab translate: --beam must be in [1, {MAX_BEAM}]; got {args.beam:,}")
    task, _ = _open_trained(args, Translator, "rnnlab translate: {task} run does not translate")
    if args.sentence is None and sys.stdin.isatty():
        print("rnnlab translate: reading sentences from the terminal, one a line; end with Ctrl-D", file=sys.stderr)
    sentences = [args.sentence] if args.sentence is not None else [line.rstrip("\n") for line in sys.stdin]
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("rnnlab translate: sentence must be given, or lines on stdin; got nothing to translate")
    unknown = list(dict.fromkeys(word for sentence in sentences for word in task.unknown_in(sentence)))
    _say_unknown("the words", unknown, "source vocabulary")  # as rnnlab sample says of its prompt
    for translation in task.translate(task.model, sentences, beam=args.beam):
        print(translation)
    return 0


def add_translate_parser(sub) -> argparse.ArgumentParser:
    from .config import MAX_BEAM

    translate = sub.add_parser("translate", help="translate sentences with a trained translate run (beam search)")
    translate.add_argument("run_dir", metavar="RUN_DIR")
    translate.add_argument("sentence", nargs="?", help="the sentence (default: each line of stdin)")
    translate.add_argument("--beam", type=int, default=5,
                           help=f"beam width, at most {MAX_BEAM}; 1: greedy (default: 5)")
    translate.set_defaults(func=cmd_translate)
    return translate


# --- the parser ------------------------------------------------------------------------------


def _add_task_flags(parser: argparse.ArgumentParser, task, skip_train: tuple[str, ...] = ()) -> None:
    """The flags of a task's config (its cell's options in a group of their own) and of its training."""
    from .tasks.cell_options import CellOptions
    from .training import TrainConfig

    cell_fields = tuple(f.name for f in dataclasses.fields(CellOptions)) if issubclass(task.Config, CellOptions) else ()
    add_config_flags(parser, task.Config, task.Config(), f"task {task.name!r}", skip=cell_fields)
    if cell_fields:
        add_config_flags(parser, CellOptions, task.Config(), "the cell's options (the lecture's 'official' additions)")
    add_config_flags(parser, TrainConfig, task.train_defaults, "training", skip=skip_train)


def build_parser(task_name: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; `train`'s flags are those of `task_name` (default: the default task)."""
    from .config import MAX_LENGTH
    from .tasks import DEFAULT_TASK, TASKS, TextGenerator

    task_name = task_name or DEFAULT_TASK
    parser = Parser(prog="rnnlab", description="Recurrent neural networks, from the lecture to fast kernels.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    task = TASKS[task_name]
    train = sub.add_parser("train", help=f"train a task (default: {DEFAULT_TASK}, a character model of Shakespeare)",
                           description=f"Train a task; flags shown are those of task {task_name!r}.")
    train.add_argument("task", nargs="?", choices=sorted(TASKS), help=f"what to train (default: {DEFAULT_TASK}; "
                       f"with --resume: the run's task)")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<task>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR (same result as never stopping)")
    if issubclass(task, TextGenerator):
        train.add_argument("--samples", type=int, default=1, help=f"samples to print at the end, {MAX_LENGTH:,} tokens "
                                                                  f"at most in all (default: 1)")
        train.add_argument("--sample-length", type=int, default=500,
                           help=f"tokens per sample, at most {MAX_LENGTH:,} (default: 500)")
        train.add_argument("--prompt", default="\n", help="what the samples start from (default: a new line)")
    _add_task_flags(train, task)
    train.set_defaults(func=cmd_train)
    seeds = sub.add_parser("seeds", help="train one configuration of a task over several seeds; print each seed's "
                                         "metrics and their mean and standard deviation",
                           description="Train a task's configuration (its defaults and the flags given) once per "
                                       "seed, each run in OUT/seed-S/, and print the task's final metrics per seed "
                                       "with their mean and standard deviation. Run again with the same flags to "
                                       "continue: finished seeds are read, interrupted ones resumed.")
    seeds.add_argument("task", choices=sorted(TASKS), help="what to train")
    seeds.add_argument("--count", type=int, default=5, help="how many seeds (default: 5)")
    seeds.add_argument("--first", type=int, default=0, help="the first seed; seeds first .. first+count-1 "
                                                              "(default: 0)")
    seeds.add_argument("--out", metavar="DIR", help="folder of the seeds' runs (default: runs/seeds-<task>-<time>)")
    _add_task_flags(seeds, task, skip_train=("seed",))
    seeds.set_defaults(func=cmd_seeds)
    from . import bench as bench_module
    from . import complexity as complexity_module
    from . import gradient_flow
    from . import ladder as ladder_module

    bench = sub.add_parser("bench",
                           help="time every implementation side by side with torch.nn (ratios to torch.nn.LSTM)")
    add_config_flags(bench, bench_module.BenchConfig, bench_module.BenchConfig(), "what to time")
    bench.add_argument("--quick", action="store_true", help="a small grid that finishes in under a minute")
    bench.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    bench.add_argument("--generation", metavar="RUN_DIR", help="instead: time sampling from a trained language run "
                       "(rnnlab's compiled and Python loops, a torch.nn.LSTM loop, the memory-bandwidth floor)")
    bench.add_argument("--generation-length", type=int, default=500,
                       help=f"tokens per timed sample, at most {MAX_LENGTH:,} (default: 500)")
    bench.add_argument("--generation-top-k", type=int, default=None, help="sample from the k most likely tokens only")
    bench.set_defaults(func=cmd_bench)
    comp = sub.add_parser("complexity", help="measure memory, FLOPs and serial steps against sequence length T")
    add_config_flags(comp, complexity_module.ComplexityConfig, complexity_module.ComplexityConfig(), "what to measure")
    comp.add_argument("--quick", action="store_true", help="a small sweep, under a minute")
    comp.add_argument("--json", help="also write the results here")
    comp.add_argument("--out", help="directory for JSON and plots (default runs/complexity-<time>)")
    comp.set_defaults(func=cmd_complexity)
    grad = sub.add_parser("gradients", help="gradient flow: ||dLoss/ds^t|| for each ladder cell on the adding problem")
    add_config_flags(grad, gradient_flow.GradientFlowConfig, gradient_flow.GradientFlowConfig(), "what to measure")
    grad.add_argument("--out", help="directory for JSON and the plot (default runs/gradients-<time>)")
    grad.set_defaults(func=cmd_gradients)

    tasks = sub.add_parser("tasks", help="list the tasks `rnnlab train` can train")
    tasks.set_defaults(func=cmd_tasks)
    lad = sub.add_parser("ladder", help="train every ladder cell with equal parameter budgets on a memory task",
                         description="Train vanilla, residual, input, forget, lstm and gru with equal parameter "
                                     "budgets on one task; print one table and save one plot of learning curves.")
    lad.add_argument("task", metavar="TASK", help="adding or copy")
    add_config_flags(lad, ladder_module.LadderConfig, ladder_module.LadderConfig(), "what to train")
    lad.add_argument("--out", help="directory of the runs and the plot (default runs/ladder-TASK-<time>); "
                                   "cells already there are resumed (one made with other flags is refused)")
    lad.set_defaults(func=cmd_ladder)

    sample = sub.add_parser("sample", help="generate text from a trained run")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--prompt", default="\n", help="text to start from (default: a new line)")
    sample.add_argument("--length", type=int, default=500, help=f"tokens to generate, at most {MAX_LENGTH:,} "
                                                                 f"(default: 500)")
    sample.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0: greedy (default: 0.8)")
    sample.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    sample.add_argument("--engine", choices=("torch", "onnxruntime"), default="torch",
                        help="run the model in PyTorch, or export its step graph and run that in onnxruntime "
                             "(default: torch)")
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("eval", help="the task's metrics of a trained run next to its baselines (language: nats "
                                           "and bits per token)")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.set_defaults(func=cmd_eval)

    explore = sub.add_parser("explore", help="write one offline HTML page: the state and gates of a trained model "
                                              "over held-out text (a language model also runs live in the page)",
                             description="Run a trained model over held-out data and write one self-contained "
                                         "HTML page (no network): per-unit activations over the text, state heatmap, "
                                         "gate traces and saturation, top-5 next characters, brushing, the cell's "
                                         "equations and the run's config; a character-level language model also runs "
                                         "live in the page (type, generate). Other tasks: a few held-out examples.")
    explore.add_argument("run_dir", metavar="RUN_DIR")
    explore.add_argument("--text", metavar="FILE",
                         help="passage from this UTF-8 file (default: the run's held-out text)")
    explore.add_argument("--prompt", help="the passage itself, as a string")
    explore.add_argument("--length", type=int, default=None,
                         help=f"tokens of the passage at most (default: 2000); for other tasks, how many held-out "
                              f"examples (default: 6); at most {MAX_LENGTH:,}")
    explore.add_argument("--out", metavar="HTML", help="the page to write (default: RUN_DIR/explore.html)")
    explore.add_argument("--weights", choices=("best", "last"), default="best",
                         help="the best evaluation's weights or the last checkpoint's (default: best)")
    explore.set_defaults(func=cmd_explore)

    exp = sub.add_parser("export",
                         help="export a trained run as ONNX (sequence and one-step graphs), checked in onnxruntime",
                         description="Write RUN_DIR's model as an ONNX graph with dynamic batch and length (--out) and "
                                     "its one-step graph beside it (NAME-step.onnx), the state as explicit inputs and "
                                     "outputs; each is compared with PyTorch in onnxruntime. Needs "
                                     "pip install 'rnnlab[export]'.")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default: onnx)")
    exp.add_argument("--out", metavar="PATH", help="the sequence graph's file (default: RUN_DIR/model.onnx)")
    exp.add_argument("--weights", choices=("best", "last"), default="best",
                     help="the best evaluation's weights or the last checkpoint's (default: best)")
    exp.set_defaults(func=cmd_export, device="cpu", threads=None)

    caption = add_caption_command(sub)

    translate = add_translate_parser(sub)

    for command in (sample, evaluate, caption, translate):
        command.add_argument("--weights", choices=("best", "last"), default="best",
                             help="the best evaluation's weights or the last checkpoint's (default: best)")
        command.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        onnxruntime = ", and for onnxruntime with --engine onnxruntime" if command is sample else ""
        command.add_argument("--threads", type=int, default=None,
                             help=f"CPU threads for torch{onnxruntime} (default: torch's; 1 is faster on a busy "
                                  f"machine)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    return parser


def _task_named(argv: list[str]) -> str | None:
    """The task of `rnnlab train [TASK] [--resume RUN_DIR]` or `rnnlab seeds TASK`, found before
    parsing because it picks the flags: the TASK word, or the task recorded in the resumed run's
    config.json."""
    import json

    from .tasks import TASKS

    if not argv or argv[0] not in ("train", "seeds"):
        return None
    for before, word in zip(argv, argv[1:]):  # TASK anywhere, but not as a flag's value (--out adding)
        if word in TASKS and (before == argv[0] or not before.startswith("-") or before == "--debug"):
            return word
    for flag, value in zip(argv, argv[1:]):
        if flag == "--resume":
            try:
                task = json.loads((Path(value) / "config.json").read_text()).get("task")
            except (OSError, ValueError, AttributeError):
                return None  # the resume itself reports what is wrong with the run directory
            return task if task in TASKS else None
    return None


def _cell_flag(placeholder: str) -> str:
    """The flag that sets a cell's argument, for its ArgumentError (`proj_size` -> --proj-size,
    `reads_state=False` -> --no-state-read); an argument no flag sets keeps its name."""
    from .tasks.cell_options import config_field

    argument, _, value = placeholder.partition("=")
    field = config_field(argument)
    if field is None:
        return placeholder
    return "--no-" + field.replace("_", "-") if value == "False" else flag_name(field)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).removeprefix("rnnlab: ")  # the core's BuildNote names rnnlab itself, for library users
    print(f"rnnlab: warning: {text}", file=sys.stderr)


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` says an allocation failed: Python's MemoryError, torch's CUDA OutOfMemoryError, or
    the RuntimeError of torch's CPU allocator (which has no type of its own)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        "can't allocate memory" in str(error) or "out of memory" in str(error).lower()[:200])


def _allocation(error: BaseException) -> str:
    """' (tried to allocate N bytes)' where torch's message says how much, else ''."""
    words = str(error).split()
    for i, word in enumerate(words[:-1]):
        if word == "allocate" and words[i + 1].replace(".", "").isdigit():
            return f" (tried to allocate {words[i + 1]} {words[i + 2].rstrip('.;,') if i + 2 < len(words) else ''})"
    return ""


# What each command's --out names (the others: a folder), for the error an empty --out gets.
OUT_NAMES = {"caption": "a .png file", "explore": "an .html file", "export": "a .onnx file"}


def _run(args) -> int:
    """The command, once the checks every command shares pass: an empty --out was read as no --out (its
    default folder or file), as `Path('')` is the working folder; it is refused, naming the flag."""
    if getattr(args, "out", None) == "":  # the namespace holds `out` where the command takes --out
        raise FlagError(args.command, f"--out must name {OUT_NAMES.get(args.command, 'a folder')}; got ''")
    return args.func(args)


def _error_line(command: str, message: str) -> str:
    """`rnnlab: error: MESSAGE`; a message that names its command first (`rnnlab export: --out ...`,
    `rnnlab train --resume RUN: ...`) reads as the flags' errors do, `rnnlab export: error: --out ...`,
    not `rnnlab: error: rnnlab export: ...`."""
    prefix = f"rnnlab {command}"
    if message.startswith((prefix + ":", prefix + " ")):
        return f"{prefix}: error: {message[len(prefix):].lstrip(':').strip()}"
    return f"rnnlab: error: {message}"


def program() -> int:
    """The `rnnlab` program (its console script, `python -m rnnlab`, torchrun's `-m rnnlab`): `main` in a
    process that is the program's own, set up as a library must leave to its user (`keep_freed_memory`)."""
    keep_freed_memory()
    return main()


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def keep_freed_memory() -> bool:
    """glibc keeps freed buffers below 32 MB for reuse instead of handing them back to the system: by
    default it returns the heap's free top once it exceeds twice the largest buffer freed so far, so a
    training step's buffers, freed at its end, are mapped afresh by the next and cost a page fault per 4
    kB touched (the fused LSTM on the adding task: 650,000-760,000 faults in 300 steps, 15% of its time in
    the kernel; with this, 130,000 and 23-25% more sequences a second, at 4-7% more peak memory:
    docs/BENCHMARKS.md "Freed memory kept"). The two settings of `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:
    glibc.malloc.trim_threshold=...`, made at run time; none where the environment sets glibc's malloc
    or the C library is not glibc. Whether they were made."""
    import ctypes
    import ctypes.util

    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): its allocator is its own
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def main(argv: list[str] | None = None) -> int:
    """Run the command. A user's mistake or a fault of the machine (rnnlab's error types, ValueError
    for bad input, OSError) prints one line and exits with 2; anything else is a bug of ours and keeps
    its traceback. `--debug`, anywhere on the line, shows the traceback of every error."""
    import warnings

    from .checks import ArgumentError
    from .config import ConfigError
    from .errors import RnnlabError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(_task_named(argv)).parse_args(argv)
    if debug:
        return _run(args)
    from .distributed import PeerFailure, SharedError, is_reporter

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings
        try:
            return _run(args)
        except FlagError as error:  # a flag's value: name the flag (torchrun: every rank raises it; rank 0 says it)
            if is_reporter():
                print(f"rnnlab {error.command}: error: {error}", file=sys.stderr)
            return 2
        except ConfigError as error:  # a config built from flags (a config file's errors name the file instead)
            if is_reporter():  # on a trained run (eval, explore, ...): a flag the run was made with, not one given
                whose = "the run's " if hasattr(args, "run_dir") else ""
                print(f"rnnlab {args.command}: error: {whose}{error.for_flag(flag_name(error.field))}", file=sys.stderr)
            return 2
        except ArgumentError as error:  # a cell's argument: train and seeds set them by flags, named as typed
            if is_reporter():  # torchrun: every rank builds the same cells from the same flags
                named = args.command in ("train", "seeds")
                print(f"rnnlab {args.command}: error: {error.named(_cell_flag)}" if named
                      else f"rnnlab: error: {error}", file=sys.stderr)
            return 2
        except (RnnlabError, ValueError) as error:  # wrong input or a run that cannot serve: a message
            if is_reporter() or not isinstance(error, SharedError):  # torchrun: rank 0 reports what all ranks raise
                print(_error_line(args.command, str(error)), file=sys.stderr)
            return 2
        except PeerFailure as error:  # torchrun: another process died or stopped answering
            print(f"rnnlab: error: {error}", file=sys.stderr)
            return 1
        except OSError as error:  # the machine: a missing or unwritable file, a full disk
            where = f": {error.filename}" if error.filename else ""
            print(f"rnnlab: error: {error.strerror or error}{where}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as error:  # the machine: sizes that need more memory than it has
            if not _out_of_memory(error):
                raise  # any other RuntimeError is a bug of ours: its traceback
            print(f"rnnlab: error: out of memory{_allocation(error)}; smaller sizes (--hidden, --batch-size, "
                  f"--length, ...) need less", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C outside training (training saves a checkpoint and returns 130 itself)
            print("\nrnnlab: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
