"""The lecture's complexity table, measured: memory, compute and serial steps against sequence length T.

The lecture states, as a function of T:

    |                              | Memory | Compute | Serial steps |
    | Inference                    | O(1)   | O(T)    | O(T)         |
    | Training, BPTT               | O(T)   | O(T)    | O(T)         |
    | Training, BPTT with h(x, y*) | O(1)   | O(T)    | O(1)         |

`measure(config)` runs each regime (a way of running or training the cell) over a sweep of T and
records, per T:

- memory held for backward: bytes of the tensors autograd saves, counted by saved-tensor hooks,
  deduplicated by storage, live at the worst moment (inputs and parameters excluded: they exist
  before the step);
- peak memory: the most bytes allocated at once during the step above what was allocated before it
  (on CUDA `torch.cuda.max_memory_allocated`, on CPU the profiler's allocation records);
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matrix products only), beside the count
  predicted from the cell's analytical `flops_per_step` (see `expected_flops`);
- serial steps: the length of the longest chain of operations the schedule runs one after another
  (`serial_steps`);
- wall time: the fastest of a few runs (noisy on a shared CPU; the other three are exact).

`fit_exponent` turns each quantity's sweep into a growth exponent (the slope on log-log axes), which
is what the table compares with the stated O(.): O(1) -> 0, O(sqrt T) -> 0.5, O(T) -> 1, and
O(log T) -> 0 (log T grows slower than any power; its slope over T = 16..4096 is 0.2).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from . import kernels
from .cells import LADDER, Cell, OutputFeedbackCell
from .config import MAX_SEED, MAX_THREADS, ConfigError, knob, validate
from .instruments import SavedTensorTracker, fit_exponent, ops_per_step, peak_allocated
from .plots import pyplot, save_figure
from .runners import Recurrent, shift_right
from .tables import Table

__all__ = [
    "REGIMES", "QUANTITIES", "ComplexityConfig", "Point", "RegimeResult", "ComplexityResult",
    "measure", "fit_exponent", "serial_steps", "ops_per_step", "expected_flops", "sweep_from_text",
    "SavedTensorTracker", "peak_allocated", "plot_results",
]

# name -> (row title, stated memory, compute, serial steps as (O-notation, exponent), source)
REGIMES: dict[str, tuple[str, tuple[str, float], tuple[str, float], tuple[str, float], str]] = {
    "inference": ("Inference (streaming, no_grad)", ("O(1)", 0.0), ("O(T)", 1.0), ("O(T)", 1.0), "lecture"),
    "bptt": ("Training, BPTT", ("O(T)", 1.0), ("O(T)", 1.0), ("O(T)", 1.0), "lecture"),
    "teacher_forced": ("Training, h(x, y*), all steps at once", ("O(1)", 0.0), ("O(T)", 1.0), ("O(1)", 0.0), "lecture"),
    "teacher_forced_streamed": ("Training, h(x, y*), one step at a time", ("O(1)", 0.0), ("O(T)", 1.0), ("O(T)", 1.0),
                                "beyond"),
    "truncated": ("Training, truncated BPTT (window k)", ("O(k)", 0.0), ("O(T)", 1.0), ("O(T)", 1.0), "beyond"),
    "checkpointed": ("Training, BPTT, checkpoint every sqrt(T)", ("O(sqrt T)", 0.5), ("O(T)", 1.0), ("O(T)", 1.0),
                     "beyond"),
    "scan": ("Training, parallel scan (state read linearly)", ("O(T)", 1.0), ("O(T)", 1.0), ("O(log T)", 0.0),
             "beyond"),
}

# The measured quantities, their JSON keys and plot labels.
QUANTITIES: dict[str, str] = {
    "saved_bytes": "bytes held for backward",
    "peak_bytes": "peak bytes allocated",
    "flops": "FLOPs (matrix products)",
    "serial_steps": "serial steps (ops on the longest chain)",
    "wall_s": "wall time (s)",
}

# Ops on the chain of one level of a parallel scan: the combine (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)
# is a multiply then an add.
SCAN_COMBINE_OPS = 2


@dataclass(frozen=True)
class ComplexityConfig:
    """What `measure` sweeps: the sweep of sequence lengths T, and truncated BPTT's window k."""

    cell: str = knob("lstm", "ladder cell", tuple(n for n in LADDER if n != "feedback"))
    hidden: int = knob(64, "H (--quick: 32)", low=1)
    input: int = knob(32, "I (--quick: 16)", low=1)
    batch: int = knob(8, "B (--quick: 4)", low=1)
    T: tuple[int, ...] = knob(tuple(2 ** p for p in range(4, 13)), "sweep of T: FIRST..LAST doubling, or a comma "
                              "list (default 16..4096; --quick 16..256)", low=1,
                              parse=lambda text: sweep_from_text(text), metavar="FIRST..LAST")
    window: int = knob(16, "truncated BPTT's window k (--quick: 8)", low=1)
    repeats: int = knob(3, "timed runs per point, the fastest kept (--quick: 2)", low=1)
    device: str = knob("cpu", "where to measure (cuda: peak memory from torch.cuda.max_memory_allocated)",
                       ("cpu", "cuda"))
    threads: int = knob(1, "torch CPU threads: these matrices are small and the cores shared; more adds noise", low=1,
                      high=MAX_THREADS)
    regimes: tuple[str, ...] = knob(tuple(REGIMES), "regimes to measure, comma-separated", tuple(REGIMES))
    seed: int = knob(0, "seed of the inputs and weights", low=0, high=MAX_SEED)

    def __post_init__(self):
        validate(self)
        if len(self.T) < 2 or list(self.T) != sorted(set(self.T)):
            raise ConfigError("ComplexityConfig", "T", "at least two increasing ints >= 1 (e.g. 16..4096 or 16,64,256)",
                              self.T)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("ComplexityConfig", "device", "cpu here: torch sees no CUDA device", self.device)


