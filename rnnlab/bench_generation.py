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

The functions return data; cli.py prints it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from . import generation, interop
from .bench import machine
from .models import RecurrentModel
from .preprocessing import choose_token

__all__ = ["bandwidth", "lstm_loop", "run_generation_bench", "format_generation"]

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


def run_generation_bench(model: RecurrentModel, sampler: Sampler, prompt_ids: torch.Tensor, length: int = 500,
                         temperature: float = 0.8, top_k: int | None = None, reps: int = 5, threads: int = 1,
                         seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Time `sampler` (rnnlab's sampling of `length` tokens after the prompt, e.g. tasks.language.sample)
    under each implementation, and the torch.nn.LSTM loop, round-robin. Returns the report."""
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
        wall = statistics.median(t[0] for t in times[name]) / length
        cpu = statistics.median(t[1] for t in times[name]) / length
        rows.append({"name": name, "us_per_char": wall * 1e6, "cpu_us_per_char": cpu * 1e6,
                     "chars_per_s": 1 / wall, "min_us_per_char": min(t[0] for t in times[name]) / length * 1e6,
                     "max_us_per_char": max(t[0] for t in times[name]) / length * 1e6,
                     "same_tokens_as_python": bool(torch.equal(tokens[name], reference))})
    return {"machine": machine((threads,)), "weights_bytes": weights, "length": length, "temperature": temperature,
            "top_k": top_k, "reps": reps, "seed": seed, "compiled_refusal": refusal,
            "load_average": {"before": load_before, "after": load_after},
            "bandwidth": {"cached_bytes_per_s": cached, "large_bytes_per_s": large, "large_bytes": LARGE_COPY_BYTES},
            "floor_us_per_char": {"cached": weights / cached * 1e6, "large": weights / large * 1e6},
            "rows": rows}


def format_generation(report: dict) -> str:
    """The report as plain text: the machine, the floor, then one line per candidate."""
    m, floor, bw = report["machine"], report["floor_us_per_char"], report["bandwidth"]
    load = report["load_average"]
    top_k = report["top_k"] if report["top_k"] is not None else "all"
    lines = [f"rnnlab bench --generation  cpu: {m['cpu']}  cores: {m['cores']}  torch {m['torch']}  "
             f"threads: {','.join(map(str, m['threads']))}",
             f"{report['length']} tokens per sample at temperature {report['temperature']:g}, top-k {top_k}, seed "
             f"{report['seed']}; {report['reps']} interleaved repetitions after a warm-up, medians [min-max]",
             f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load['before'])} before, "
             f"{', '.join(f'{x:.2f}' for x in load['after'])} after",
             f"weights: {report['weights_bytes'] / 1e6:.2f} MB; copy bandwidth "
             f"{bw['cached_bytes_per_s'] / 1e9:.1f} GB/s at that size (cached), "
             f"{bw['large_bytes_per_s'] / 1e9:.1f} GB/s at {bw['large_bytes'] // 2 ** 20} MB",
             f"floor, one pass over the weights per token: {floor['cached']:.1f} us (cached), "
             f"{floor['large']:.1f} us (from memory)"]
    if report["compiled_refusal"]:
        lines.append(f"compiled: n/a ({report['compiled_refusal']})")
    lines += ["", f"{'candidate':<20}  {'us/token':>9}  {'min-max':>11}  {'tokens/s':>9}  {'x floor':>7}  "
                  f"{'CPU us/token':>12}  {'CPU x floor':>11}  same tokens"]
    for r in report["rows"]:
        spread = f"{r['min_us_per_char']:.0f}-{r['max_us_per_char']:.0f}"
        same = "yes" if r["same_tokens_as_python"] else "no"
        lines.append(f"{r['name']:<20}  {r['us_per_char']:>9.1f}  {spread:>11}  {r['chars_per_s']:>9,.0f}  "
                     f"{r['us_per_char'] / floor['cached']:>7.2f}  {r['cpu_us_per_char']:>12.1f}  "
                     f"{r['cpu_us_per_char'] / floor['cached']:>11.2f}  {same}")
    return "\n".join(lines)
