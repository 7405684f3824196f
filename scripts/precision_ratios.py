"""bf16 autocast against float32, side by side in one process (one thread, interleaved repetitions,
median; ratios only, since the machine may be shared). Forward+backward of each fused ladder cell
(and torch's kernels, `native`, where they serve), a bare GEMM, and one training step of the default
language model (embedding 64 -> LSTM 512 -> linear readout, B=32, T=100).
Usage: python scripts/precision_ratios.py [reps]"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from rnnlab import Recurrent
from rnnlab.cells import LADDER
from rnnlab.kernels import compiled
from rnnlab.tasks.language import LanguageConfig, build_model

torch.set_num_threads(1)
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 7


def timed(fn, precision):
    def once():
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = fn()
        loss.backward()
        return time.perf_counter() - start
    return once


def ratio(fn) -> tuple[float, float]:
    """(median float32 seconds, bf16 / float32 ratio), the two precisions interleaved."""
    runs = {p: timed(fn, p) for p in ("32", "bf16")}
    for run in runs.values():
        run()
    times = {p: [] for p in runs}
    for _ in range(REPS):
        for p, run in runs.items():
            times[p].append(run())
    full, low = statistics.median(times["32"]), statistics.median(times["bf16"])
    return full, low / full


def main():
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"mkldnn bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
          f"compiled loops: {'built' if compiled.extension() else 'unavailable'}; one thread, {REPS} reps")
    print("\n| what | float32 ms | bf16 / float32 |\n| --- | ---: | ---: |")
    a, b = torch.randn(3200, 512), torch.randn(512, 2048)
    full, r = ratio(lambda: (a.requires_grad_() @ b).sum())
    print(f"| GEMM 3200x512 @ 512x2048 | {1000 * full:.1f} | {r:.2f} |")
    B, T, I, H = 32, 100, 128, 128
    xs = torch.randn(B, T, I, requires_grad=True)
    for name in ("vanilla", "residual", "input", "forget", "lstm", "gru"):
        cell = LADDER[name](I, H)
        for implementation in ("fused", "native"):
            try:
                runner = Recurrent(cell, implementation)
                runner(xs[:, :2])
            except ValueError:
                continue
            full, r = ratio(lambda runner=runner: runner(xs)[0].float().square().mean())
            print(f"| {name}, {implementation}, B={B} T={T} I={I} H={H} | {1000 * full:.1f} | {r:.2f} |")
    model = build_model(LanguageConfig(), 65)
    ids = torch.randint(0, 65, (32, 101))

    def lm_step():
        logits, _ = model(ids[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, 65), ids[:, 1:].reshape(-1))

    full, r = ratio(lm_step)
    print(f"| default language model, one step (LSTM 512, B=32, T=100) | {1000 * full:.1f} | {r:.2f} |")


if __name__ == "__main__":
    main()