QUICK = dict(hidden=32, input=16, batch=4, T=(16, 32, 64, 128, 256), window=8, repeats=2)


def sweep_from_text(text: str) -> tuple[int, ...]:
    """'16..4096' (doubling from the first to the last) or '16,64,256' -> a tuple of T."""
    try:
        if ".." in text:
            first, last = (int(part) for part in text.split(".."))
            if first < 1 or last < first:
                raise ValueError
            steps, t = [], first
            while t <= last:
                steps.append(t)
                t *= 2
            return tuple(steps)
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"T must be FIRST..LAST (doubling) or a comma list of ints; got {text!r}") from None


@dataclass
class Point:
    """One regime at one T."""

    steps: int
    saved_bytes: int
    peak_bytes: int
    flops: int
    flops_expected: int | None
    flops_rule: int
    serial_steps: int
    wall_s: float


@dataclass
class RegimeResult:
    name: str
    title: str
    stated: dict[str, str]
    stated_exponents: dict[str, float]
    points: list[Point] = field(default_factory=list)
    exponents: dict[str, float] = field(default_factory=dict)
    unavailable: str | None = None  # why the regime was skipped ("n/a: not built")


@dataclass
class ComplexityResult:
    config: ComplexityConfig
    device: str
    ops_per_step: int
    regimes: list[RegimeResult]

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "device": self.device, "ops_per_step": self.ops_per_step,
                "flops_convention": FLOPS_CONVENTION, "regimes": [asdict(r) for r in self.regimes]}

    def table(self) -> Table:
        """The lecture's table with the measured exponents beside the stated ones."""
        rows = []
        for r in self.regimes:
            mark = "" if REGIMES[r.name][4] == "lecture" else " (beyond the lecture)"
            if r.unavailable:
                rows.append((f"{r.title}{mark}", r.unavailable, "", "", "", ""))
                continue
            e, s, se = r.exponents, r.stated, r.stated_exponents
            ratios = [p.flops / p.flops_expected for p in r.points if p.flops_expected]
            rule = [p.flops / p.flops_rule for p in r.points]
            ratio = f"{min(ratios):.3f}..{max(ratios):.3f}" if ratios else "n/a"
            ratio += f" ({min(rule):.2f}..{max(rule):.2f})"
            rows.append((f"{r.title}{mark}",
                         f"{s['memory']} -> {se['memory']:g}: **{e['saved_bytes']:.2f}** / **{e['peak_bytes']:.2f}**",
                         f"{s['compute']} -> {se['compute']:g}: **{e['flops']:.2f}**", ratio,
                         f"{s['serial_steps']} -> {se['serial_steps']:g}: **{e['serial_steps']:.2f}**",
                         f"{e['wall_s']:.2f}"))
        return Table(("regime", "memory: stated -> measured (held for backward / peak)", "compute: stated -> measured",
                      "FLOPs / predicted (/ rule)", "serial steps: stated -> computed", "wall"), tuple(rows))


