"""The instruments of rnnlab complexity: the exponent fit, the op-chain counter, the saved-bytes tracker."""

import math

import pytest
import torch

from rnnlab import LSTMCell, OutputFeedbackCell, VanillaCell
from rnnlab.instruments import SavedTensorTracker, fit_exponent, ops_per_step


def test_fit_exponent_recovers_power_laws():
    ts = [16, 32, 64, 128, 256]
    for p in (0.0, 0.5, 1.0, 1.7):
        assert fit_exponent(ts, [3.0 * t ** p for t in ts]) == pytest.approx(p, abs=1e-12)
    assert fit_exponent(ts, [5 * math.log2(t) for t in ts]) < 0.5  # log grows slower than any power

def test_fit_exponent_constants_and_zeros_are_flat():
    assert fit_exponent([16, 32, 64], [0, 0, 0]) == 0.0
    assert fit_exponent([16, 32, 64], [7, 7, 7]) == 0.0

def test_fit_exponent_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least two"):
        fit_exponent([16], [1.0])
    with pytest.raises(ValueError, match="distinct T"):
        fit_exponent([16, 16], [1.0, 2.0])

def test_ops_per_step_counts_the_chain():
    assert ops_per_step(VanillaCell(3, 5)) == 3  # products, their sum, tanh
    assert ops_per_step(LSTMCell(3, 5)) == 7  # ... gates, f*s, +, tanh(s), o*tanh(s)
    assert ops_per_step(OutputFeedbackCell(3, 5, 2)) == 3

def test_saved_tensor_tracker_counts_and_releases():
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorTracker(external=[x]) as saved:
        y = x.exp()  # saves its result: 4000 bytes; x itself is external
        z = y.view(10, 100).sum()  # sum saves nothing
        assert saved.current == 4000
        z.backward()
    assert saved.peak == 4000 and saved.current == 0
