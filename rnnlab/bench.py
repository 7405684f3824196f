"""Speed side by side: rnnlab's implementations against the peers a user would pick instead.

Everything is timed in ONE process, so that all candidates share the machine's state: after a
warm-up call each (at each thread count), each repetition of one (size, pass) group runs every thread
count in turn (the first count alternating) and at each count every candidate once, round-robin (the
starting candidate rotates), so drift on a shared, noisy machine hits all candidates and all thread
counts alike, and repetition i of every candidate at every count was timed within one round.
Each candidate reports the median and min-max of its repetitions, the ratio of its median to
torch.nn.LSTM's in the same group (and, with several thread counts, `thread_table()`: the change of
that ratio from the first count to each other, paired within each round), and the fraction of the
machine's matrix-multiply peak it reaches (the peak is measured here, at the same thread count, as
the best of square fp32 matmuls before and after the run; on a shared machine a share can exceed 100%
when the peak was caught slow).

The peers: torch.nn.LSTM (the baseline of every ratio), torch.nn.GRU, torch.nn.RNN (tanh), and a
plain Python loop of torch.nn.LSTMCell (what a user writes by hand). The rnnlab candidates: each
ladder cell in up to three variants (`plain`; `feedback`, output feedback of size O = I, teacher
forced with a random y_prev; `linear`, reads_state=False, the recurrences a scan can serve) under
each implementation. An implementation that cannot serve a configuration is reported with its
reason instead of a time, so the same command lights up as the fast paths land. `auto` is named by
what it dispatches to, `[auto: native/fused]` where that differs without and with gradients
(kernels.order); each row's `resolved` says which ran in its pass.

Two passes: `forward` (under no_grad) and `forward+backward` (the sum of the outputs, backward to
the parameters; the inputs do not require grad, for every candidate alike).

FLOPs count the matrix products only (`Cell.flops_per_step`); forward+backward counts three times
the forward (each product has two of the same size in the backward: input and weight gradients).

`run_bench` returns a typed `BenchResult` (rows, the machine, the peaks): its `table()` is printed by
the one table printer (rnnlab.tables) and its `to_dict()` is the `--json` report, whose layout
scripts/bench_targets.py and docs/data/*.json share; the `rnnlab bench` command in cli.py prints it.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from . import kernels
from .cells import LADDER
from .config import MAX_SEED, MAX_THREADS, ConfigError, knob, validate
from .kernels import compiled
from .kernels.time_major import product
from .runners import IMPLEMENTATION_NAMES, Recurrent
from .tables import Table

__all__ = ["Size", "BenchConfig", "DEFAULT_SIZES", "QUICK_SIZES", "VARIANTS", "PASSES", "PEERS", "QUICK",
           "Machine", "Peak", "BenchRow", "BenchResult", "parse_sizes", "run_bench", "machine", "matmul_peak"]


@dataclass(frozen=True)
class Size:
    """One point of the grid: batch B, hidden H, input I, time steps T."""

    B: int
    H: int
    I: int
    T: int

    def __str__(self) -> str:
        return f"{self.B}x{self.H}x{self.I}x{self.T}"


DEFAULT_SIZES = (Size(32, 128, 128, 100), Size(64, 256, 256, 100), Size(32, 512, 512, 100), Size(1, 128, 128, 1000))
QUICK_SIZES = (Size(32, 128, 128, 100), Size(1, 64, 64, 200))
VARIANTS = ("plain", "feedback", "linear")
PASSES = ("forward", "forward+backward")
PEERS = ("torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNN", "LSTMCell loop")
BASELINE = "torch.nn.LSTM"
# The torch.nn layer that computes the same cell, for the second ratio (the auto target).
MATCHING_PEER = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU", "vanilla": "torch.nn.RNN",
                 "projected-lstm": "torch.nn.LSTM proj"}
# torch.nn.LSTM(proj_size=H // 2), the projected LSTM's own peer: timed only when that cell is benched
PROJECTED_PEER = "torch.nn.LSTM proj"
# Cells whose update stays a recurrence when the gates stop reading the state (reads_state=False);
# vanilla would lose its recurrence altogether and the feedback cell never reads its state.
LINEAR_CELLS = ("residual", "input", "forget", "lstm", "gru")


@dataclass(frozen=True)
class BenchConfig:
    """What to time; each field declares its type, range and help once (rnnlab.config)."""

    sizes: tuple[Size, ...] = knob(DEFAULT_SIZES, "comma-separated BxHxIxT, e.g. 32x128x128x100,1x128x128x1000; "
                                   "the default: the four sizes of docs/BENCHMARKS.md",
                                   parse=lambda text: parse_sizes(text), metavar="BxHxIxT,...")
    cells: tuple[str, ...] = knob(tuple(LADDER), "ladder cells, comma-separated, or 'all'", tuple(LADDER))
    impls: tuple[str, ...] = knob(IMPLEMENTATION_NAMES, "rnnlab implementations, comma-separated, or 'all' (the "
                                  "torch.nn peers always run: they are the baseline)", IMPLEMENTATION_NAMES)
    variants: tuple[str, ...] = knob(VARIANTS, "plain, feedback (teacher forced), linear (reads_state=False)", VARIANTS)
    passes: tuple[str, ...] = knob(PASSES, "forward, forward+backward", PASSES)
    threads: tuple[int, ...] = knob((1,), "torch thread counts, comma-separated, e.g. 1,2: each repetition times every "
                                    "count in turn; the table shows them side by side, and a second table the "
                                    "change of each ratio from the first count, paired by repetition", low=1,
                                    high=MAX_THREADS)
    reps: int = knob(5, "timed repetitions per candidate (--quick: 3)", low=1)
    warmup: int = knob(1, "untimed calls per candidate before the repetitions", low=1)
    # A candidate whose first warm-up call takes longer is skipped (and reported so): this is what
    # keeps the default grid near 10 minutes when slow paths meet T = 1000.
    max_call_s: float = knob(5.0, "skip a candidate whose warm-up call takes longer than this many seconds", above=0)
    seed: int = knob(0, "seed of the inputs and weights", low=0, high=MAX_SEED)
    device: str = knob("cpu", "where to run: each call on cuda is timed to its completion", ("cpu", "cuda"))

    def __post_init__(self):
        validate(self)
        if len(set(self.threads)) != len(self.threads):
            raise ConfigError("BenchConfig", "threads", "distinct thread counts", self.threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("BenchConfig", "device", "cpu here: torch sees no CUDA device", self.device)


QUICK = dict(sizes=QUICK_SIZES, reps=3)  # `rnnlab bench --quick`: a small grid, under a minute


def parse_sizes(text: str) -> tuple[Size, ...]:
    """'32x128x128x100,1x128x128x1000' -> sizes (B, H, I, T)."""
    sizes = []
    for part in text.split(","):
        fields = part.strip().lower().split("x")
        if len(fields) != 4 or not all(f.isdigit() and int(f) > 0 for f in fields):
            raise ValueError(f"sizes must be comma-separated BxHxIxT of positive integers, e.g. "
                             f"32x128x128x100,1x128x128x1000; got {text!r}")
        sizes.append(Size(*map(int, fields)))
    return tuple(sizes)


# --- the machine --------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Machine:
    """What a reader needs to judge the numbers: CPU, cores, torch, threads, the GPU if used, whether the
    C++ loops were built, and the vector width torch's CPU kernels (and so the C++ loops) use ("AVX512",
    "AVX2": the same CPU name can be either; None where the report does not say)."""

    cpu: str
    cores: int | None
    torch: str
    python: str
    threads: tuple[int, ...]
    device: str
    gpu: str | None = None
    compiled_loops: bool | None = None
    vectors: str | None = None

    def to_dict(self) -> dict:
        found = {"cpu": self.cpu, "cores": self.cores, "torch": self.torch, "python": self.python,
                 "threads": list(self.threads), "device": self.device}
        if self.gpu is not None:
            found["gpu"] = self.gpu
        if self.compiled_loops is not None:
            found["compiled_loops"] = self.compiled_loops
        if self.vectors is not None:
            found["vectors"] = self.vectors
        return found

    def describe(self) -> str:
        """One line: 'cpu: ...  cores: 2  torch 2.13.0  threads: 1,2' (and the GPU, the C++ loops)."""
        line = f"cpu: {self.cpu}" + (f" ({self.vectors})" if self.vectors else "")
        line += f"  cores: {self.cores}  torch {self.torch}  threads: {','.join(map(str, self.threads))}"
        if self.compiled_loops is not None:
            line += f"  C++ loops: {'built' if self.compiled_loops else 'unavailable (Python loops)'}"
        return line + (f"  gpu: {self.gpu}" if self.gpu else "")


def machine(threads: tuple[int, ...], device: str = "cpu", compiled_loops: bool | None = None) -> Machine:
    """This machine, at these thread counts and on this device."""
    return Machine(cpu_model(), os.cpu_count(), torch.__version__, platform.python_version(), tuple(threads), device,
                   torch.cuda.get_device_name() if device == "cuda" else None, compiled_loops,
                   torch.backends.cpu.get_cpu_capability())


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(sizes: tuple[int, ...] = (512, 1024), reps: int = 10, device: str = "cpu") -> float:
    """Best FLOP/s of square (n x n) @ (n x n) fp32 matmuls at the current thread count: the
    ceiling that an RNN's matrix products could reach on this machine. Several sizes and the best
    repetition, because on a shared machine one size at one moment can land on a slow spell. On CPU
    both torch.mm and oneDNN's product (time_major.product, what the C++ loops and torch.nn.LSTM use):
    on AMD CPUs MKL's mm runs its AVX2 kernels, half oneDNN's rate on AVX-512 (docs/BENCHMARKS.md)."""
    if device == "cuda":
        sizes = (4096, 8192)  # a GPU needs large products to reach its peak
    products = [torch.mm]
    if device == "cpu" and compiled.extension() is not None:
        products.append(product)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for multiply in products:
            multiply(a, b)  # warm-up: first call pays for allocation and dispatch set-up
            for _ in range(reps):
                _synchronize(device)
                start = time.perf_counter()
                multiply(a, b)
                _synchronize(device)
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


# --- the candidates -----------------------------------------------------------------------------

@dataclass
class Candidate:
    """One thing to time at one size: `forward(grad)` runs it once; `flops` of one forward."""

    name: str
    kind: str  # "peer" or "rnnlab"
    cell: str | None = None
    variant: str | None = None
    impl: str | None = None
    resolved: dict[bool, str] = field(default_factory=dict)  # what `auto` dispatches to, by pass: backward?
    flops: int = 0
    forward: Callable[[bool], torch.Tensor] | None = None
    params: list = field(default_factory=list)
    reason: str | None = None  # why it cannot be timed (n/a)


def _lstm_flops(size: Size, gates: int) -> int:
    """Matrix-product FLOPs of one forward of a torch.nn layer with `gates` gates."""
    return 2 * gates * size.H * (size.I + size.H) * size.B * size.T


def _peer(name: str, size: Size, xs: torch.Tensor) -> Candidate:
    if name == "LSTMCell loop":
        cell = torch.nn.LSTMCell(size.I, size.H).to(xs.device)

        def forward(grad: bool):
            h = xs.new_zeros(size.B, size.H)
            c = xs.new_zeros(size.B, size.H)
            outs = []
            for x_t in xs.unbind(1):  # the loop a user writes by hand
                h, c = cell(x_t, (h, c))
                outs.append(h)
            return torch.stack(outs, 1)

        return Candidate(name, "peer", flops=_lstm_flops(size, 4), forward=forward, params=list(cell.parameters()))
    if name == PROJECTED_PEER:  # the ladder's ProjectedLSTMCell default: P = H // 2
        layer = torch.nn.LSTM(size.I, size.H, batch_first=True, proj_size=max(size.H // 2, 1)).to(xs.device)
        flops = 2 * 4 * size.H * (size.I + max(size.H // 2, 1)) * size.B * size.T + \
            2 * max(size.H // 2, 1) * size.H * size.B * size.T
        return Candidate(name, "peer", flops=flops, forward=lambda grad: layer(xs)[0], params=list(layer.parameters()))
    layer_type, gates = {"torch.nn.LSTM": (torch.nn.LSTM, 4), "torch.nn.GRU": (torch.nn.GRU, 3),
                         "torch.nn.RNN": (torch.nn.RNN, 1)}[name]
    layer = layer_type(size.I, size.H, batch_first=True).to(xs.device)
    return Candidate(name, "peer", flops=_lstm_flops(size, gates), forward=lambda grad: layer(xs)[0],
                     params=list(layer.parameters()))


def _variants(cell: str, wanted: tuple[str, ...]) -> list[str]:
    """The variants that make sense for a cell: the feedback cell exists only with feedback."""
    if cell == "feedback":
        return [v for v in wanted if v == "feedback"]
    return [v for v in wanted if v != "linear" or cell in LINEAR_CELLS]


def _rnnlab(cell_name: str, variant: str, impl: str, size: Size, xs: torch.Tensor, y_prev: torch.Tensor) -> Candidate:
    feedback = size.I if variant == "feedback" else 0
    options = {"reads_state": False} if variant == "linear" else {}
    cell = LADDER[cell_name](size.I, size.H, feedback, **options).to(xs.device)
    label = cell_name if variant == "plain" else f"{cell_name} {'fb' if variant == 'feedback' else 'lin'}"
    candidate = Candidate(f"{label} [{impl}]", "rnnlab", cell_name, variant, impl,
                          flops=cell.flops_per_step(size.B) * size.T, params=list(cell.parameters()))
    # Ask the dispatcher first; the warm-up call (which catches the runner's ValueError) decides
    # for whatever the dispatcher cannot tell without running.
    context = dict(feedback=bool(feedback), lengths=False, masks=(None, None), training=cell.training,
                   device=xs.device.type)
    if impl != "auto":
        candidate.resolved = {False: impl, True: impl}
        candidate.reason = kernels.available(cell, impl, **context)
        if candidate.reason is not None:
            return candidate
    else:  # auto may choose by whether gradients are recorded (kernels.order): named 'forward/with grad'
        candidate.resolved = {grad: kernels.choose(cell, impl, grad=grad, **context) for grad in (False, True)}
        chosen = dict.fromkeys(candidate.resolved.values())
        candidate.name = f"{label} [auto: {'/'.join(chosen)}]"
    runner = Recurrent(cell, implementation=impl)
    fed = y_prev if feedback else None
    candidate.forward = lambda grad: runner(xs, y_prev=fed)[0]
    return candidate


def candidates(config: BenchConfig, size: Size, xs: torch.Tensor, y_prev: torch.Tensor) -> list[Candidate]:
    """The peers, then every (cell, variant, implementation) of the configuration, at one size."""
    torch.manual_seed(config.seed)  # the same weights for every run of the same grid
    found = [_peer(name, size, xs) for name in PEERS + ((PROJECTED_PEER,) if "projected-lstm" in config.cells else ())]
    for cell in config.cells:
        for variant in _variants(cell, config.variants):
            for impl in config.impls:
                found.append(_rnnlab(cell, variant, impl, size, xs, y_prev))
    return found


# --- timing -------------------------------------------------------------------------------------

def _call(candidate: Candidate, backward: bool, device: str = "cpu") -> float:
    """Seconds of one forward (no_grad) or one forward+backward of the sum of the outputs (on a
    GPU, until its work is done)."""
    if backward:
        for p in candidate.params:
            p.grad = None  # no accumulation into last repetition's gradients
        _synchronize(device)
        start = time.perf_counter()
        candidate.forward(True).sum().backward()
        _synchronize(device)
        return time.perf_counter() - start
    with torch.no_grad():
        _synchronize(device)
        start = time.perf_counter()
        candidate.forward(False)
        _synchronize(device)
        return time.perf_counter() - start


@dataclass(frozen=True)
class Outcome:
    """What timing one candidate gave: "ok" and its repetitions' seconds, or "n/a", "skipped" or
    "failed" and the reason."""

    status: str
    reason: str | None = None
    times_s: tuple[float, ...] = ()


def _warm_up(group: list[Candidate], backward: bool, config: BenchConfig,
             results: dict[str, Outcome]) -> list[Candidate]:
    """The warm-up calls at the current thread count: the candidates that can be timed (the others get
    their outcome in `results`)."""
    live = []
    for c in group:
        if c.reason is not None:
            results[c.name] = Outcome("n/a", c.reason)
            continue
        try:
            first = _call(c, backward, config.device)
            for _ in range(config.warmup - 1):
                _call(c, backward, config.device)
        except (ValueError, NotImplementedError) as error:  # the runner says it cannot serve this
            results[c.name] = Outcome("n/a", str(error))
            continue
        except Exception as error:  # a fast path that breaks must not take the whole bench down
            results[c.name] = Outcome("failed", f"{type(error).__name__}: {error}")
            continue
        if first > config.max_call_s:
            results[c.name] = Outcome("skipped", f"one call took {first:.1f} s > --max-call-s {config.max_call_s:g}")
            continue
        live.append(c)
    return live


def time_group(group: list[Candidate], backward: bool, config: BenchConfig,
               progress: Callable[[str], None] | None = None) -> dict[int, dict[str, Outcome]]:
    """Warm up each candidate at each thread count, then time them: each repetition sets every thread
    count in turn (the first one alternating) and at each calls every candidate once, round-robin (the
    first one rotating). Returns thread count -> name -> outcome. Interleaving the counts (rather than
    all repetitions at one count, then all at the next) lets the ratios at two counts see the same
    spells of the machine: on this 2-core machine torch.nn.LSTM's own 2-thread speed-up varied 1.6-1.9x
    between runs timed a few seconds apart."""
    counts = config.threads
    results: dict[int, dict[str, Outcome]] = {n: {} for n in counts}
    live: dict[int, list[Candidate]] = {}
    for n in counts:
        torch.set_num_threads(n)
        live[n] = _warm_up(group, backward, config, results[n])
    times = {n: {c.name: [] for c in live[n]} for n in counts}
    gc.collect()
    for rep in range(config.reps):
        for n in (counts if rep % 2 == 0 else counts[::-1]):  # alternate which count goes first
            torch.set_num_threads(n)
            shift = rep % len(live[n]) if live[n] else 0
            for c in live[n][shift:] + live[n][:shift]:  # rotate who goes first: no one always runs cold
                times[n][c.name].append(_call(c, backward, config.device))
        if progress:
            progress(f"  rep {rep + 1}/{config.reps}")
    for n in counts:
        for c in live[n]:
            results[n][c.name] = Outcome("ok", times_s=tuple(times[n][c.name]))
    return results


# --- the result ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peak:
    """The matmul peak (FLOP/s) at one thread count, measured before and after the run."""

    threads: int
    before: float
    after: float

    @property
    def best(self) -> float:
        """The better of the two: a peak caught in a slow spell would flatter everyone."""
        return max(self.before, self.after)


@dataclass(frozen=True)
class BenchRow:
    """One candidate at one (size, pass, thread count): its times, ratios and share of the matmul peak
    when `status` is "ok"; else ("n/a", "skipped", "failed") the reason it has none."""

    size: Size
    pass_name: str  # "forward" or "forward+backward"
    threads: int
    name: str
    kind: str  # "peer" or "rnnlab"
    cell: str | None
    variant: str | None
    impl: str | None
    resolved: str | None  # what `auto` dispatched to
    flops: int  # of the pass (forward+backward: 3x the forward)
    status: str
    reason: str | None = None
    times_s: tuple[float, ...] = ()
    ratio: float | None = None  # median / torch.nn.LSTM's at the same size, pass and thread count
    ratio_match: float | None = None  # median / the same cell's torch.nn layer's (plain variants)
    peak_fraction: float | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def min_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    @property
    def max_s(self) -> float | None:
        return max(self.times_s) if self.times_s else None

    def to_dict(self) -> dict:
        """The --json row: timed rows carry their times, the others their reason."""
        s = self.size
        row = {"size": {"B": s.B, "H": s.H, "I": s.I, "T": s.T}, "pass": self.pass_name, "threads": self.threads,
               "name": self.name, "kind": self.kind, "cell": self.cell, "variant": self.variant, "impl": self.impl,
               "resolved": self.resolved, "flops": self.flops, "status": self.status}
        if self.status != "ok":
            return {**row, "reason": self.reason}
        return {**row, "times_s": list(self.times_s), "median_s": self.median_s, "min_s": self.min_s,
                "max_s": self.max_s, "ratio": self.ratio, "ratio_match": self.ratio_match,
                "peak_fraction": self.peak_fraction}


@dataclass(frozen=True)
class BenchResult:
    """What `run_bench` measured: the configuration, the machine, the matmul peak at each thread count,
    and a row per (size, pass, thread count, candidate)."""

    config: BenchConfig
    machine: Machine
    peaks: tuple[Peak, ...]
    rows: tuple[BenchRow, ...]

    def to_dict(self) -> dict:
        """The --json report (the layout of docs/data/*.json, which scripts/bench_targets.py reads)."""
        c, first = self.config, self.peaks[0]
        return {"machine": self.machine.to_dict(), "peak_flops": first.before, "peak_flops_after": first.after,
                "peaks": [{"threads": p.threads, "before": p.before, "after": p.after} for p in self.peaks],
                "settings": {"sizes": [str(s) for s in c.sizes], "cells": list(c.cells), "impls": list(c.impls),
                             "variants": list(c.variants), "passes": list(c.passes), "threads": list(c.threads),
                             "reps": c.reps, "warmup": c.warmup, "max_call_s": c.max_call_s, "seed": c.seed,
                             "device": c.device},
                "rows": [row.to_dict() for row in self.rows]}

    def describe(self) -> list[str]:
        """The lines above the table: the machine, the peaks, how to read the columns."""
        where = "the GPU" if self.machine.gpu else "{} thread(s)"
        lines = [f"rnnlab bench  {self.machine.describe()}"]
        lines += [f"matmul peak (fp32, {where.format(p.threads)}): {p.before / 1e9:.1f} GFLOP/s before the run, "
                  f"{p.after / 1e9:.1f} after; peak fractions use the larger" for p in self.peaks]
        lines.append(f"reps: {self.config.reps} interleaved after {self.config.warmup} warm-up; times are medians "
                     f"[min-max]; x LSTM = median / torch.nn.LSTM's at the same thread count; x match = / the same "
                     f"cell's torch.nn layer; peak = share of the matmul peak")
        return lines

    def _groups(self) -> dict[tuple[Size, str], dict[str, dict[int, BenchRow]]]:
        """(size, pass) -> candidate -> thread count -> row, in the order timed."""
        groups: dict[tuple[Size, str], dict[str, dict[int, BenchRow]]] = {}
        for row in self.rows:
            groups.setdefault((row.size, row.pass_name), {}).setdefault(row.name, {})[row.threads] = row
        return groups

    def table(self) -> Table:
        """A row per timed candidate of each (size, pass), the thread counts side by side (median, min-max,
        x LSTM, x match and peak share for each); candidates timed at no count are in `untimed()`."""
        counts = self.config.threads
        tags = [f" {n}t" if len(counts) > 1 else "" for n in counts]
        headers = ["size (BxHxIxT)", "pass", "candidate"]
        for tag in tags:
            headers += [f"median ms{tag}", f"min-max ms{tag}", f"x LSTM{tag}", f"x match{tag}", f"peak{tag}"]
        rows = []
        for (size, pass_name), by_name in self._groups().items():
            for name, runs in by_name.items():
                timed = {n: r for n, r in runs.items() if r.status == "ok"}
                if not timed:
                    continue
                cells = [str(size), pass_name, name]
                for n in counts:
                    r = timed.get(n)
                    if r is None:
                        cells += ["-", "", "", "", ""]
                        continue
                    cells += [f"{r.median_s * 1e3:.2f}", f"{r.min_s * 1e3:.2f}-{r.max_s * 1e3:.2f}",
                              f"{r.ratio:.2f}" if r.ratio is not None else "-",
                              f"{r.ratio_match:.2f}" if r.ratio_match is not None else "",
                              f"{r.peak_fraction:.1%}" if r.peak_fraction is not None else ""]
                rows.append(tuple(cells))
        return Table(tuple(headers), tuple(rows), (False, False, False, *(True,) * (5 * len(counts))))

    def thread_table(self) -> Table | None:
        """With several thread counts: for each timed candidate of each (size, pass) and each count n after
        the first (n0), its ratio to torch.nn.LSTM at n over that at n0, paired by repetition: in round i,
        q_i = (t_i(n) / LSTM_i(n)) / (t_i(n0) / LSTM_i(n0)), all four timed within one round (time_group).
        The median of the q_i, their min-max, and in how many rounds n was worse (q_i > 1): "no worse at
        n threads" reads as a median at or below 1 and a count of worse rounds that is not most of them.
        None with one thread count."""
        counts = self.config.threads
        if len(counts) < 2:
            return None
        first, rows = counts[0], []
        for (size, pass_name), by_name in self._groups().items():
            base = by_name.get(BASELINE, {})
            for name, runs in by_name.items():
                cells = [str(size), pass_name, name]
                for n in counts[1:]:
                    q = _paired(runs.get(first), base.get(first), runs.get(n), base.get(n))
                    cells += ["-", "", ""] if not q else [
                        f"{statistics.median(q):.3f}", f"{min(q):.2f}-{max(q):.2f}",
                        f"{sum(v > 1 for v in q)}/{len(q)}"]
                if any(c not in ("-", "") for c in cells[3:]):
                    rows.append(tuple(cells))
        headers = ["size (BxHxIxT)", "pass", "candidate"]
        for n in counts[1:]:
            headers += [f"x LSTM {n}t / {first}t", f"min-max {n}t", f"rounds worse at {n}t"]
        return Table(tuple(headers), tuple(rows), (False, False, False, *(True,) * (3 * (len(counts) - 1))))

    def untimed(self) -> list[str]:
        """One line per (size, pass) and reason for the candidates not timed at some thread count:
        '32x128x128x100 forward: n/a: <reason>: all 12 [scan] candidates'."""
        lines = []
        counts = self.config.threads
        for (size, pass_name), by_name in self._groups().items():
            missing: dict[str, list[str]] = {}  # "status: reason" -> candidates, so n/a costs one line per reason
            for name, runs in by_name.items():
                timed = [n for n in counts if n in runs and runs[n].status == "ok"]
                if len(timed) < len(counts):  # the reason of the first count that was not timed
                    r = next(runs[n] for n in counts if n in runs and n not in timed)
                    partly = " at some thread counts" if timed else ""
                    missing.setdefault(f"{r.status}{partly}: {r.reason}", []).append(name)
            group = [r for runs in by_name.values() for r in runs.values()]
            lines += [f"{size} {pass_name}: {why}: {_summarise(names, group)}" for why, names in missing.items()]
        return lines


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Time the grid of `config`: a row per (size, pass, thread count, candidate) with times, ratios and
    peak fractions (or the reason for none). Each (size, pass) is timed at every thread count, the counts
    interleaved within each repetition (time_group); a ratio compares candidates at the same count."""
    if progress and not compiled.built():
        progress("building the C++ loops (once, about a minute; compiled.py)")
    loops = compiled.extension() is not None  # built before any timing: a first call must not compile
    previous_threads = torch.get_num_threads()
    before = {}  # thread count -> the peak before the run
    try:
        for threads in config.threads:
            torch.set_num_threads(threads)
            before[threads] = matmul_peak(device=config.device)
        rows: list[BenchRow] = []
        for size in config.sizes:
            generator = torch.Generator().manual_seed(config.seed)
            xs = torch.randn(size.B, size.T, size.I, generator=generator).to(config.device)  # (B, T, I)
            # (B, T, O), O = I: teacher forced
            y_prev = torch.randn(size.B, size.T, size.I, generator=generator).to(config.device)
            group = candidates(config, size, xs, y_prev)
            for pass_name in config.passes:
                if progress:
                    progress(f"{size} {pass_name} {','.join(map(str, config.threads))} thread(s): "
                             f"{sum(c.reason is None for c in group)} candidates")
                results = time_group(group, pass_name == "forward+backward", config, progress)
                for threads in config.threads:
                    rows += _rows(size, pass_name, threads, group, results[threads])
        peaks = []
        for threads in config.threads:
            torch.set_num_threads(threads)
            peaks.append(Peak(threads, before[threads], matmul_peak(device=config.device)))
    finally:
        torch.set_num_threads(previous_threads)
    best = {p.threads: p.best for p in peaks}
    rows = [replace(row, peak_fraction=row.flops / row.median_s / best[row.threads]) if row.status == "ok" else row
            for row in rows]
    return BenchResult(config, machine(config.threads, config.device, loops), tuple(peaks), tuple(rows))


def _rows(size: Size, pass_name: str, threads: int, group: list[Candidate], results: dict[str, Outcome]
          ) -> list[BenchRow]:
    """The group's rows, with ratios to torch.nn.LSTM (and to the matching torch.nn layer)."""
    medians = {name: statistics.median(o.times_s) for name, o in results.items() if o.status == "ok"}
    base = medians.get(BASELINE)
    flop_factor = 3 if pass_name == "forward+backward" else 1
    rows = []
    for c in group:
        outcome = results[c.name]
        row = BenchRow(size, pass_name, threads, c.name, c.kind, c.cell, c.variant, c.impl,
                       c.resolved.get(pass_name == "forward+backward"),
                       c.flops * flop_factor, outcome.status, outcome.reason, outcome.times_s)
        if outcome.status == "ok":
            t = medians[c.name]
            match = MATCHING_PEER.get(c.cell) if c.variant == "plain" else None
            row = replace(row, ratio=t / base if base else None,
                          ratio_match=t / medians[match] if match and medians.get(match) else None)
        rows.append(row)
    return rows


def _paired(row0: BenchRow | None, base0: BenchRow | None, row: BenchRow | None, base: BenchRow | None
            ) -> list[float]:
    """(row / base) / (row0 / base0), round by round (the i-th repetition of each); [] unless all four were
    timed in the same rounds."""
    series = [r.times_s if r is not None and r.status == "ok" else () for r in (row0, base0, row, base)]
    if not all(series) or len({len(s) for s in series}) != 1:
        return []
    return [(t / b) / (t0 / b0) for t0, b0, t, b in zip(*series)]


def _summarise(names: list[str], rows: list[BenchRow]) -> str:
    """'all 12 [fused] candidates' when a reason covers all of one implementation's rows, else the names."""
    impls = {r.impl for r in rows if r.name in names}
    if len(impls) == 1 and None not in impls:
        impl = impls.pop()
        if len(names) == len({r.name for r in rows if r.impl == impl}):  # each name has a row per thread count
            return f"all {len(names)} [{impl}] candidates"
    return ", ".join(names)