# --- the quantities (the instruments are in rnnlab.instruments) ------------------------------

def serial_steps(regime: str, steps: int, ops: int) -> int:
    """Ops the regime's schedule must run one after another for a sequence of T steps.

    `ops` is the chain inside one cell step (`ops_per_step`); a backward step is counted as long as
    its forward step. Per regime, the steps on the longest chain are:

    - inference: T; s^t needs s^{t-1}.
    - bptt: 2T; the forward chain, then the backward chain (dL/ds^{t-1} needs dL/ds^t).
    - truncated: 2T; every window is a forward then a backward, and the next window starts from
      the previous one's final state (the update between windows, in training, orders them too).
    - checkpointed: 3T; the forward, then per chunk a recomputed forward before its backward.
    - teacher_forced: 2; the targets replace y^{t-1} and the state is not read, so no step waits
      for another: one parallel forward, one parallel backward, whatever T.
    - teacher_forced_streamed: 2T; the same independent steps, run one after another so that only
      one step's activations are held (the O(1)-memory schedule; nothing forces the order).
    - scan: the gates of all steps at once (one step's chain), then the doubling scan of a parallel
      device (`kernels.scan.doubling`): ceil(log2 T) levels, `SCAN_COMBINE_OPS` each; the backward
      is a reversed scan. That is the dependency depth a parallel device can exploit; on a CPU with
      the compiled loops the same recurrence runs as one sequential pass on one core.
    """
    if steps < 1:
        raise ValueError(f"serial_steps: steps must be >= 1; got {steps}")
    if regime == "scan":
        levels = (steps - 1).bit_length()  # ceil(log2 T)
        return 2 * (ops + SCAN_COMBINE_OPS * levels)
    chain = {"inference": steps, "bptt": 2 * steps, "truncated": 2 * steps, "checkpointed": 3 * steps,
             "teacher_forced": 2, "teacher_forced_streamed": 2 * steps}
    if regime not in chain:
        raise ValueError(f"serial_steps: regime must be one of {list(REGIMES)}; got {regime!r}")
    return chain[regime] * ops


FLOPS_CONVENTION = (
    "FLOPs count the matrix products only (2 per multiply-add), as flops_per_step does. Rough rule: "
    "forward = flops_per_step x T, training = 3 x forward (a product's backward is two products of its "
    "size), checkpointed = 4 x forward. Exact prediction: forward F*T, plus the weight gradients F*T, "
    "plus the input gradients of the products whose input needs a gradient (the state's V s at every step whose "
    "incoming state needs one; x and y* need none), plus one more forward F*T when checkpointing recomputes."
)


# The rough rule's passes over the sequence: forward 1, backward 2, checkpointing's recompute 1.
RULE_PASSES = {"inference": 1, "bptt": 3, "truncated": 3, "checkpointed": 4, "teacher_forced": 3,
               "teacher_forced_streamed": 3, "scan": 3}


