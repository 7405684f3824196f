"""Gradient flow: ||dLoss/ds^t|| by hand and through the command."""

import math

import pytest
import torch

from rnnlab import LSTMCell, VanillaCell
from rnnlab.cli import main
from rnnlab.data.synthetic import adding_batch
from rnnlab.gradient_flow import GradientFlowConfig, measure_gradient_flow, state_gradient_norms
from rnnlab.runners import Recurrent


def test_state_gradient_norms_vanish_back_in_time_for_vanilla():
    torch.manual_seed(0)
    runner, readout = Recurrent(VanillaCell(2, 8), "reference"), torch.nn.Linear(8, 1)
    xs, targets = adding_batch(16, 40, torch.Generator().manual_seed(0))
    norms, loss = state_gradient_norms(runner, readout, xs, targets)
    assert len(norms) == 40 and loss > 0
    assert norms[0] < 1e-3 * norms[-1]

def test_state_gradient_norms_match_restarting_the_runner():
    # Oracle for dLoss/ds^t: restart the ordinary runner from s^t as its initial state (a leaf) over
    # the remaining steps and ask autograd for the gradient of that leaf.
    torch.manual_seed(0)
    runner, readout = Recurrent(LSTMCell(2, 4), "reference"), torch.nn.Linear(4, 1)
    xs, targets = adding_batch(3, 7, torch.Generator().manual_seed(0))
    norms, _ = state_gradient_norms(runner, readout, xs, targets)
    with torch.no_grad():
        _, state = runner(xs[:, :3])  # s^3
    state = tuple(s.clone().requires_grad_() for s in state)
    ys, _ = runner(xs[:, 3:], state)
    loss = torch.nn.functional.mse_loss(readout(ys[:, -1]), targets)
    grads = torch.autograd.grad(loss, state)
    assert norms[2] == pytest.approx(math.sqrt(sum(float(g.square().sum()) for g in grads)), rel=1e-5)

def test_measure_gradient_flow_runs_and_checks():
    flows = measure_gradient_flow(GradientFlowConfig(cells=("residual",), T=6, steps=2, hidden=4, batch=4)).cells
    assert len(flows[0].init) == len(flows[0].trained) == 6 and len(flows[0].losses) == 2
    with pytest.raises(ValueError, match="GradientFlowConfig: cells must be a non-empty tuple of names from"):
        GradientFlowConfig(cells=("feedback",))

def test_gradient_flow_of_a_deep_transition():
    flows = measure_gradient_flow(GradientFlowConfig(cells=("vanilla",), T=6, steps=0, hidden=4, batch=4,
                                                     depth=3)).cells
    assert len(flows[0].init) == 6 and all(n > 0 for n in flows[0].init)


def test_a_depth_a_cell_refuses_fails_before_any_cell_trains(tmp_path, capsys):
    """`gradients --depth 2` trained vanilla to lstm (minutes each) and then failed at the GRU, losing them."""
    with pytest.raises(ValueError, match=r"depth must be 1 while cells holds gru \(GRUCell: depth must be 1"):
        GradientFlowConfig(depth=2)
    state = torch.random.get_rng_state()
    GradientFlowConfig(depth=2, cells=("vanilla", "lstm"))  # the check builds cells, leaving the random stream
    assert torch.equal(torch.random.get_rng_state(), state)
    assert main(["gradients", "--depth", "2", "--out", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err.startswith("rnnlab gradients: error: --depth must be 1 while cells holds gru")
    assert not (tmp_path / "g").exists()

def test_cli_gradients(tmp_path, capsys):
    assert main(["gradients", "--cells", "vanilla,gru", "--T", "6", "--steps", "1", "--hidden", "4",
                 "--out", str(tmp_path)]) == 0
    assert "| gru | init |" in capsys.readouterr().out
    assert (tmp_path / "gradients.png").exists()
