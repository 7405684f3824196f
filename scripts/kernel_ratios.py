"""Side-by-side timing of rnnlab's implementations against torch.nn.LSTM (one process, one thread,
interleaved repetitions, median). Usage: python scripts/kernel_ratios.py [quick] [sizes] [ladder] [scan]
(no group named: all three)."""

import statistics
import sys
import time

import torch

from rnnlab import ForgetGatedCell, GRUCell, InputGatedCell, LSTMCell, Recurrent, VanillaCell, shift_right
from rnnlab.cells import LADDER

torch.set_num_threads(1)


def timer(fn, backward):
    def once():
        t0 = time.perf_counter()
        out = fn()
        if backward:
            out.sum().backward()
        return time.perf_counter() - t0
    return once


def compare(name, candidates, reps=7, base="torch.nn.LSTM"):
    for fn in candidates.values():
        fn()
    times = {k: [] for k in candidates}
    for _ in range(reps):
        for k, fn in candidates.items():
            times[k].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[base]
    print(name, "  ".join(f"{k}={med[k] * 1e3:.2f}ms ({med[k] / base:.2f}x)" for k in candidates), flush=True)


def sizes_run(B, H, I, T, backward, reps):
    torch.manual_seed(0)
    xs = torch.randn(B, T, I)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    gru = torch.nn.GRU(I, H, batch_first=True)
    rnn = torch.nn.RNN(I, H, batch_first=True)
    y = shift_right(torch.randn(B, T, H))
    c = {"torch.nn.LSTM": lambda: lstm(xs)[0], "torch.nn.GRU": lambda: gru(xs)[0], "torch.nn.RNN": lambda: rnn(xs)[0]}
    for cls, nm in ((LSTMCell, "lstm"), (GRUCell, "gru"), (VanillaCell, "rnn")):
        r = Recurrent(cls(I, H))
        c[f"auto-{nm}"] = (lambda r=r: r(xs)[0])
    fb = LSTMCell(I, H, H)
    for impl in ("fused",):
        r = Recurrent(fb, impl)
        c[f"{impl}-lstm+fb"] = (lambda r=r: r(xs, y_prev=y)[0])
        r2 = Recurrent(LSTMCell(I, H), impl)
        c[f"{impl}-lstm"] = (lambda r=r2: r(xs)[0])
        r3 = Recurrent(ForgetGatedCell(I, H, H), impl)
        c[f"{impl}-forget+fb"] = (lambda r=r3: r(xs, y_prev=y)[0])
    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        compare(f"B={B} H={H} I={I} T={T} {'fwd+bwd' if backward else 'fwd'}:",
                {k: timer(v, backward) for k, v in c.items()}, reps)


def scan_run(B, H, I, T, reps=5):
    """scan and fused against reference for the cells linear in their state (the issue: scan >= 20x)."""
    torch.manual_seed(0)
    xs = torch.randn(B, T, I)
    for name, cls in (("forget", ForgetGatedCell), ("mingru", GRUCell), ("lstm", LSTMCell), ("input", InputGatedCell)):
        cell = cls(I, H, reads_state=False)
        c = {impl: (lambda r=Recurrent(cell, impl): r(xs)[0]) for impl in ("reference", "scan", "fused")}
        compare(f"scan B={B} H={H} I={I} T={T} {name} fwd+bwd:", {k: timer(v, True) for k, v in c.items()}, reps,
                base="reference")


def fused_ladder_run(B, H, I, T, backward, reps=7):
    """fused for every ladder cell against torch.nn.LSTM (the issue: <= 2x at B = 1, T = 1000)."""
    torch.manual_seed(0)
    xs, y = torch.randn(B, T, I), torch.randn(B, T, I)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    c = {"torch.nn.LSTM": lambda: lstm(xs)[0]}
    for name, cls in LADDER.items():
        fb = I if name == "feedback" else 0
        r = Recurrent(cls(I, H, fb), "fused")
        c[name] = lambda r=r, fb=fb: r(xs, y_prev=y if fb else None)[0]
    ctx = torch.enable_grad() if backward else torch.no_grad()
    with ctx:
        compare(f"fused B={B} H={H} I={I} T={T} {'fwd+bwd' if backward else 'fwd'}:",
                {k: timer(v, backward) for k, v in c.items()}, reps)


if __name__ == "__main__":
    quick = "quick" in sys.argv
    only = [w for w in ("sizes", "ladder", "scan") if w in sys.argv] or ["sizes", "ladder", "scan"]
    if "sizes" in only:
        for (B, H, I, T) in [(32, 128, 128, 100), (64, 256, 256, 100)] + ([] if quick else [(1, 128, 128, 1000)]):
            for backward in (False, True):
                sizes_run(B, H, I, T, backward, 5 if quick else 9)
    if "ladder" in only:
        for backward in (False, True):
            fused_ladder_run(1, 128, 128, 1000, backward)
    if "scan" in only:
        scan_run(1, 128, 128, 1024)
        if not quick:
            scan_run(32, 128, 128, 1024)
