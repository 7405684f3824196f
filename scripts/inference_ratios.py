"""Every fused ladder cell against torch.nn.LSTM, by process CPU time, one thread: the figure a
crowded machine disturbs least (wall time there counts the waits for a core; CPU time only the
work, though still the cache misses of sharing one). Repetitions interleaved, medians.
Usage: python scripts/inference_ratios.py [forward|forward+backward] [reps]   (docs/BENCHMARKS.md)"""

import statistics
import sys
import time

import torch

from rnnlab.cells import LADDER
from rnnlab.runners import Recurrent

SIZES = ((32, 128, 128, 100), (64, 256, 256, 100), (32, 512, 512, 100), (1, 128, 128, 1000))  # B, H, I, T
CELLS = ("vanilla", "residual", "input", "forget", "lstm", "gru", "feedback")


def main(pass_name: str = "forward", reps: int = 9) -> None:
    torch.set_num_threads(1)
    backward = pass_name == "forward+backward"
    print(f"| {pass_name}, 1 thread, CPU time | torch.nn.LSTM ms | " + " | ".join(CELLS) + " |")
    print("| --- |" + " ---: |" * (len(CELLS) + 1))
    for B, H, I, T in SIZES:
        torch.manual_seed(0)
        xs = torch.randn(B, T, I)
        y_prev = torch.randn(B, T, I)  # the feedback cell's teacher-forced outputs (O = I)
        lstm = torch.nn.LSTM(I, H, batch_first=True)
        calls = {"torch.nn.LSTM": lambda lstm=lstm, xs=xs: lstm(xs)[0]}
        for name in CELLS:
            runner = Recurrent(LADDER[name](I, H, I if name == "feedback" else 0), implementation="fused")
            fed = y_prev if name == "feedback" else None
            calls[name] = lambda runner=runner, fed=fed, xs=xs: runner(xs, y_prev=fed)[0]
        times = {name: [] for name in calls}
        for rep in range(reps + 1):  # the first round warms up
            for name, call in calls.items():
                start = time.process_time()
                if backward:
                    call().sum().backward()
                else:
                    with torch.no_grad():
                        call()
                if rep:
                    times[name].append(time.process_time() - start)
        base = statistics.median(times["torch.nn.LSTM"])
        ratios = " | ".join(f"{statistics.median(times[name]) / base:.2f}" for name in CELLS)
        print(f"| {B}x{H}x{I}x{T} | {base * 1e3:.1f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "forward", int(sys.argv[2]) if len(sys.argv) > 2 else 9)
