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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description="Recurrent neural networks, from the lecture to fast kernels.")
    parser.add_argument("--version", action="version", version=f"rnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model (demo: delayed copy with an LSTM)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
