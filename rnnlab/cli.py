"""The `rnnlab` command: the only place that parses argv or prints."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
import typing
from pathlib import Path

from . import __version__


# --- flags generated from config dataclasses ---------------------------------------------------


def _parse_optional(kind):
    """argparse type for `kind | None`: the word 'none' gives None."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls, defaults, title: str) -> None:
    """One flag per field of the config dataclass `cls` (`max_minutes` -> `--max-minutes`). The flags
    default to SUPPRESS, so the namespace holds only what the user gave; `defaults` (an instance)
    supplies the values shown in --help."""
    from .config import field_types

    group = parser.add_argument_group(title)
    for name, kind in field_types(cls).items():
        meta = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
        flag = "--" + name.replace("_", "-")
        help_text = f"{meta.get('help', '')} (default: {getattr(defaults, name)})"
        options = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        args = typing.get_args(kind)
        optional = (typing.get_origin(kind) in (typing.Union, types.UnionType)) and type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else kind
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if meta.get("choices"):
            options["choices"] = meta["choices"]
        group.add_argument(flag, type=_parse_optional(base) if optional else base,
                           metavar=name.upper() if not meta.get("choices") else None, **options)


def _given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


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
                           f"step {event['step']:>6}  validation " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        self.bar.close()


def _train_setup(args):
    """(task, train_config, run_dir, resumed) from the flags: a new run, or the run to resume with
    the flags it may change."""
    from .config import differences, from_dict
    from .tasks import DEFAULT_TASK, TASKS, open_run
    from .training import RESUMABLE_FIELDS, seed_everything

    task_name = args.task or DEFAULT_TASK
    cls = TASKS[task_name]
    task_flags, train_flags = _given(args, cls.Config), _given(args, type(cls.train_defaults))
    if args.resume is None:
        train_config = dataclasses.replace(cls.train_defaults, **train_flags)
        seed_everything(train_config.seed)  # before the model is built: the initial weights follow the seed
        task = cls(cls.Config(**task_flags))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return task, train_config, Path(args.out or f"runs/{task_name}-{stamp}"), False
    if args.out is not None:
        raise ValueError("rnnlab train: --out and --resume exclude each other; a resumed run stays in its directory")
    task, stored = open_run(args.resume)
    if args.task is not None and task.name != args.task:
        raise ValueError(f"rnnlab train: the run in {args.resume} is a {task.name!r} run; got task {args.task!r}")
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
    """Train a task (default: the character language model on the bundled Shakespeare)."""
    from .tasks import run_config, write_artifacts
    from .training import Trainer

    task, train_config, run_dir, resumed = _train_setup(args)
    if not resumed and (run_dir / "checkpoint.json").exists():
        raise ValueError(f"rnnlab train: --out {run_dir} already holds a run; continue it with --resume {run_dir} "
                         f"or choose another --out")
    trainer = Trainer(task.model, task.batches(train_config.seed), task.loss, train_config,
                      evaluate=task.evaluate, run_dir=run_dir, run_config=run_config(task))
    if resumed:
        trainer.resume()
    else:
        write_artifacts(task, run_dir)
    print(f"{'resuming' if resumed else 'training'} {task.name}: {task.describe()}; run directory {run_dir}")
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
    if result.stopped == "interrupted":
        print(f"interrupted: checkpoint saved; continue with: rnnlab train --resume {run_dir}")
        return 130
    if train_config.threads is not None:  # the report's evaluations too, not only fit (which restores the default)
        import torch

        torch.set_num_threads(train_config.threads)
    from .tasks import load_weights

    file = load_weights(task, run_dir, "best", train_config.device)
    print(f"weights: {file}")
    for line in task.report(task.model, run_dir):
        print(line)
    for i in range(getattr(args, "samples", 0)):  # only a TextGenerator's parser has the sampling flags
        text = task.sample_text(task.model, args.prompt, args.sample_length, temperature=0.8, seed=i)
        print(f"\n--- sample {i + 1} (temperature 0.8) ---\n{args.prompt}{text}")
    return 0


# --- bench, complexity, gradients -------------------------------------------------------


