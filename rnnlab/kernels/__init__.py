"""Implementations of the time loop behind one dispatch function.

    run(cell, xs, state, y_prev, lengths, masks, implementation) -> (outputs (B, T, H), final state)

- `reference`: the step loop over the cell module, the oracle every other one is tested against;
- `native`: torch's own fused kernels, where they compute the cell exactly (see `native.py`);
- `scan`: a parallel scan over time for cells linear in their state (`reads_state=False`);
- `fused`: one input GEMM for all steps, one GEMM per step, hand-written backward through time;
- `auto`: the first of `order(device, cell, grad, autocast)` that can serve the configuration: native,
  scan, fused, reference; but on CPU where the compiled loops are built, fused first, except for the
  LSTM when no gradient is recorded or under autocast (see `order`).

The configuration is the cell plus the context of the call: whether y_prev is given (`feedback`),
whether there are `lengths`, the dropout `masks` (mx, mh) sampled for this sequence, whether
the cell is `training`, whether autograd records the call (`grad`) and whether torch.autocast is on
for its device (`autocast`; both False when not given), and the `device` type of the tensors ('cpu'
when not given).
`available` says why an implementation cannot serve it (None if it can).

Every implementation keeps the same promise for padded batches (`lengths`): outputs past a
sequence's end are zero, its final state is the one at its last valid step, and the padding is never
read, so NaN or inf there reach neither results nor gradients (tests/test_bad_inputs.py).

Two contexts change the dispatch: while a tracer records (torch.jit.trace, the ONNX exporter) `auto`
and `native` run torch's kernel where it serves (an ONNX LSTM/GRU/RNN op), everything else the
`traceable` loop (TorchScript: one ONNX Loop, the length dynamic); under torch.autocast `fused` runs
in float32 with autocast off.
"""

from __future__ import annotations

import torch

from ..checks import ArgumentError, spelled
from . import compiled
from .fused import fused
from .fused import unavailable as _fused_unavailable
from .native import cpu_autocast_lstm_runs, native
from .native import unavailable as _native_unavailable
from .reference import reference, valid_steps, where_state, without_padding
from .scan import scan
from .scan import unavailable as _scan_unavailable
from .traceable import traceable
from .traceable import unavailable as _traceable_unavailable

IMPLEMENTATIONS = {"reference": reference, "native": native, "scan": scan, "fused": fused}
_UNAVAILABLE = {"reference": lambda cell, **context: None, "native": _native_unavailable,
                "scan": _scan_unavailable, "fused": _fused_unavailable}
# Fastest first: torch's kernels, then scan's O(log T) serial steps, then one GEMM per step, then the oracle.
AUTO_ORDER = ("native", "scan", "fused", "reference")
COMPILED_ORDER = ("fused", "native", "scan", "reference")
COMPILED_LSTM_ORDER = ("native", "fused", "scan", "reference")  # without gradients, or under autocast


def order(device: str = "cpu", cell=None, grad: bool = False, autocast: bool = False) -> tuple[str, ...]:
    """The implementations `auto` tries for `cell`, fastest first, on this device type, with or
    without autograd recording the call (`grad`), under torch.autocast or not.

    On CPU with the compiled loops (compiled.py; float and double cells) `fused` goes first,
    measured with `rnnlab bench` (float32, one thread, docs/BENCHMARKS.md): its C++ loop beats
    torch's own GRU and tanh-RNN kernels at every size of the grid, forward and forward+backward
    (0.67-0.92x torch.nn.GRU at B >= 32, 0.15x at B = 1, T = 1000 forward+backward), and `scan`
    for the cells both serve (reads_state=False: one pass per step in cache; on one core scan's
    parallelism buys nothing). For the LSTM it goes first when gradients are recorded: whole training
    commands run 0.50-0.91x native's time where the LSTM's work dominates (docs/RESULTS.md, "The
    LSTM's recorded results under the fused loop"); without gradients torch's oneDNN LSTM forward is
    1.05-1.25x faster at batched sizes, so `native` stays first there (docs/BENCHMARKS.md, "The LSTM
    under auto"); and under autocast, where torch's kernel computes in bfloat16 and the loop in float32
    (the default language model's LSTM, forward+backward: 70 against 132 ms).
    Elsewhere (GPU, other dtypes, or no compiler: Python loops) torch's kernels, then scan's few
    serial steps.
    """
    dtype = cell.weight_ih.dtype if cell is not None else torch.float32
    if compiled.serves(device, dtype):
        native_lstm = cell is not None and cell.family == "lstm" and (not grad or autocast)
        return COMPILED_LSTM_ORDER if native_lstm else COMPILED_ORDER
    return AUTO_ORDER


