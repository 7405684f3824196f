"""The `rnnlab` command: the only place that parses argv or prints."""

from __future__ import annotations

import argparse
import sys

import torch

from . import __version__


def cmd_train(args) -> int:
    """Built-in demo until the language model lands: an LSTM learns a delayed copy of its input."""
    from . import LSTMCell, Recurrent

    torch.manual_seed(args.seed)
    cell = LSTMCell(1, 32)
    runner, readout = Recurrent(cell), torch.nn.Linear(32, 1)
    params = list(cell.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for step in range(1, args.steps + 1):
        xs = torch.randn(32, 20, 1)
        target = torch.cat([torch.zeros(32, 3, 1), xs[:, :-3]], 1)  # y^t = x^{t-3}
        loss = torch.nn.functional.mse_loss(readout(runner(xs)[0]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return 0


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
            max_call_s=args.max_call)
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
          f"O(1) -> 0, O(sqrt T) -> 0.5, O(T) -> 1. Serial steps count ops on the longest chain "
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description="Recurrent neural networks, from the lecture to fast kernels.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (demo: delayed copy with an LSTM)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--seed", type=int, default=0)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
