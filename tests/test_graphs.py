"""The caching policy of kernels/graphs.py, on CPU with a stand-in for CUDA graph capture (the
capture itself is tested on CUDA in test_kernels.py)."""

import pytest
import torch

from rnnlab.kernels import graphs


class FakeGraph:
    """Replays by rerunning fn on the static inputs into the static outputs, as a graph would."""

    def __init__(self, fn, inputs, outputs):
        self.fn, self.inputs, self.outputs = fn, inputs, outputs

    def replay(self):
        for out, new in zip(self.outputs, self.fn(*self.inputs)):
            out.copy_(new)


@pytest.fixture
def captures(monkeypatch):
    made = []

    def capture(fn, tensors):
        inputs = tuple(t.clone() for t in tensors)
        outputs = fn(*inputs)
        made.append(fn)
        return FakeGraph(fn, inputs, outputs), inputs, outputs
    monkeypatch.setattr(graphs, "_capture", capture)
    graphs.clear()
    yield made
    graphs.clear()


def double(x):
    return (x * 2,)


def test_second_sighting_captures_and_later_calls_replay_with_new_inputs(captures):
    results = [graphs.replay("k", double, torch.full((3,), float(i)))[0] for i in range(4)]
    assert len(captures) == 1  # not the first call; the second, then replays
    for i, r in enumerate(results):
        torch.testing.assert_close(r, torch.full((3,), 2.0 * i))
    out = graphs.replay("k", double, torch.ones(3))[0]
    graphs.replay("k", double, torch.zeros(3))
    torch.testing.assert_close(out, torch.full((3,), 2.0))  # a clone, not the graph's own buffer


def test_shapes_and_modes_are_part_of_the_key(captures):
    for _ in range(2):
        graphs.replay("k", double, torch.ones(3))
        graphs.replay("k", double, torch.ones(4))
        with torch.inference_mode():
            graphs.replay("k", double, torch.ones(3))
    assert len(captures) == 3


def test_inputs_too_large_stay_eager(captures, monkeypatch):
    monkeypatch.setattr(graphs, "MAX_INPUT_BYTES", 8)
    for _ in range(3):
        graphs.replay("k", double, torch.ones(3))
    assert not captures


def test_the_cache_is_bounded_and_thrashing_stops_capturing(captures, monkeypatch):
    monkeypatch.setattr(graphs, "CACHE_SIZE", 2)
    for _ in range(10):  # three configurations in rotation through a cache of two
        for n in (1, 2, 3):
            torch.testing.assert_close(graphs.replay("k", double, torch.ones(n))[0], torch.full((n,), 2.0))
    assert len(graphs._graphs) <= 2
    assert len(captures) <= 3 * graphs.MAX_CAPTURES


def test_the_cache_is_bounded_in_bytes(captures, monkeypatch):
    monkeypatch.setattr(graphs, "CACHE_BYTES", 100)
    for _ in range(2):
        for n in (5, 6, 7):  # 2 x 4 n bytes each (input and output)
            graphs.replay("k", double, torch.ones(n))
    assert sum(map(graphs._bytes, graphs._graphs.values())) <= 100
