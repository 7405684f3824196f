"""Conversion to and from torch.nn (rnnlab/interop.py): the cells torch.nn computes load its
state_dicts both ways and agree, cells and whole stacks convert and back, and the rest are refused."""

import pytest
import torch

import rnnlab as R

torch.manual_seed(0)
I, H, O, B = 3, 4, 2, 5


TORCH_PAIRS = [
    (lambda: R.LSTMCell(I, H), lambda: torch.nn.LSTMCell(I, H)),
    (lambda: R.GRUCell(I, H), lambda: torch.nn.GRUCell(I, H)),
    (lambda: R.VanillaCell(I, H), lambda: torch.nn.RNNCell(I, H)),
    (lambda: R.VanillaCell(I, H, activation="relu"), lambda: torch.nn.RNNCell(I, H, nonlinearity="relu")),
]


@pytest.mark.parametrize("ours, theirs", TORCH_PAIRS)
def test_state_dict_loads_both_ways_and_agrees(ours, theirs):
    a, t = ours(), theirs()
    t.load_state_dict(a.state_dict(), strict=True)
    a2 = ours()
    a2.load_state_dict(t.state_dict(), strict=True)
    x = torch.randn(B, I, requires_grad=True)
    out_a, _ = a(x)
    out_t = t(x)
    out_t = out_t[0] if isinstance(out_t, tuple) else out_t
    torch.testing.assert_close(out_a, out_t, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(out_a.pow(2).sum(), [x, *a.parameters()])
    gt = torch.autograd.grad(out_t.pow(2).sum(), [x, *t.parameters()])
    for p, q in zip(ga, gt):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a2(x)[0], out_a)


@pytest.mark.parametrize("ours, theirs", TORCH_PAIRS)
def test_cell_conversion_helpers(ours, theirs):
    a = ours()
    t = R.to_torch_cell(a)
    assert type(t) is type(theirs())
    back = R.from_torch_cell(t)
    assert type(back) is type(a)
    x = torch.randn(B, I)
    torch.testing.assert_close(back(x)[0], a(x)[0])


def test_non_torch_cells_refuse_conversion():
    with pytest.raises(ValueError, match="feedback"):
        R.to_torch_cell(R.LSTMCell(I, H, O))
    with pytest.raises(ValueError, match="no torch.nn counterpart"):
        R.to_torch_cell(R.ForgetGatedCell(I, H))


# --- whole stacks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, torch_cls, cell", [("lstm", torch.nn.LSTM, R.LSTMCell),
                                                    ("gru", torch.nn.GRU, R.GRUCell),
                                                    ("rnn", torch.nn.RNN, R.VanillaCell)])
def test_stacked_converts_to_and_from_torch(mode, torch_cls, cell):
    stack = R.Stacked.of(cell, I, H, 2)
    theirs = R.to_torch(stack)
    assert isinstance(theirs, torch_cls) and theirs.batch_first and theirs.num_layers == 2
    xs = torch.randn(3, 6, I, requires_grad=True)
    ours_ys, ours_state = stack(xs)
    their_ys, their_state = theirs(xs)
    torch.testing.assert_close(ours_ys, their_ys, atol=1e-5, rtol=1e-5)
    last = ours_state[-1][0] if mode == "lstm" else ours_state[-1]
    final = their_state[0][-1] if mode == "lstm" else their_state[-1]
    torch.testing.assert_close(last, final, atol=1e-5, rtol=1e-5)
    g_ours = torch.autograd.grad(ours_ys.pow(2).sum(), [xs, *stack.parameters()])
    g_theirs = torch.autograd.grad(their_ys.pow(2).sum(), [xs, *theirs.parameters()])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    back = R.from_torch(theirs)
    torch.testing.assert_close(back(xs)[0], ours_ys, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="module must be torch.nn.LSTM, GRU or RNN"):
        R.from_torch(torch.nn.Linear(2, 2))


def test_to_torch_refuses_what_torch_cannot_compute():
    with pytest.raises(ValueError, match="feedback"):
        R.to_torch(R.Stacked.of(R.LSTMCell, I, H, 2, feedback_size=O))
    with pytest.raises(ValueError, match="same kind of cell"):
        R.to_torch(R.Stacked(R.Recurrent(R.LSTMCell(I, H)), R.Recurrent(R.GRUCell(H, H))))


def test_to_torch_reads_the_runner_s_type_and_the_cells_declared_sizes():
    """A Recurrent converts alone (no dropout between layers), a Stacked's dropout goes to torch's, its
    residual connections are refused, and projected layers must share P (`output_size`)."""
    one = R.to_torch(R.Recurrent(R.GRUCell(I, H)))
    assert isinstance(one, torch.nn.GRU) and one.num_layers == 1 and one.dropout == 0.0
    assert R.to_torch(R.Stacked.of(R.LSTMCell, I, H, 2, dropout=0.25)).dropout == 0.25
    with pytest.raises(ValueError, match="residual"):
        R.to_torch(R.Stacked.of(R.LSTMCell, H, H, 2, residual=True))
    projected = R.to_torch(R.Stacked.of(R.ProjectedLSTMCell, I, H, 2, proj_size=2))
    assert projected.proj_size == 2
    with pytest.raises(ValueError, match="same proj_size"):
        R.to_torch(R.Stacked(R.Recurrent(R.ProjectedLSTMCell(I, H, proj_size=2)),
                             R.Recurrent(R.ProjectedLSTMCell(2, H, proj_size=3))))


@pytest.mark.parametrize("training", [False, True])
def test_conversion_keeps_the_training_mode(training):
    """An eval-mode module came back in training mode: with dropout between layers its outputs were
    random where the module's were not, right-shaped and silently wrong."""
    theirs = torch.nn.LSTM(I, H, num_layers=2, dropout=0.5, batch_first=True).train(training)
    ours = R.from_torch(theirs)
    assert ours.training == training and all(m.training == training for m in ours.modules())
    assert R.to_torch(ours).training == training
    cell = torch.nn.GRUCell(I, H).train(training)
    assert R.from_torch_cell(cell).training == training
    assert R.to_torch_cell(R.from_torch_cell(cell)).training == training
    if not training:
        xs = torch.randn(B, 6, I)
        with torch.no_grad():
            torch.testing.assert_close(ours(xs)[0], theirs(xs)[0], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(R.to_torch(ours)(xs)[0], theirs(xs)[0], atol=1e-6, rtol=1e-6)