def records_gradients(cell, *tensors) -> bool:
    """Whether autograd records a call of `cell` on `tensors` (None entries ignored): `order`'s `grad`."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in cell.parameters())


def available(cell, implementation: str, **context) -> str | None:
    """Why `implementation` cannot serve this configuration, or None if it can.

    context: feedback (bool, y_prev given), lengths (bool), masks ((mx, mh), None when off),
    training (bool), grad (bool, autograd records the call), autocast (bool), device (str)."""
    reason = _marked_reason(cell, implementation, **context)
    return None if reason is None else spelled(reason)


def _marked_reason(cell, implementation: str, **context) -> str | None:
    """`available`'s reason as the implementations give it: the cell's arguments marked {like_this}
    (checks.spelled), so that `choose`'s error can name them as the caller set them (the CLI: flags)."""
    if implementation not in _UNAVAILABLE:
        return f"unknown implementation {implementation!r}; expected one of {sorted(_UNAVAILABLE)}"
    return _UNAVAILABLE[implementation](cell, **context)


def choose(cell, implementation: str, **context) -> str:
    """Resolve 'auto' to the fastest implementation valid for this configuration; ValueError when an
    explicit implementation cannot serve it."""
    if implementation == "auto":
        candidates = order(context.get("device", "cpu"), cell, context.get("grad", False),
                           context.get("autocast", False))
        return next(name for name in candidates if _marked_reason(cell, name, **context) is None)
    reason = _marked_reason(cell, implementation, **context)
    if reason is not None:
        raise ArgumentError("Recurrent", f"implementation={implementation!r} cannot run {type(cell).__name__} here: "
                                         f"{reason}")
    return implementation


def exporting() -> bool:
    """Whether a tracer is recording this call: torch.jit.trace, or the TorchScript-based ONNX exporter
    (torch.onnx.export(dynamo=False), which traces; 0.1 us a call, against 9 us for
    torch.onnx.is_in_onnx_export, which would add up in step-by-step loops)."""
    return torch.jit.is_tracing()


def _export_choice(cell, implementation: str, **context) -> str:
    """While tracing: torch's kernels where they serve (the ONNX exporter writes them as ONNX
    LSTM/GRU/RNN ops) for `auto` and `native`; every other implementation, whose Python loop a tracer
    would unroll to a fixed length and whose C++ loops it would record as constants, runs the
    scripted loop of traceable.py (one ONNX Loop)."""
    if implementation in ("auto", "native") and not context["lengths"] and _native_unavailable(cell, **context) is None:
        return "native"
    reason = _traceable_unavailable(cell, **context)
    if reason is not None:
        raise ValueError(f"Recurrent: cannot export or trace {type(cell).__name__}: {reason}")
    return "traceable"


def run(cell, xs, state, y_prev, lengths, masks, implementation: str = "auto"):
    masks = tuple(masks) if masks is not None else (None, None)
    if exporting():
        name = _export_choice(cell, implementation, masks=masks, lengths=lengths is not None)
        return (traceable if name == "traceable" else native)(cell, xs, state, y_prev, lengths, masks)
    states = state if isinstance(state, tuple) else (state,)
    autocast = xs.device.type != "meta" and torch.is_autocast_enabled(xs.device.type)  # autocast knows no meta
    name = choose(cell, implementation, feedback=y_prev is not None, lengths=lengths is not None,
                  masks=masks, training=cell.training, device=xs.device.type, autocast=autocast,
                  grad=implementation == "auto" and records_gradients(cell, xs, y_prev, *states))
    if name == "fused" and autocast:
        return _without_autocast(IMPLEMENTATIONS[name], cell, xs, state, y_prev, lengths, masks)
    return IMPLEMENTATIONS[name](cell, xs, state, y_prev, lengths, masks)


def _without_autocast(implementation, cell, xs, state, y_prev, lengths, masks):
    """Under torch.autocast: `fused`'s hand-written loops (C++, Python, CUDA graphs) compute in the
    parameters' dtype, in place into buffers of one dtype, which autocast's casts would break. They
    run with autocast off on inputs cast to that dtype (float32: the recurrence accumulates in it),
    and return it; gradients flow back through the casts to the lower-precision inputs."""
    dtype = cell.weight_ih.dtype
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    state = tuple(map(cast, state)) if isinstance(state, tuple) else cast(state)
    with torch.autocast(xs.device.type, enabled=False):
        return implementation(cell, cast(xs), state, cast(y_prev), lengths, tuple(map(cast, masks)))


__all__ = ["run", "choose", "exporting", "traceable", "available", "reference", "native", "scan", "fused",
           "valid_steps", "where_state", "without_padding",
           "IMPLEMENTATIONS", "AUTO_ORDER", "COMPILED_ORDER", "COMPILED_LSTM_ORDER", "order",
           "records_gradients", "cpu_autocast_lstm_runs"]
