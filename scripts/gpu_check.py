"""A short GPU check of the fast paths (run on a machine with CUDA): every implementation against
`reference` on the device (outputs, final states, gradients; float64), the ladder's and the new LSTMs'
(peephole, layer-norm, projected), a side-by-side timing against torch.nn.LSTM, and scan's solvers
against reference at T = 1024.
Usage: PYTHONPATH=. python3 scripts/gpu_check.py   (DEVICE=cpu tries the script itself on a CPU, at
small sizes)"""

import itertools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, "tests")
from test_kernels import LADDER, LENGTHS, NEW_LSTMS, assert_agree, make  # noqa: E402  (the CPU suite's oracle check)

import rnnlab as R  # noqa: E402
from rnnlab import kernels  # noqa: E402
from rnnlab.cells import OutputFeedbackCell  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cuda")
DRY = DEVICE == "cpu"  # the script tried on a CPU: the same calls at small sizes
assert DRY or torch.cuda.is_available(), "needs CUDA (DEVICE=cpu tries the script on a CPU)"
print("torch", torch.__version__, "CPU (dry run)" if DRY else torch.cuda.get_device_name())
passed = failed = 0
for cls, fb, rs, impl, lens in itertools.product(LADDER + NEW_LSTMS, (False, True), (True, False),
                                                 ("native", "fused", "scan"), (None, LENGTHS)):
    if cls is OutputFeedbackCell and rs:
        continue
    opts = {} if cls is OutputFeedbackCell else {"reads_state": rs}
    cell = make(cls, fb, **opts)
    if kernels.available(cell, impl, feedback=fb, lengths=lens is not None, masks=(None, None), training=True,
                         device=DEVICE):
        continue
    try:
        assert_agree(cell, impl, fb, lens, device=DEVICE)
        passed += 1
    except Exception as error:  # report every failure, not only the first
        failed += 1
        print(f"FAIL {impl} {cls.__name__} fb={fb} reads_state={rs} lengths={lens is not None}: {str(error)[:300]}")
print(f"agreement with reference on {DEVICE} (float64): {passed} passed, {failed} failed")


def synchronize():
    if not DRY:
        torch.cuda.synchronize()


def timeit(fn, reps=20):
    for _ in range(1 if DRY else 3):
        fn()
    synchronize()
    times = []
    for _ in range(2 if DRY else reps):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SIZES = ((8, 32, 32, 20),) if DRY else ((64, 256, 256, 100), (32, 512, 512, 100), (1, 128, 128, 1000))
for B, H, I, T in SIZES:
    xs = torch.randn(B, T, I, device=DEVICE)
    y = torch.randn(B, T, I, device=DEVICE)
    base = torch.nn.LSTM(I, H, batch_first=True).to(DEVICE)
    projected = torch.nn.LSTM(I, H, batch_first=True, proj_size=H // 2).to(DEVICE)
    cands = {"torch.nn.LSTM": lambda base=base, xs=xs: base(xs)[0],
             "torch.nn.LSTM proj": lambda projected=projected, xs=xs: projected(xs)[0]}
    for name, cell, impl, fed in (("lstm auto", R.LSTMCell(I, H), "auto", None),
                                  ("lstm fused", R.LSTMCell(I, H), "fused", None),
                                  ("lstm+fb fused", R.LSTMCell(I, H, I), "fused", y),
                                  ("lstm+fb auto", R.LSTMCell(I, H, I), "auto", y),
                                  ("forget fused", R.ForgetGatedCell(I, H), "fused", None),
                                  ("peephole fused", R.PeepholeLSTMCell(I, H), "fused", None),
                                  ("layernorm fused", R.LayerNormLSTMCell(I, H), "fused", None),
                                  ("projected fused", R.ProjectedLSTMCell(I, H, proj_size=H // 2), "fused", None),
                                  ("minLSTM scan", R.LSTMCell(I, H, reads_state=False), "scan", None),
                                  ("lstm reference", R.LSTMCell(I, H), "reference", None)):
        runner = R.Recurrent(cell.to(DEVICE), implementation=impl)
        cands[name] = lambda r=runner, f=fed, xs=xs: r(xs, y_prev=f)[0]
    cands["lstm fused eager"] = cands["lstm fused"]  # the same runner, CUDA graphs off (kernels/graphs.py)
    cands["forget fused eager"] = cands["forget fused"]
    row = {}
    for name, fn in cands.items():
        def step(fn=fn, eager=name.endswith("eager")):
            if eager:
                os.environ["RNNLAB_NO_CUDA_GRAPHS"] = "1"
            try:
                fn().sum().backward()
            finally:
                os.environ.pop("RNNLAB_NO_CUDA_GRAPHS", None)
        row[name] = timeit(step, reps=10 if T > 500 else 20)
    ref = row["torch.nn.LSTM"]
    print(f"\nfwd+bwd on {DEVICE}, (B,H,I,T)=({B},{H},{I},{T}): torch.nn.LSTM {ref * 1e3:.2f} ms")
    for name, t in row.items():
        print(f"  {name:16s} {t * 1e3:8.2f} ms  {t / ref:6.2f}x")


# scan at T = 1024, forward+backward: the doubling solver (the default on CUDA) and the chunked one
scan_module = sys.modules["rnnlab.kernels.scan"]
for B, H in ((1, 16),) if DRY else ((1, 128), (32, 256)):
    T = 64 if DRY else 1024
    xs = torch.randn(B, T, H, device=DEVICE)
    print(f"\nscan on {DEVICE}, fwd+bwd, (B,H,I,T)=({B},{H},{H},{T})")
    for cls in (R.ResidualCell, R.ForgetGatedCell, R.LSTMCell, R.GRUCell):
        row = {}
        for label, impl, solver in (("reference", "reference", None), ("scan doubling", "scan", scan_module.doubling),
                                    ("scan chunked", "scan", scan_module.chunked)):
            runner = R.Recurrent(cls(H, H, reads_state=False).to(DEVICE), implementation=impl)
            scan_module.default_solver = (lambda s: lambda like: s)(solver)
            row[label] = timeit(lambda runner=runner, xs=xs: runner(xs)[0].sum().backward(),
                                reps=5 if impl == "reference" else 20)
        ref = row["reference"]
        print(f"  {cls.__name__:16s} " + "  ".join(f"{k} {v * 1e3:7.2f} ms ({ref / v:5.1f}x)" for k, v in row.items()))