def cmd_bench(args) -> int:
    """Time rnnlab's implementations against torch.nn side by side; print a table, optionally JSON."""
    import json

    from . import bench
    from .cells import LADDER
    from .runners import IMPLEMENTATION_NAMES

    try:
        sizes = bench.parse_sizes(args.sizes) if args.sizes else (bench.QUICK_SIZES if args.quick else bench.DEFAULT_SIZES)
        config = bench.BenchConfig(
            sizes=sizes,
            cells=bench.parse_names("--cells", args.cells, tuple(LADDER)),
            impls=bench.parse_names("--impls", args.impls, IMPLEMENTATION_NAMES),
            variants=bench.parse_names("--variants", args.variants, bench.VARIANTS),
            passes=bench.parse_names("--passes", args.passes, bench.PASSES),
            threads=args.threads, reps=args.reps if args.reps is not None else (3 if args.quick else 5),
            max_call_s=args.max_call, device=args.device)
    except ValueError as error:
        print(f"rnnlab {error}", file=sys.stderr)  # the message starts "bench: --flag ..."
        return 2
    report = bench.run_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(bench.format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def cmd_complexity(args) -> int:
    """Measure the lecture's complexity table; print it, write JSON and log-log plots."""
    import json
    from dataclasses import replace
    from datetime import datetime
    from pathlib import Path

    from . import complexity

    config = complexity.ComplexityConfig(**(complexity.QUICK if args.quick else {}))
    overrides = {"cell": args.cell, "hidden": args.hidden, "input": args.input, "batch": args.batch,
                 "window": args.window, "repeats": args.repeats, "device": args.device}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.T is not None:
        config = replace(config, steps=complexity.sweep_from_text(args.T))
    config.check()
    out = Path(args.out) if args.out else Path("runs") / f"complexity-{datetime.now():%Y%m%d-%H%M%S}"
    print(f"rnnlab complexity: {config.cell}, H={config.hidden}, I={config.input}, B={config.batch}, "
          f"k={config.window}, device {config.device}")
    result = complexity.measure(config, progress=lambda line: print("  measuring", line, flush=True))
    print()
    print(complexity.format_table(result))
    print(f"\nExponents: log-log least-squares slopes over T = {config.steps[0]}..{config.steps[-1]}; "
          f"O(1) and O(log T) -> 0, O(sqrt T) -> 0.5, O(T) -> 1. Serial steps count ops on the longest chain "
          f"({result.ops_per_step} per {config.cell} step). {complexity.FLOPS_CONVENTION}")
    data = result.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "complexity.json").write_text(json.dumps(data, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
    plots = complexity.plot_results(result, out)
    print(f"\nwrote {out / 'complexity.json'}" + (f", {args.json}" if args.json else "")
          + f" and {len(plots)} plots in {out}/")
    return 0


def cmd_gradients(args) -> int:
    """Norms of dLoss/ds^t for each ladder cell on the adding problem, at init and after training."""
    import json
    from dataclasses import asdict
    from datetime import datetime
    from pathlib import Path

    from . import gradient_flow as gf

    config = gf.GradientFlowConfig(cells=tuple(c for c in args.cells.split(",") if c), steps=args.T,
                                   train_steps=args.steps, hidden=args.hidden, batch=args.batch,
                                   lr=args.lr, seed=args.seed, init=args.init)
    config.check()
    out = Path(args.out) if args.out else Path("runs") / f"gradients-{datetime.now():%Y%m%d-%H%M%S}"
    results = gf.measure_gradient_flow(config, progress=lambda line: print("  ", line, flush=True))
    shown = gf.selected_steps(config.steps)
    print(f"\n||dLoss/ds^t|| on the adding problem (T={config.steps}, H={config.hidden}, init {config.init}; loss at t=T; "
          f"baseline MSE {gf.ADDING_BASELINE_MSE:.3f})\n")
    print("| cell | moment | MSE | " + " | ".join(f"t={t}" for t in shown) + " | t=1 / t=T |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in shown) + " | ---: |")
    for flow in results:
        for moment, norms, loss in (("init", flow.init, flow.loss_init),
                                    (f"after {config.train_steps}", flow.trained, flow.loss_trained)):
            ratio = norms[0] / norms[-1] if norms[-1] else float("nan")
            print(f"| {flow.cell} | {moment} | {loss:.3f} | " + " | ".join(f"{norms[t - 1]:.1e}" for t in shown)
                  + f" | {ratio:.1e} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradients.json").write_text(json.dumps({"config": asdict(config), "cells": [asdict(f) for f in results]}))
    path = gf.plot_gradient_flow(results, out / "gradients.png", config.steps)
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

    config = {k: v for k, v in (("T", args.T), ("hidden", args.hidden), ("batch_size", args.batch_size)) if v is not None}
    train = {k: v for k, v in (("steps", args.steps), ("max_minutes", args.max_minutes), ("lr", args.lr),
                               ("seed", args.seed), ("eval_every", args.eval_every), ("threads", args.threads))
             if v is not None}
    cells = tuple(c for c in args.cells.split(",") if c)
    out = Path(args.out) if args.out else Path("runs") / f"ladder-{args.task}-{datetime.now():%Y%m%d-%H%M%S}"
    rows = ladder.run_ladder(args.task, config, train, out, cells,
                             progress=lambda line: print("  training", line, flush=True))
    T = config.get("T")
    print(f"\nrnnlab ladder {args.task}: equal parameter budgets (the LSTM's at its hidden size); "
          f"loss on held-out sequences; steps: those trained (fewer where the time budget stopped a cell)\n")
    extra = sorted({k for row in rows for k in row.extra})
    print("| cell | hidden | params | steps | final loss | best loss | baseline | " + "".join(f"{k} | " for k in extra)
          + "minutes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(extra) + "---: |")
    for row in rows:
        print(f"| {row.cell} | {row.hidden} | {row.params:,} | {row.steps} | {row.final:.4f} | {row.best:.4f} | "
              f"{row.baseline:.4f} | " + "".join(f"{row.extra.get(k, float('nan')):.3f} | " for k in extra)
              + f"{row.minutes:.1f} |")
    low, high = min(row.params for row in rows), max(row.params for row in rows)
    title = f"{args.task}{f', T={T}' if T else ''}: equal parameter budgets ({low:,} to {high:,} parameters)"
    path = ladder.plot_ladder(rows, out / "ladder.png", title)
    print(f"\nwrote {path}; each cell's run in {out}/<cell>/")
    return 0


# --- sample and eval -------------------------------------------------------------------------


def _open_trained(run_dir: str, weights: str, device: str):
    from .tasks import load_weights, open_run

    task, _ = open_run(run_dir)
    file = load_weights(task, run_dir, weights, device)
    return task, file


def cmd_sample(args) -> int:
    """Generate text from a trained run, the model's own outputs fed back after the prompt."""
    from .tasks import TextGenerator, commands_for

    task, _ = _open_trained(args.run_dir, args.weights, args.device)
    if not isinstance(task, TextGenerator):
        raise ValueError(f"rnnlab sample: a {task.name!r} run does not generate text; what serves it: "
                         f"{commands_for(type(task))}")
    unknown = task.unknown_in(args.prompt)
    if unknown:
        print(f"note: the prompt's {unknown} are not in the vocabulary; the model reads them as <unk>",
              file=sys.stderr)
    text = task.sample_text(task.model, args.prompt, args.length, args.temperature, args.top_k, args.seed)
    print(args.prompt + text)
    return 0


def cmd_eval(args) -> int:
    """The task's metrics of a trained run (its best weights by default), next to its baselines."""
    task, file = _open_trained(args.run_dir, args.weights, args.device)
    print(f"weights: {file}")
    for line in task.report(task.model, args.run_dir):
        print(line)
    return 0


# --- caption ----------------------------------------------------------------------------------


def cmd_caption(args) -> int:
    """Caption the user's images with a trained caption run, or draw a grid of held-out strips with theirs."""
    from .data.images import read_image
    from .tasks import Captioner, commands_for

    if args.count < 1:
        raise ValueError(f"rnnlab caption: --count must be >= 1; got {args.count}")
    task, file = _open_trained(args.run_dir, args.weights, args.device)
    if not isinstance(task, Captioner):
        raise ValueError(f"rnnlab caption: a {task.name!r} run does not caption images; what serves it: "
                         f"{commands_for(type(task))}")
    if not args.images:
        out = Path(args.out) if args.out else Path(args.run_dir) / "captions.png"
        if out.suffix.lower() != ".png" or not out.parent.is_dir():
            raise ValueError(f"rnnlab caption: --out must be a .png file in an existing folder; got {str(out)!r}")
        print(f"weights: {file}")
        print(f"wrote {task.plot_grid(task.model, out, args.count)}")
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


def add_caption_command(sub) -> argparse.ArgumentParser:
    caption = sub.add_parser("caption", help="caption images with a trained caption run (no image: a grid of "
                                             "held-out strips with their captions)")
    caption.add_argument("run_dir", metavar="RUN_DIR")
    caption.add_argument("images", metavar="IMAGE", nargs="*",
                         help="picture files (PNG, ...) of digits side by side, 8 pixels high, ink dark or light")
    caption.add_argument("--out", metavar="PNG", help="where the grid goes (default: RUN_DIR/captions.png)")
    caption.add_argument("--count", type=int, default=24, help="held-out strips in the grid (default: 24)")
    caption.set_defaults(func=cmd_caption)
    return caption


# --- the parser ------------------------------------------------------------------------------


def build_parser(task_name: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; `train`'s flags are those of `task_name` (default: the default task)."""
    from .tasks import DEFAULT_TASK, TASKS, TextGenerator
    from .training import TrainConfig

    task_name = task_name or DEFAULT_TASK
    parser = argparse.ArgumentParser(prog="rnnlab", description="Recurrent neural networks, from the lecture to fast kernels.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    task = TASKS[task_name]
    train = sub.add_parser("train", help=f"train a task (default: {DEFAULT_TASK}, a character model of Shakespeare)",
                           description=f"Train a task; flags shown are those of task {task_name!r}.")
    train.add_argument("task", nargs="?", choices=sorted(TASKS), help=f"what to train (default: {DEFAULT_TASK}; "
                       f"with --resume: the run's task)")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<task>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (same result as never stopping)")
    if issubclass(task, TextGenerator):
        train.add_argument("--samples", type=int, default=1, help="samples to print at the end (default: 1)")
        train.add_argument("--sample-length", type=int, default=500, help="tokens per sample (default: 500)")
        train.add_argument("--prompt", default="\n", help="what the samples start from (default: a new line)")
    add_config_flags(train, task.Config, task.Config(), f"task {task_name!r}")
    add_config_flags(train, TrainConfig, task.train_defaults, "training")
    train.set_defaults(func=cmd_train)
    bench = sub.add_parser("bench", help="time every implementation side by side with torch.nn (ratios to torch.nn.LSTM)")
    bench.add_argument("--sizes", help="comma-separated BxHxIxT, e.g. 32x128x128x100,1x128x128x1000 "
                                       "(default: the four sizes of docs/BENCHMARKS.md)")
    bench.add_argument("--cells", default="all", help="ladder cells, comma-separated, or 'all'")
    bench.add_argument("--impls", default="all", help="rnnlab implementations, comma-separated, or 'all' "
                                                      "(the torch.nn peers always run: they are the baseline)")
    bench.add_argument("--variants", default="all", help="plain, feedback (teacher forced), linear (reads_state=False)")
    bench.add_argument("--passes", default="all", help="forward, forward+backward")
    bench.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    bench.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate (default 5; 3 with --quick)")
    bench.add_argument("--max-call", type=float, default=5.0,
                       help="skip a candidate whose warm-up call takes longer than this many seconds (default 5)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument("--quick", action="store_true", help="a small grid that finishes in under a minute")
    bench.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    bench.set_defaults(func=cmd_bench)
    comp = sub.add_parser("complexity", help="measure memory, FLOPs and serial steps against sequence length T")
    comp.add_argument("--cell", help="ladder cell (default lstm)")
    comp.add_argument("--hidden", type=int, help="H (default 64; --quick 32)")
    comp.add_argument("--input", type=int, help="I (default 32; --quick 16)")
    comp.add_argument("--batch", type=int, help="B (default 8; --quick 4)")
    comp.add_argument("--T", help="sweep of T: FIRST..LAST doubling, or a comma list (default 16..4096; --quick 16..256)")
    comp.add_argument("--window", type=int, help="truncated BPTT's window k (default 16; --quick 8)")
    comp.add_argument("--repeats", type=int, help="timed runs per point, the fastest kept (default 3)")
    comp.add_argument("--device", choices=("cpu", "cuda"), help="default cpu")
    comp.add_argument("--quick", action="store_true", help="a small sweep, under a minute")
    comp.add_argument("--json", help="also write the results here")
    comp.add_argument("--out", help="directory for JSON and plots (default runs/complexity-<time>)")
    comp.set_defaults(func=cmd_complexity)
    grad = sub.add_parser("gradients", help="gradient flow: ||dLoss/ds^t|| for each ladder cell on the adding problem")
    grad.add_argument("--cells", default="vanilla,residual,input,forget,lstm,gru")
    grad.add_argument("--T", type=int, default=100, help="sequence length")
    grad.add_argument("--steps", type=int, default=300, help="training steps (plain Adam)")
    grad.add_argument("--hidden", type=int, default=32)
    grad.add_argument("--batch", type=int, default=32)
    grad.add_argument("--lr", type=float, default=1e-2)
    grad.add_argument("--seed", type=int, default=0)
    grad.add_argument("--init", default="keras", help="keras (default: orthogonal recurrent, forget bias 1) or torch")
    grad.add_argument("--out", help="directory for JSON and the plot (default runs/gradients-<time>)")
    grad.set_defaults(func=cmd_gradients)

    tasks = sub.add_parser("tasks", help="list the tasks `rnnlab train` can train")
    tasks.set_defaults(func=cmd_tasks)
    lad = sub.add_parser("ladder", help="train every ladder cell with equal parameter budgets on a memory task",
                         description="Train vanilla, residual, input, forget, lstm and gru with equal parameter "
                                     "budgets on one task; print one table and save one plot of learning curves.")
    lad.add_argument("task", metavar="TASK", help="adding or copy")
    lad.add_argument("--T", type=int, help="sequence length (adding) or delay (copy) (default: the task's)")
    lad.add_argument("--hidden", type=int, help="the LSTM's hidden size, which sets the budget (default: the task's; "
                                                "copy: 64, the plain task's)")
    lad.add_argument("--batch-size", type=int, help="sequences per batch (default: the task's)")
    lad.add_argument("--cells", default=",".join(("vanilla", "residual", "input", "forget", "lstm", "gru")),
                     help="cells to train, comma-separated (default: all six)")
    lad.add_argument("--steps", type=int, help="training steps per cell (default: the task's)")
    lad.add_argument("--max-minutes", type=float, help="wall-clock budget per cell (default: the task's)")
    lad.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    lad.add_argument("--eval-every", type=int, help="evaluate every this many steps (default: the task's)")
    lad.add_argument("--seed", type=int, help="seed (default 0)")
    lad.add_argument("--threads", type=int, help="torch CPU threads (default: the task's, 1)")
    lad.add_argument("--out", help="directory of the runs and the plot (default runs/ladder-TASK-<time>); "
                                   "cells already there are resumed")
    lad.set_defaults(func=cmd_ladder)

    sample = sub.add_parser("sample", help="generate text from a trained run")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--prompt", default="\n", help="text to start from (default: a new line)")
    sample.add_argument("--length", type=int, default=500, help="tokens to generate (default: 500)")
    sample.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0: greedy (default: 0.8)")
    sample.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    sample.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("eval", help="the task's metrics of a trained run next to its baselines (language: nats and bits per token)")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.set_defaults(func=cmd_eval)

    caption = add_caption_command(sub)

    for command in (sample, evaluate, caption):
        command.add_argument("--weights", choices=("best", "last"), default="best",
                             help="the best evaluation's weights or the last checkpoint's (default: best)")
        command.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def _task_named(argv: list[str]) -> str | None:
    """The task of `rnnlab train [TASK] [--resume RUN_DIR]`, found before parsing because it picks
    the flags: the TASK word, or the task recorded in the resumed run's config.json."""
    import json

    from .tasks import TASKS

    if not argv or argv[0] != "train":
        return None
    if len(argv) > 1 and argv[1] in TASKS:
        return argv[1]
    for flag, value in zip(argv, argv[1:]):
        if flag == "--resume":
            try:
                task = json.loads((Path(value) / "config.json").read_text()).get("task")
            except (OSError, ValueError, AttributeError):
                return None  # the resume itself reports what is wrong with the run directory
            return task if task in TASKS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_task_named(argv)).parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # wrong input: a message, not a traceback
        print(f"rnnlab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
