"""Side-by-side timing of rnnlab's implementations against torch.nn.LSTM (one process, one thread,
interleaved repetitions, median). Usage: python scripts/kernel_ratios.py [quick]"""

import statistics
import sys
import time

import torch

from rnnlab import GRUCell, LSTMCell, Recurrent, VanillaCell, ForgetGatedCell, shift_right

torch.set_num_threads(1)


def timer(fn, backward):
    def once():
        t0 = time.perf_counter()
        out = fn()
        if backward:
            out.sum().backward()
        return time.perf_counter() - t0
    return once


def compare(name, candidates, reps=7):
    for fn in candidates.values():
        fn()
    times = {k: [] for k in candidates}
    for _ in range(reps):
        for k, fn in candidates.items():
            times[k].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.nn.LSTM"]
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


def scan_run(B, H, I, T, reps=3):
    torch.manual_seed(0)
    xs = torch.randn(B, T, I)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    cell = ForgetGatedCell(I, H, reads_state=False)
    mg = GRUCell(I, H, reads_state=False)
    c = {"torch.nn.LSTM": lambda: lstm(xs)[0],
         "reference-forget": lambda: Recurrent(cell, "reference")(xs)[0],
         "scan-forget": lambda: Recurrent(cell, "scan")(xs)[0],
         "reference-mingru": lambda: Recurrent(mg, "reference")(xs)[0],
         "scan-mingru": lambda: Recurrent(mg, "scan")(xs)[0]}
    compare(f"scan B={B} H={H} I={I} T={T} fwd+bwd:", {k: timer(v, True) for k, v in c.items()}, reps)


if __name__ == "__main__":
    quick = "quick" in sys.argv
    for (B, H, I, T) in [(32, 128, 128, 100), (64, 256, 256, 100)] + ([] if quick else [(1, 128, 128, 1000)]):
        for backward in (False, True):
            sizes_run(B, H, I, T, backward, 5 if quick else 9)
    if "scan" in sys.argv or not quick:
        scan_run(1, 128, 128, 1024)
        scan_run(32, 128, 128, 1024)
