"""Speed of free-running generation at batch 1 (`rnnlab bench --generation RUN_DIR`): characters per
second of rnnlab's two sampling loops (rnnlab.generation: `compiled` and `python`) beside a plain
torch.nn.LSTM step loop, and beside the floor that memory bandwidth sets: one pass over the model's
weights per character.

All in one process, one thread by default; after a warm-up call each, the candidates run round-robin
(the first one rotating) and each reports the median of its repetitions, as wall-clock time and as the
thread's CPU time (on a shared machine the wall clock also counts the time spent waiting for a core).
Every candidate samples from the same prompt with the same seed; the report says whether each chose
the same tokens as rnnlab's Python loop.

The floor: the bytes of all the model's parameters divided by a measured bandwidth, from timing
`dst.copy_(src)` (read + write bytes / time, the best of several) for two buffers: one the size of the
weights, which stay in the caches as they do while sampling, and a large one (256 MB) that cannot.

`run_generation_bench` returns a typed `GenerationBench`: its `table()` is printed by the one table
printer (rnnlab.tables), its `to_dict()` is the `--json` report; cli.py prints it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import generation, interop
from .bench import Machine, machine
from .models import RecurrentModel
from .preprocessing import choose_token
from .tables import Table

__all__ = ["bandwidth", "lstm_loop", "GenerationRow", "GenerationBench", "run_generation_bench"]

Sampler = Callable[[str, torch.Generator], torch.Tensor]  # (implementation, generator) -> ids
LARGE_COPY_BYTES = 256 * 2 ** 20


def bandwidth(nbytes: int, reps: int = 5) -> float:
    """Best bytes/s of copying a float32 buffer of `nbytes` (read + write counted)."""
    src = torch.rand(max(1, nbytes // 4))
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def lstm_loop(model: RecurrentModel, prompt_ids: torch.Tensor, length: int, temperature: float,
              top_k: int | None) -> Callable[[torch.Generator], torch.Tensor] | None:
    """The loop a user writes with torch.nn: nn.Embedding -> nn.LSTM -> nn.Linear, one call per character,
    holding the model's weights; None where the model is not one (output feedback, other cells)."""
    linear = generation._linear(model.readout)
    if model.feedback_map is not None or not isinstance(model.input_map, nn.Embedding) or linear is None:
        return None
    try:
        lstm = interop.to_torch(model.core)
    except ValueError:
        return None
    if not isinstance(lstm, nn.LSTM):
        return None
    embedding = model.input_map
    lstm.eval()

    @torch.no_grad()
    def run(generator: torch.Generator) -> torch.Tensor:
        out, state = lstm(embedding(prompt_ids[None]))
        logits = linear(out[:, -1])
        chosen = []
        for _ in range(length):
            logits[:, 0] = float("-inf")  # <unk>, as rnnlab's loops
            token = choose_token(logits, "sample", temperature, top_k, generator) if temperature else logits.argmax(-1)
            chosen.append(int(token))
            out, state = lstm(embedding(token[None]), state)
            logits = linear(out[:, -1])
        return torch.tensor(chosen)

    return run


def _timed(run: Callable[[torch.Generator], torch.Tensor], seed: int) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of one sample from a fresh generator."""
    generator = torch.Generator().manual_seed(seed)
    wall, cpu = time.perf_counter(), time.thread_time()
    run(generator)
    return time.perf_counter() - wall, time.thread_time() - cpu


@dataclass(frozen=True)
class GenerationRow:
    """One sampling loop: wall and CPU microseconds per token (medians), its spread, and whether it
    chose the tokens rnnlab's Python loop chose."""

    name: str
    us_per_char: float
    cpu_us_per_char: float
    min_us_per_char: float
    max_us_per_char: float
    same_tokens_as_python: bool

    @property
    def chars_per_s(self) -> float:
        return 1e6 / self.us_per_char

    def to_dict(self) -> dict:
        return {"name": self.name, "us_per_char": self.us_per_char, "cpu_us_per_char": self.cpu_us_per_char,
                "chars_per_s": self.chars_per_s, "min_us_per_char": self.min_us_per_char,
                "max_us_per_char": self.max_us_per_char, "same_tokens_as_python": self.same_tokens_as_python}


