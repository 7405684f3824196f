"""Initialisers, constraints and regularisers (rnnlab/init.py): torch's and Keras's schemes against
their formulas, constraints applied after a step, the penalties summed into one loss."""

import pytest
import torch

import rnnlab as R

torch.manual_seed(0)
I, H, B = 3, 4, 5


def test_default_init_is_torch_uniform():
    cell = R.LSTMCell(I, 64)
    bound = 1 / 64 ** 0.5
    for p in cell.parameters():
        assert p.abs().max() <= bound


def test_keras_init():
    cell = R.LSTMCell(I, H, init=R.Init.keras())
    # Keras's orthogonal (H, 4H) recurrent kernel has orthonormal rows: torch's (4H, H) orthonormal columns
    torch.testing.assert_close(cell.weight_hh.T @ cell.weight_hh, torch.eye(H), atol=1e-5, rtol=0)
    f = slice(H, 2 * H)
    assert torch.all(cell.bias_ih[f] == 1) and torch.all(cell.bias_hh[f] == 0)
    assert torch.all(cell.bias_ih[:H] == 0)


def test_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="kernel must be one of"):
        R.Init(kernel="glorot")


def test_keras_glorot_bound_counts_every_gate():
    # Keras: limit = sqrt(6 / (fan_in + fan_out)) over the whole (I, 4H) kernel: 0.0533 at I=64, H=512
    torch.manual_seed(0)
    cell = R.LSTMCell(64, 512, init=R.Init.keras())
    bound = (6 / (64 + 4 * 512)) ** 0.5
    assert abs(bound - 0.0533) < 1e-4
    w = cell.weight_ih
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    torch.testing.assert_close(w.var().item(), bound ** 2 / 3, rtol=0.05, atol=0)  # U(-b, b) has variance b^2/3


def test_constraints_applied():
    cell = R.LSTMCell(I, H, constraints=R.Constraints(kernel=R.MaxNorm(0.5), recurrent=R.NonNeg(), bias=R.UnitNorm()))
    with torch.no_grad():
        for p in cell.parameters():
            p.mul_(10)
    R.apply_constraints(cell)
    assert torch.all(cell.weight_ih.norm(dim=1) <= 0.5 + 1e-6)
    assert torch.all(cell.weight_hh >= 0)
    torch.testing.assert_close(cell.bias_ih.norm(), torch.tensor(1.0))


def test_regularisers_sum_into_one_loss():
    cell = R.ForgetGatedCell(I, H, regularizers=R.Regularizers(kernel=R.L1L2(l1=0.1), recurrent=R.L1L2(l2=0.2),
                                                               activity=R.L1L2(l2=1.0)))
    runner = R.Recurrent(cell)
    ys, _ = runner(torch.randn(B, 3, I))
    # the activity term as Keras: the sum over the output divided by the batch size
    expected = 0.1 * cell.weight_ih.abs().sum() + 0.2 * cell.weight_hh.pow(2).sum() + ys.pow(2).sum() / B
    torch.testing.assert_close(R.regularization_loss(runner), expected)
    assert R.regularization_loss(R.Recurrent(R.LSTMCell(I, H))).item() == 0


def test_the_loss_and_the_constraints_serve_the_modules_that_declare_them():
    """regularization_loss and apply_constraints read the declared `Regularized` and `Constrained`
    (cells and Recurrent runners are both), never a method that happens to be named penalty."""
    from rnnlab.init import Constrained, Regularized

    assert isinstance(R.LSTMCell(I, H), Regularized) and isinstance(R.LSTMCell(I, H), Constrained)
    assert isinstance(R.Recurrent(R.LSTMCell(I, H)), Regularized)

    class Declared(torch.nn.Module, Regularized, Constrained):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((2,), 3.0))

        def penalty(self):
            return self.weight.sum()

        def constrain(self):
            self.weight.clamp_(max=1.0)

    class Undeclared(torch.nn.Module):
        def penalty(self):
            raise AssertionError("a module that does not declare Regularized is not asked for a penalty")

        def constrain(self):
            raise AssertionError("a module that does not declare Constrained is not constrained")

    model = torch.nn.Sequential(Declared(), Undeclared())
    assert R.regularization_loss(model).item() == 6.0
    R.apply_constraints(model)
    assert model[0].weight.tolist() == [1.0, 1.0]


def test_a_constraint_that_returns_the_projected_weight_is_applied():
    """A Keras-style constraint returns the new weight instead of changing it in place; it was
    called and its result dropped, the weight left unconstrained without a word."""
    cell = R.LSTMCell(3, 6, constraints=R.Constraints(kernel=lambda w: w.clamp(-0.01, 0.01),
                                                      recurrent=lambda w: w.clamp(min=0.0)))
    R.apply_constraints(cell)
    assert float(cell.weight_ih.detach().abs().max()) <= 0.01 and float(cell.weight_hh.detach().min()) >= 0.0
    scalar = R.LSTMCell(3, 6, constraints=R.Constraints(bias=lambda w: w.norm()))  # not a projection
    with pytest.raises(ValueError, match=r"^LSTMCell: the bias constraint must change the weight in place or "
                                         r"return it projected, \(24,\); got a tensor \(\)$"):
        R.apply_constraints(scalar)
    in_place = R.LSTMCell(3, 6, constraints=R.Constraints(kernel=R.MaxNorm(0.1)))
    R.apply_constraints(in_place)
    assert float(in_place.weight_ih.detach().norm(dim=1).max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("call, message", [
    (lambda: R.Constraints(kernel=R.MaxNorm), r"Constraints: kernel must be None or callable on a weight, e.g. "
                                              r"MaxNorm\(3.0\); got the class MaxNorm \(call it: MaxNorm\(...\)\)"),
    (lambda: R.Regularizers(activity=R.L1L2), r"Regularizers: activity must be .*; got the class L1L2"),
    (lambda: R.apply_constraints(torch.zeros(2)),
     r"apply_constraints: module must be a torch.nn.Module .*; got Tensor"),
    (lambda: R.regularization_loss([R.LSTMCell(3, 6)]), r"regularization_loss: module must be a torch.nn.Module "
                                                        r".*; got list"),
])
def test_a_class_where_an_instance_belongs_or_a_non_module_is_a_type_error_naming_it(call, message):
    """MaxNorm (the class) passed the callable check and failed at the first step with a 25-line
    message printing a weight; a tensor given to apply_constraints failed on `.modules`."""
    with pytest.raises(TypeError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
