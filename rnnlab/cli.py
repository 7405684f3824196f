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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