def expected_flops(regime: str, cell: Cell, batch: int, steps: int, window: int) -> int | None:
    """The FLOPs `FlopCounterMode` should count for the regime, from `cell.flops_per_step`.

    See FLOPS_CONVENTION. The step at the start of a graph (s^0, or a state detached at a
    truncation point) has no gradient to pass back through V s; checkpointing makes s^0 require a
    gradient (the reentrant checkpoint needs one) so every step has it. None for the scan, whose
    work depends on its kernel."""
    forward = cell.flops_per_step(batch) * steps
    K, H = len(cell.gates), cell.hidden_size
    width = K * H if cell.transition is None else H
    recurrent = 2 * width * H * batch if cell.reads_state else 0  # V s: its input-gradient costs the same
    transition = 0  # the deep transition's inputs always need a gradient (they depend on the weights)
    if cell.transition is not None:
        transition = sum(2 * m.in_features * m.out_features * batch for m in cell.transition
                         if isinstance(m, torch.nn.Linear)) * steps
    if regime == "inference":
        return forward
    if regime in ("teacher_forced", "teacher_forced_streamed"):
        return 2 * forward + transition
    if regime == "bptt":
        return 2 * forward + transition + recurrent * (steps - 1)
    if regime == "truncated":
        return 2 * forward + transition + recurrent * (steps - math.ceil(steps / window))
    if regime == "checkpointed":
        return 3 * forward + transition + recurrent * steps
    return None


# --- the regimes ------------------------------------------------------------------------------

def _loss(ys: torch.Tensor, total: int) -> torch.Tensor:
    """The same loss in every regime, so that they differ only in schedule: mean of squared outputs
    over the whole sequence, accumulated chunk by chunk as sum / (B*T*H)."""
    return ys.square().sum() / total


@dataclass
class _Setup:
    """The modules a sweep shares, built once."""

    cell: Cell
    runner: Recurrent
    feedback_cell: OutputFeedbackCell
    scan_runner: Recurrent | None
    window: int


def _inference(setup: _Setup, xs, y_prev):
    """Streaming: one step at a time under no_grad, state carried, each output consumed at once."""
    with torch.no_grad():
        state = setup.runner.initial_state(xs.shape[0], xs.device, xs.dtype)
        total = xs.new_zeros(())
        for x_t in xs.unbind(1):
            out, state = setup.runner.step(x_t, state)
            total += out.square().sum()


def _bptt(setup: _Setup, xs, y_prev):
    ys, _ = setup.runner(xs)
    _loss(ys, ys.numel()).backward()


def _truncated(setup: _Setup, xs, y_prev):
    """Forward and backward window by window; the state crosses windows detached, so a window's
    graph is freed before the next is built."""
    B, T = xs.shape[:2]
    total = B * T * setup.cell.hidden_size
    state = setup.runner.initial_state(B, xs.device, xs.dtype)
    for start in range(0, T, setup.window):
        ys, state = setup.runner(xs[:, start:start + setup.window], state)
        _loss(ys, total).backward()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _checkpointed(setup: _Setup, xs, y_prev):
    """BPTT with torch.utils.checkpoint over chunks of ceil(sqrt T) steps: only the states between
    chunks are kept; each chunk's activations are recomputed during its backward. Reentrant, so the
    recomputation's saved tensors go through the tracker's hooks; it needs an input that requires a
    gradient, so s^0 does."""
    B, T = xs.shape[:2]
    chunk = math.ceil(math.sqrt(T))
    total = B * T * setup.cell.hidden_size
    state = setup.runner.initial_state(B, xs.device, xs.dtype)
    parts = [s.requires_grad_() for s in (state if isinstance(state, tuple) else (state,))]

    def run_chunk(x, *parts):
        ys, new = setup.runner(x, tuple(parts) if len(parts) > 1 else parts[0])
        return (_loss(ys, total), *(new if isinstance(new, tuple) else (new,)))

    loss = 0
    for start in range(0, T, chunk):
        part_loss, *parts = checkpoint(run_chunk, xs[:, start:start + chunk], *parts, use_reentrant=True)
        loss = loss + part_loss
    with warnings.catch_warnings():  # torch 2.4's own recomputation calls its deprecated torch.cpu.amp.autocast
        warnings.filterwarnings("ignore", r".*torch\.cpu\.amp\.autocast", FutureWarning)
        loss.backward()


