"""rnnlab.Linear: nn.Linear's results and gradients, through oneDNN in float32 on CPU, and nn.Linear itself
everywhere else."""

import warnings

import pytest
import torch
from torch import nn

from rnnlab import linear
from rnnlab.kernels import time_major
from rnnlab.linear import Linear

from conftest import EXTENSION


def pair(bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    ours = Linear(24, 40, bias=bias, dtype=dtype)
    theirs = nn.Linear(24, 40, bias=bias, dtype=dtype)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.fixture(autouse=True)
def every_call_through_onednn(monkeypatch):
    """The tests' small calls take oneDNN's path too (the size rule has its own test)."""
    monkeypatch.setattr(linear, "ONEDNN_MACS", 0)


def count_products(monkeypatch):
    calls = []
    real = time_major.product
    monkeypatch.setattr(time_major, "product", lambda a, b: calls.append(a.shape) or real(a, b))
    return calls


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (2, 3, 4, 24), (24,), (0, 24)])
def test_results_and_gradients_are_nn_linears(shape, bias, monkeypatch):
    calls = count_products(monkeypatch)
    ours, theirs = pair(bias)
    x = torch.randn(*shape)
    results = []
    for module in (ours, theirs):
        xs = x.clone().requires_grad_()
        y = module(xs)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y, xs.grad, *(p.grad for p in module.parameters())))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(calls) == (3 if EXTENSION is not None else 0)  # the forward's product and the backward's two


def test_inputs_need_no_grad_and_frozen_weights_get_none(monkeypatch):
    ours, theirs = pair()
    ours.weight.requires_grad_(False)
    x = torch.randn(6, 24, requires_grad=True)
    ours(x).sum().backward()
    assert ours.weight.grad is None and ours.bias.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("context", ["float64", "autocast", "trace"])
def test_elsewhere_it_is_nn_linear_itself(context, monkeypatch):
    calls = count_products(monkeypatch)
    ours, theirs = pair(dtype=torch.float64 if context == "float64" else torch.float32)
    x = torch.randn(5, 24, dtype=ours.weight.dtype)
    if context == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = ours(x), theirs(x)
        assert got.dtype == torch.bfloat16
    elif context == "trace":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; the ONNX exporter still traces
            traced = torch.jit.trace(ours, (x,), check_trace=False)  # its check reruns the module untraced
        assert "aten::linear" in str(traced.graph)
        got, expected = traced(x), theirs(x)
    else:
        got, expected = ours(x), theirs(x)
    assert torch.equal(got, expected) and calls == []


def test_a_second_derivative_raises():
    if EXTENSION is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    ours, _ = pair()
    x = torch.randn(4, 24, requires_grad=True)
    (grad,) = torch.autograd.grad(ours(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_it_is_an_nn_linear_to_everything_that_asks():
    ours, _ = pair()
    assert isinstance(ours, nn.Linear) and repr(ours) == "Linear(in_features=24, out_features=40, bias=True)"
    nn.Linear(24, 40).load_state_dict(ours.state_dict(), strict=True)


def test_no_input_features_is_nn_linears_bias():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Initializing zero-element tensors is a no-op"
        ours, theirs = Linear(0, 5), nn.Linear(0, 5)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 0, requires_grad=True)
    y = ours(x)
    y.sum().backward()
    assert torch.equal(y, theirs(x)) and x.grad.shape == (3, 0)



def test_calls_too_small_to_earn_onednns_set_up_are_nn_linears(monkeypatch):
    monkeypatch.setattr(linear, "ONEDNN_MACS", 1 << 21)
    calls = count_products(monkeypatch)
    ours, theirs = pair()
    small = torch.randn(8, 24)  # 8 x 24 x 40 multiply-adds
    assert torch.equal(ours(small), theirs(small)) and calls == []
    large = torch.randn(3, (1 << 21) // (24 * 40) + 1, 24)
    torch.testing.assert_close(ours(large), theirs(large), rtol=1e-5, atol=1e-5)
    assert len(calls) == (1 if EXTENSION is not None else 0)