@dataclass(frozen=True)
class GenerationBench:
    """What `run_generation_bench` measured: the settings, the machine and its load, the copy bandwidths
    that set the floor (one pass over the weights per token), and a row per sampling loop."""

    machine: Machine
    weights_bytes: int
    length: int
    temperature: float
    top_k: int | None
    reps: int
    seed: int
    compiled_refusal: str | None  # why the compiled loop cannot serve this model (None: it can)
    load_before: tuple[float, ...]  # the load average (1, 5, 15 min)
    load_after: tuple[float, ...]
    cached_bytes_per_s: float  # copying a buffer the size of the weights
    large_bytes_per_s: float  # copying LARGE_COPY_BYTES, which no cache holds
    rows: tuple[GenerationRow, ...]

    @property
    def floor_us_per_char(self) -> dict[str, float]:
        """One pass over the weights per token at each bandwidth: 'cached' and 'large' (from memory)."""
        return {"cached": self.weights_bytes / self.cached_bytes_per_s * 1e6,
                "large": self.weights_bytes / self.large_bytes_per_s * 1e6}

    def to_dict(self) -> dict:
        """The --json report."""
        return {"machine": self.machine.to_dict(), "weights_bytes": self.weights_bytes, "length": self.length,
                "temperature": self.temperature, "top_k": self.top_k, "reps": self.reps, "seed": self.seed,
                "compiled_refusal": self.compiled_refusal,
                "load_average": {"before": list(self.load_before), "after": list(self.load_after)},
                "bandwidth": {"cached_bytes_per_s": self.cached_bytes_per_s,
                              "large_bytes_per_s": self.large_bytes_per_s, "large_bytes": LARGE_COPY_BYTES},
                "floor_us_per_char": self.floor_us_per_char, "rows": [row.to_dict() for row in self.rows]}

    def describe(self) -> list[str]:
        """The lines above the table: the machine and its load, the settings, the bandwidths and the floor."""
        floor = self.floor_us_per_char
        top_k = self.top_k if self.top_k is not None else "all"
        lines = [f"rnnlab bench --generation  {self.machine.describe()}",
                 f"{self.length} tokens per sample at temperature {self.temperature:g}, top-k {top_k}, seed "
                 f"{self.seed}; {self.reps} interleaved repetitions after a warm-up, medians [min-max]",
                 f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in self.load_before)} before, "
                 f"{', '.join(f'{x:.2f}' for x in self.load_after)} after",
                 f"weights: {self.weights_bytes / 1e6:.2f} MB; copy bandwidth "
                 f"{self.cached_bytes_per_s / 1e9:.1f} GB/s at that size (cached), "
                 f"{self.large_bytes_per_s / 1e9:.1f} GB/s at {LARGE_COPY_BYTES // 2 ** 20} MB",
                 f"floor, one pass over the weights per token: {floor['cached']:.1f} us (cached), "
                 f"{floor['large']:.1f} us (from memory)"]
        if self.compiled_refusal:
            lines.append(f"compiled: n/a ({self.compiled_refusal})")
        return lines

    def table(self) -> Table:
        """A row per sampling loop: wall and CPU time per token, against the (cached) floor."""
        floor = self.floor_us_per_char["cached"]
        rows = tuple((r.name, f"{r.us_per_char:.1f}", f"{r.min_us_per_char:.0f}-{r.max_us_per_char:.0f}",
                      f"{r.chars_per_s:,.0f}", f"{r.us_per_char / floor:.2f}", f"{r.cpu_us_per_char:.1f}",
                      f"{r.cpu_us_per_char / floor:.2f}", "yes" if r.same_tokens_as_python else "no")
                     for r in self.rows)
        return Table(("candidate", "us/token", "min-max", "tokens/s", "x floor", "CPU us/token", "CPU x floor",
                      "same tokens"), rows, (False, *(True,) * 6, False))


def run_generation_bench(model: RecurrentModel, sampler: Sampler, prompt_ids: torch.Tensor, length: int = 500,
                         temperature: float = 0.8, top_k: int | None = None, reps: int = 5, threads: int = 1,
                         seed: int = 0, progress: Callable[[str], None] | None = None) -> GenerationBench:
    """Time `sampler` (rnnlab's sampling of `length` tokens after the prompt, e.g. tasks.language.sample)
    under each implementation, and the torch.nn.LSTM loop, round-robin."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"run_generation_bench: length must be an int >= 1; got {length!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        candidates: dict[str, Callable[[torch.Generator], torch.Tensor]] = {}
        refusal = generation.compiled_refusal(model)
        if refusal is None:
            candidates["rnnlab compiled"] = lambda g: sampler("compiled", g)
        candidates["rnnlab python"] = lambda g: sampler("python", g)
        peer = lstm_loop(model, prompt_ids, length, temperature, top_k)
        if peer is not None:
            candidates["torch.nn.LSTM loop"] = peer
        load_before = os.getloadavg()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        copies_before = bandwidth(weights), bandwidth(LARGE_COPY_BYTES, reps=3)
        reference = None
        tokens = {}
        for name, run in candidates.items():  # warm-up, and the tokens each one chooses
            tokens[name] = run(torch.Generator().manual_seed(seed))
            reference = tokens[name] if name == "rnnlab python" else reference
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
        names = list(candidates)
        for rep in range(reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                times[name].append(_timed(candidates[name], seed))
            if progress:
                progress(f"  rep {rep + 1}/{reps}")
        copies_after = bandwidth(weights), bandwidth(LARGE_COPY_BYTES, reps=3)
        load_after = os.getloadavg()
    finally:
        torch.set_num_threads(previous)
    cached, large = max(copies_before[0], copies_after[0]), max(copies_before[1], copies_after[1])
    rows = []
    for name in names:
        walls, cpus = [t[0] / length * 1e6 for t in times[name]], [t[1] / length * 1e6 for t in times[name]]
        rows.append(GenerationRow(name, statistics.median(walls), statistics.median(cpus), min(walls), max(walls),
                                  bool(torch.equal(tokens[name], reference))))
    return GenerationBench(machine((threads,)), weights, length, temperature, top_k, reps, seed, refusal,
                           tuple(load_before), tuple(load_after), cached, large, tuple(rows))
