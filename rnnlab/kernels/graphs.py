"""CUDA graphs for the Python time loops of `fused`.

On a GPU each step of the loop is a handful of small kernels, each costing more to launch from
Python than to run: `fused` measured 4.6-5.4x torch.nn.LSTM's time at T = 100 and 44-55x at B = 1,
T = 1000 on an H200. A CUDA graph records the launches of one whole loop once and replays them
with one call (1.15-1.29x and 8.6x there; docs/BENCHMARKS.md).

`replay(key, fn, *tensors)` returns fn(*tensors), a tuple of tensors (or None). `key` names what
fixes the loop's control flow besides what is added here: the tensors' shapes, strides, dtypes and
devices, inference mode, and the float32 matmul precision. The first time a configuration is
seen, fn runs eagerly; the second time it is warmed up on a side stream and captured; from then on
the inputs are copied into the graph's static tensors, the graph replayed, and its outputs cloned
out of the graph's memory pool (the next replay reuses that pool). Waiting for a second sighting
spares the capture (about three eager runs) for shapes that never come back, such as the
`lengths` of one padded batch.

Memory: a graph keeps its static inputs and its private pool (every buffer and temporary of one
loop) for as long as it is cached, of the order of the eager loop's own peak. So loops whose
inputs exceed `MAX_INPUT_BYTES` run eagerly (their kernels are large enough for launches to matter
less); the cache keeps at most `CACHE_SIZE` graphs, whose inputs and outputs take at most
`CACHE_BYTES` (by default a sixteenth of the device's memory; least recently used out first);
`clear()` frees them all. More configurations in rotation than
the cache holds would be captured again and again, each capture costing about three eager runs:
a configuration captured `MAX_CAPTURES` times runs eagerly from then on. RNNLAB_NO_CUDA_GRAPHS=1
turns graphs off (every call eager).

A configuration whose capture fails runs eagerly from then on. fn must not synchronise with the
CPU (no .item(), no data-dependent shapes), and must depend on nothing but its tensors and key.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable

import torch

CACHE_SIZE = 64
CACHE_BYTES: int | None = None  # None: a sixteenth of the device's memory
MAX_INPUT_BYTES = 256 * 2 ** 20
MAX_CAPTURES = 3
_graphs: collections.OrderedDict = collections.OrderedDict()  # key -> (graph, inputs, outputs) or None
_seen: collections.OrderedDict = collections.OrderedDict()  # keys seen once, not captured yet
_captures: collections.Counter = collections.Counter()  # key -> how often it was captured
_lock = threading.Lock()  # the forward's thread and autograd's device threads share the caches
_MISSING = object()


def enabled(like: torch.Tensor) -> bool:
    return like.is_cuda and not os.environ.get("RNNLAB_NO_CUDA_GRAPHS") and \
        not torch.cuda.is_current_stream_capturing()


def clear() -> None:
    """Drop every cached graph (and with it their memory pools)."""
    with _lock:
        _graphs.clear()
        _seen.clear()
        _captures.clear()


def replay(key, fn: Callable, *tensors):
    if sum(t.numel() * t.element_size() for t in tensors if t is not None) > MAX_INPUT_BYTES:
        return fn(*tensors)
    key = (key, torch.is_inference_mode_enabled(), torch.get_float32_matmul_precision(),
           torch.backends.cuda.matmul.allow_tf32) + \
        tuple(None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
    first = False
    with _lock:
        entry = _graphs.get(key, _MISSING)
        if entry is not _MISSING:
            _graphs.move_to_end(key)
        elif key in _seen:
            del _seen[key]
        else:
            first = True
            _remember(_seen, key, None, 8 * CACHE_SIZE)
    if first:
        return fn(*tensors)
    if entry is _MISSING:
        with _lock:
            if len(_captures) > 16 * CACHE_SIZE:  # forget old counts now and then
                _captures.clear()
            _captures[key] += 1
            thrashing = _captures[key] > MAX_CAPTURES
        entry = None if thrashing else _capture(fn, tensors)
        with _lock:
            _remember(_graphs, key, entry, CACHE_SIZE)
            budget = _budget(tensors)
            while sum(map(_bytes, _graphs.values())) > budget and len(_graphs) > 1:
                _graphs.popitem(last=False)
    if entry is None:  # its capture failed, or it was captured too often
        return fn(*tensors)
    graph, inputs, outputs = entry
    for static, t in zip(inputs, tensors):
        if static is not None:
            static.copy_(t)
    graph.replay()
    return tuple(None if o is None else o.clone() for o in outputs)


def _budget(tensors) -> float:
    if CACHE_BYTES is not None:
        return CACHE_BYTES
    device = next(t.device for t in tensors if t is not None)
    return torch.cuda.get_device_properties(device).total_memory / 16 if device.type == "cuda" else float("inf")


def _bytes(entry) -> int:
    """What a cached graph holds at least: its static inputs and outputs."""
    if entry is None:
        return 0
    _, inputs, outputs = entry
    return sum(t.numel() * t.element_size() for t in (*inputs, *outputs) if t is not None)


def _remember(cache: collections.OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _capture(fn: Callable, tensors):
    """(graph, static inputs, static outputs), or None where capturing fails."""
    inputs = tuple(None if t is None else t.detach().clone() for t in tensors)
    try:
        side = torch.cuda.Stream(device=next(t.device for t in tensors if t is not None))
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisations (cuBLAS handles, workspaces) happen here
            fn(*(None if t is None else t.clone() for t in inputs))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the backward runs in autograd's device thread while the caller's thread waits
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = fn(*inputs)
    except RuntimeError:
        return None
    return graph, inputs, outputs