def _teacher_forced(setup: _Setup, xs, y_prev):
    """The lecture's special case, s^t = h(x^t, y*^{t-1}), all steps at once. The state is not read,
    so the cell's update is its input projection then its activation, over all (B, T) together;
    a scan implementation, where built, computes the same thing through the runner."""
    cell = setup.feedback_cell
    if "scan" in kernels.IMPLEMENTATIONS and kernels.available(cell, "scan") is None:
        ys, _ = Recurrent(cell, implementation="scan")(xs, y_prev=y_prev)
    else:
        ys = cell.combine(cell.project_input(xs, y_prev), None, None)  # (B, T, H)
    _loss(ys, ys.numel()).backward()


def _teacher_forced_streamed(setup: _Setup, xs, y_prev):
    """The special case one step at a time, each step's backward right after its forward: the
    steps are independent, so nothing is held from one to the next."""
    cell = setup.feedback_cell
    B, T = xs.shape[:2]
    total = B * T * cell.hidden_size
    state = cell.initial_state(B, xs.device, xs.dtype)
    for x_t, y_t in zip(xs.unbind(1), y_prev.unbind(1)):
        out, _ = cell.step(x_t, state, y_t)
        _loss(out, total).backward()


def _scan(setup: _Setup, xs, y_prev):
    ys, _ = setup.scan_runner(xs)
    _loss(ys, ys.numel()).backward()


_RUN = {"inference": _inference, "bptt": _bptt, "truncated": _truncated, "checkpointed": _checkpointed,
        "teacher_forced": _teacher_forced, "teacher_forced_streamed": _teacher_forced_streamed, "scan": _scan}


def _scan_runner(config: ComplexityConfig) -> tuple[Recurrent | None, str | None]:
    """The cell with reads_state=False (linear in the state) on the scan kernel, or why not."""
    if "scan" not in kernels.IMPLEMENTATIONS:
        return None, "n/a: not built"
    cell = LADDER[config.cell](config.input, config.hidden, reads_state=False).to(config.device)
    reason = kernels.available(cell, "scan")
    if reason is not None:
        return None, f"n/a: {reason}"
    return Recurrent(cell, implementation="scan"), None


