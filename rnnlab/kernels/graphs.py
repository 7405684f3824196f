"""CUDA graphs for the Python time loops of `fused`.

On a GPU each step of the loop is a handful of small kernels, each costing more to launch from
Python than to run: `fused` measured 4-7x torch.nn.LSTM's time at T = 100 and 40-70x at B = 1,
T = 1000 on an H200. A CUDA graph records the launches of one whole loop once and replays them
with one call.

`replay(key, fn, *tensors)` returns fn(*tensors), a tuple of tensors (or None). `key` names what
fixes the loop's control flow besides the tensors' shapes, dtypes and devices (added here). The
first time a configuration is seen, fn runs eagerly; the second time, it is warmed up on a side
stream and captured; from then on the inputs are copied into the graph's static tensors, the graph
replayed, and its outputs cloned out of the graph's memory pool (the next replay reuses that
pool). Waiting for a second sighting spares the capture (about three eager runs) for shapes that
never come back, such as the `lengths` of one padded batch. At most `CACHE_SIZE` graphs are kept,
the least recently used dropped first. A configuration whose capture fails runs eagerly from then
on. fn must not synchronise with the CPU (no .item(), no data-dependent shapes), and must depend
on nothing but its tensors and the key.

RNNLAB_NO_CUDA_GRAPHS=1 turns graphs off (every call eager).
"""

from __future__ import annotations

import collections
import os
from typing import Callable

import torch

CACHE_SIZE = 8
_graphs: collections.OrderedDict = collections.OrderedDict()  # key -> (graph, inputs, outputs) or None
_seen: collections.OrderedDict = collections.OrderedDict()  # keys seen once, not captured yet


def enabled(like: torch.Tensor) -> bool:
    return like.is_cuda and not os.environ.get("RNNLAB_NO_CUDA_GRAPHS") and \
        not torch.cuda.is_current_stream_capturing()


def replay(key, fn: Callable, *tensors):
    key = (key,) + tuple(None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
    if key not in _graphs:
        if key not in _seen:
            _remember(_seen, key, True)
            return fn(*tensors)
        del _seen[key]
        _remember(_graphs, key, _capture(fn, tensors))
    _graphs.move_to_end(key)
    entry = _graphs[key]
    if entry is None:  # its capture failed
        return fn(*tensors)
    graph, inputs, outputs = entry
    for static, t in zip(inputs, tensors):
        if static is not None:
            static.copy_(t)
    graph.replay()
    return tuple(None if o is None else o.clone() for o in outputs)


def _remember(cache: collections.OrderedDict, key, value) -> None:
    cache[key] = value
    while len(cache) > CACHE_SIZE:
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