def _measure_point(regime: str, setup: _Setup, config: ComplexityConfig, steps: int, ops: int) -> Point:
    gen = torch.Generator().manual_seed(config.seed + steps)
    xs = torch.randn(config.batch, steps, config.input, generator=gen).to(config.device)
    # Teacher forcing's data: the targets y* shifted right, y_prev[:, t] = y*^{t-1}. Like xs it is
    # input data, there before the step, so neither counts as memory the regime adds.
    y_prev = shift_right(torch.randn(config.batch, steps, config.input, generator=gen)).to(config.device)
    modules = [setup.runner, setup.feedback_cell] + ([setup.scan_runner] if setup.scan_runner else [])
    params = [p for m in modules for p in m.parameters()]
    run = _RUN[regime]

    def step():
        for p in params:  # every run allocates its gradients afresh, so every run is the same
            p.grad = None
        run(setup, xs, y_prev)

    def sync():
        if config.device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: first-call allocations and dispatch caches stay out of the numbers
    walls = []
    for _ in range(config.repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        walls.append(time.perf_counter() - start)
    with SavedTensorTracker(external=[xs, y_prev, *params]) as saved, FlopCounterMode(display=False) as flops:
        step()
    peak = peak_allocated(step, config.device)
    cell = setup.feedback_cell if regime.startswith("teacher_forced") else setup.cell
    return Point(steps=steps, saved_bytes=saved.peak, peak_bytes=peak, flops=flops.get_total_flops(),
                 flops_expected=expected_flops(regime, cell, config.batch, steps, config.window),
                 flops_rule=cell.flops_per_step(config.batch) * steps * RULE_PASSES[regime],
                 serial_steps=serial_steps(regime, steps, ops), wall_s=min(walls))


def _chain(cell: Cell, device: str) -> int:
    """`ops_per_step` of a cell that may live on the GPU (the count runs on the CPU)."""
    count = ops_per_step(cell.cpu())
    cell.to(device)
    return count


def measure(config: ComplexityConfig, progress: Callable[[str], None] | None = None) -> ComplexityResult:
    """Run every regime of `config` over its sweep of T; fit each quantity's exponent.

    `progress`, if given, is called with a short line before each regime (the CLI prints it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _measure(config, progress)
    finally:
        torch.set_num_threads(threads)


def _measure(config: ComplexityConfig, progress) -> ComplexityResult:
    torch.manual_seed(config.seed)
    cell = LADDER[config.cell](config.input, config.hidden).to(config.device)
    feedback_cell = OutputFeedbackCell(config.input, config.hidden, config.input).to(config.device)
    scan_runner, scan_missing = _scan_runner(config)
    setup = _Setup(cell, Recurrent(cell, implementation="reference"), feedback_cell, scan_runner, config.window)
    # The chain inside one step of the cell each regime steps: the special case steps the
    # output-feedback cell, the scan its cell without state reads.
    chains = {"cell": _chain(cell, config.device), "feedback": _chain(feedback_cell, config.device),
              "scan": _chain(scan_runner.cell, config.device) if scan_runner else 0}
    results = []
    for regime in config.regimes:
        title, memory, compute, serial, _ = REGIMES[regime]
        result = RegimeResult(regime, title, {"memory": memory[0], "compute": compute[0], "serial_steps": serial[0]},
                              {"memory": memory[1], "compute": compute[1], "serial_steps": serial[1]})
        results.append(result)
        if regime == "scan" and scan_missing:
            result.unavailable = scan_missing
            continue
        if progress:
            progress(f"{regime}: T = {', '.join(map(str, config.T))}")
        ops = chains["scan" if regime == "scan" else "feedback" if regime.startswith("teacher_forced") else "cell"]
        result.points = [_measure_point(regime, setup, config, t, ops) for t in config.T]
        result.exponents = {q: fit_exponent(config.T, [getattr(p, q) for p in result.points]) for q in QUANTITIES}
    return ComplexityResult(config, config.device, chains["cell"], results)


# --- presenting -------------------------------------------------------------------------------

def plot_results(result: ComplexityResult, out_dir: Path) -> list[Path]:
    """One log-log PNG per quantity, a line per regime; returns the files written."""
    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for quantity, label in QUANTITIES.items():
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=80)
        for r in result.regimes:
            points = [(p.steps, getattr(p, quantity)) for p in r.points if getattr(p, quantity) > 0]
            if points:
                ts, vs = zip(*points)
                ax.plot(ts, vs, marker="o", markersize=3, label=f"{r.name} ({r.exponents[quantity]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs T ({result.config.cell}, H={result.config.hidden}; slope in legend)", fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # every regime measured zero (inference saves no bytes): say so, not an empty legend's warning
            ax.text(0.5, 0.5, "zero at every T for these regimes", transform=ax.transAxes, ha="center")
        ax.grid(True, which="both", alpha=0.3)
        written.append(save_figure(fig, out_dir / f"{quantity}.png", dpi=80))
    return written
