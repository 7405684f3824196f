"""Runners: the contract every cell passes, lengths, stacking, bidirectional and entry errors
(conversion to torch.nn: test_interop.py)."""

import pytest
import torch

import rnnlab as R
from rnnlab.cells import LADDER
from rnnlab.runners import check_implementations

torch.manual_seed(0)
I, H, O = 3, 5, 2


def make(name, feedback=0, **kw):
    return R.Recurrent(LADDER[name](I, H, feedback, **kw), implementation="reference")


def inputs(b, t, feedback):
    xs = torch.randn(b, t, I)
    return xs, (torch.randn(b, t, feedback) if feedback else None)


def by_hand(runner, xs, y_prev=None, state=None):
    """The unrolling written out: one checked cell call per step."""
    cell, outs = runner.cell, []
    for t in range(xs.shape[1]):
        out, state = cell(xs[:, t], state, None if y_prev is None else y_prev[:, t])
        outs.append(out)
    return torch.stack(outs, 1), state


def same_state(a, b, **kw):
    if isinstance(a, tuple):
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, **kw)
    else:
        torch.testing.assert_close(a, b, **kw)


# --- the contract: every cell, with and without feedback -----------------------------------------

@pytest.mark.parametrize("name", sorted(LADDER))
@pytest.mark.parametrize("feedback", [0, O])
def test_contract(name, feedback):
    runner = make(name, feedback)
    xs, yp = inputs(4, 6, feedback)
    ys, state = runner(xs, y_prev=yp)
    # shapes (the projected LSTM emits its P = H // 2 units)
    out = runner.output_size
    assert ys.shape == (4, 6, out) and out == (H // 2 if name == "projected-lstm" else H)
    ref_ys, ref_state = by_hand(runner, xs, yp)
    torch.testing.assert_close(ys, ref_ys)
    same_state(state, ref_state)
    # state round trip: two halves with the state carried equal one pass
    a, sa = runner(xs[:, :2], y_prev=None if yp is None else yp[:, :2])
    b, sb = runner(xs[:, 2:], sa, None if yp is None else yp[:, 2:])
    torch.testing.assert_close(torch.cat([a, b], 1), ys)
    same_state(sb, state)
    # lengths: outputs past the end are zero, final state is the last valid one
    lengths = torch.tensor([6, 3, 1, 4])
    ys_l, state_l = runner(xs, y_prev=yp, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        one_ys, one_state = runner(xs[i:i + 1, :n], y_prev=None if yp is None else yp[i:i + 1, :n])
        torch.testing.assert_close(ys_l[i, :n], one_ys[0])
        assert torch.all(ys_l[i, n:] == 0)
        if isinstance(state_l, tuple):
            same_state(tuple(s[i:i + 1] for s in state_l), one_state)
        else:
            torch.testing.assert_close(state_l[i:i + 1], one_state)
    # batch of one and sequence of one
    assert runner(xs[:1], y_prev=None if yp is None else yp[:1])[0].shape == (1, 6, out)
    assert runner(xs[:, :1], y_prev=None if yp is None else yp[:, :1])[0].shape == (4, 1, out)
    # gradients reach every parameter
    ys.sum().backward()
    assert all(p.grad is not None for p in runner.parameters())


# --- entry errors ---------------------------------------------------------------------------------

def test_runner_errors():
    runner = make("lstm")
    with pytest.raises(ValueError, match=r"Recurrent: xs must be \(B, T, 3\); got tensor \(8, 3\)"):
        runner(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"xs must be \(B, T, 3\); got tensor \(8, 2, 4\)"):
        runner(torch.randn(8, 2, 4))
    with pytest.raises(ValueError, match="at least one step"):
        runner(torch.randn(8, 0, I))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]; got values from 0 to 4"):
        runner(torch.randn(2, 4, I), lengths=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]; got values from 1 to 9"):
        runner(torch.randn(2, 4, I), lengths=torch.tensor([1, 9]))
    with pytest.raises(ValueError, match=r"lengths must be an integer tensor \(2,\)"):
        runner(torch.randn(2, 4, I), lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="y_prev given but the cells have no output feedback"):
        runner(torch.randn(2, 4, I), y_prev=torch.randn(2, 4, O))
    with pytest.raises(ValueError, match="state must be a tuple of 2 tensors"):
        runner(torch.randn(2, 4, I), torch.randn(2, H))
    fb = make("gru", O)
    with pytest.raises(ValueError, match="y_prev .* is required"):
        fb(torch.randn(2, 4, I))
    with pytest.raises(ValueError, match=r"y_prev must be \(2, 4, 2\); got tensor \(2, 3, 2\)"):
        fb(torch.randn(2, 4, I), y_prev=torch.randn(2, 3, O))
    with pytest.raises(ValueError, match="implementation must be one of"):
        R.Recurrent(R.LSTMCell(I, H), implementation="fastest")
    with pytest.raises(TypeError, match=r"cell must be an rnnlab Cell .*from_torch_cell.*; got torch.nn.*LSTMCell"):
        R.Recurrent(torch.nn.LSTMCell(I, H))  # a wrong kind of object: a TypeError, as Stacked's
    with pytest.raises(TypeError, match="cell must be an rnnlab Cell such as rnnlab.LSTMCell; got builtins.str"):
        R.Recurrent("lstm")


@pytest.mark.parametrize("cell, options, implementation", [
    ("lstm", {}, "scan"), ("gru", {"zoneout": 0.1}, "fused"), ("lstm", {"recurrent_dropout": 0.1}, "native")])
def test_check_implementations_raises_what_the_first_step_would(cell, options, implementation):
    """A run refuses the flags before it writes anything (rnnlab train, seeds): the check finds, in a
    model just built, the error the forward pass would raise in training or evaluation."""
    model = R.Stacked(R.Recurrent(LADDER["gru"](I, H), "fused"),
                      R.Recurrent(LADDER[cell](H, H, **options), implementation))
    with pytest.raises(ValueError, match=f"implementation='{implementation}' cannot run") as checked:
        check_implementations(model)
    with pytest.raises(ValueError) as stepped:
        model.train()(torch.randn(2, 3, I))
    assert str(stepped.value) == str(checked.value)
    for served in ("auto", "reference"):
        check_implementations(R.Recurrent(LADDER[cell](I, H, **options), served))
    check_implementations(R.Recurrent(LADDER["lstm"](I, H), "native"))


# --- stacking ------------------------------------------------------------------------------------

def test_stacked_is_layers_in_sequence():
    stack = R.Stacked.of(R.GRUCell, I, H, 3)
    xs = torch.randn(2, 5, I)
    ys, state = stack(xs)
    h = xs
    for layer, s in zip(stack.layers, state):
        h, s_ref = layer(h)
        torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(ys, h)
    # step by step gives the same as the whole sequence at once
    st, outs = stack.initial_state(2), []
    for t in range(5):
        out, st = stack.step(xs[:, t], st)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), ys)


def test_stacked_residual_and_feedback_layers():
    stack = R.Stacked.of(R.LSTMCell, H, H, 2, residual=True, feedback_size=O, feedback_layers="first")
    assert stack.layers[0].feedback_size == O and stack.layers[1].feedback_size == 0
    xs, yp = torch.randn(2, 4, H), torch.randn(2, 4, O)
    ys, _ = stack(xs, y_prev=yp)
    h1, _ = stack.layers[0](xs, y_prev=yp)
    h2, _ = stack.layers[1](h1)
    torch.testing.assert_close(ys, h2 + h1)
    with pytest.raises(ValueError, match="residual=True needs equal sizes"):
        R.Stacked(make("lstm"), R.Recurrent(R.LSTMCell(H, 7)), residual=True)
    with pytest.raises(ValueError, match="input_size 4 cannot read a layer with output_size 5"):
        R.Stacked(make("lstm"), R.Recurrent(R.LSTMCell(4, 7)))
    with pytest.raises(ValueError, match="state must be a tuple with one entry per layer"):
        stack(xs, (None,), yp)


def test_stacked_dropout_between_layers_only_in_training():
    stack = R.Stacked.of(R.VanillaCell, I, H, 2, dropout=0.5)
    xs = torch.randn(2, 4, I)
    stack.eval()
    torch.testing.assert_close(stack(xs)[0], stack(xs)[0])
    stack.train()
    assert not torch.equal(stack(xs)[0], stack(xs)[0])


# --- bidirectional -------------------------------------------------------------------------------

def test_reverse_padded():
    xs = torch.arange(8.).reshape(2, 4, 1)
    out = R.reverse_padded(xs, torch.tensor([4, 2]))
    assert out[0, :, 0].tolist() == [3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [5, 4, 6, 7]


@pytest.mark.parametrize("merge", ["concat", "sum", "mean", "mul"])
def test_bidirectional(merge):
    bi = R.Bidirectional(make("lstm"), make("gru"), merge=merge)
    xs, lengths = torch.randn(3, 5, I), torch.tensor([5, 2, 4])
    ys, (fs, bs) = bi(xs, lengths=lengths)
    assert ys.shape == (3, 5, 2 * H if merge == "concat" else H)
    for i, n in enumerate(lengths.tolist()):
        fwd, _ = bi.forward_runner(xs[i:i + 1, :n])
        bwd, b_state = bi.backward_runner(xs[i:i + 1, :n].flip(1))
        bwd = bwd.flip(1)
        merged = {"concat": lambda f, b: torch.cat([f, b], -1), "sum": lambda f, b: f + b,
                  "mean": lambda f, b: (f + b) / 2, "mul": lambda f, b: f * b}[merge](fwd, bwd)
        torch.testing.assert_close(ys[i:i + 1, :n], merged)
        torch.testing.assert_close(bs[i:i + 1], b_state)


def test_bidirectional_errors():
    with pytest.raises(ValueError, match="merge must be one of"):
        R.Bidirectional(make("lstm"), make("lstm"), merge="max")
    with pytest.raises(ValueError, match="cannot run one step at a time"):
        R.Bidirectional(make("lstm"), make("lstm")).step(torch.randn(1, I), None)


def test_stacked_of_bidirectional():
    stack = R.Stacked(R.Bidirectional(make("lstm"), make("lstm")),
                      R.Recurrent(R.GRUCell(2 * H, H)))
    ys, state = stack(torch.randn(2, 4, I), lengths=torch.tensor([4, 3]))
    assert ys.shape == (2, 4, H) and len(state) == 2


def test_shift_right():
    y = torch.arange(6.).reshape(1, 3, 2)
    assert R.shift_right(y).tolist() == [[[0, 0], [0, 1], [2, 3]]]
    assert R.shift_right(y, torch.tensor([[9., 9.]])).tolist() == [[[9, 9], [0, 1], [2, 3]]]


def test_no_grad_inference_keeps_no_graph():
    runner = make("lstm")
    with torch.no_grad():
        ys, state = runner(torch.randn(2, 50, I))
    assert ys.grad_fn is None and state[0].grad_fn is None


def test_runner_contract_is_declared_and_stacked_takes_runners_only():
    from rnnlab.runners import Runner

    assert {"initial_state", "check_state", "sample_masks", "step", "unroll"} <= Runner.__abstractmethods__
    with pytest.raises(TypeError, match=r"Stacked: every layer must be a runner .* \(wrap a cell in Recurrent"):
        R.Stacked(R.LSTMCell(3, 4))
    with pytest.raises(TypeError, match="Stacked: every layer must be a runner .*; layer 1 is LSTM"):
        R.Stacked(R.Recurrent(R.LSTMCell(3, 4)), torch.nn.LSTM(4, 4))


def test_a_model_with_an_activity_penalty_copies_and_saves_after_a_training_forward():
    """The last forward's penalty is kept for regularization_loss, a tensor inside that forward's
    graph: copy.deepcopy of the model failed on it (a non-leaf tensor), and a pickle carried it."""
    import copy
    import io

    regs = R.Regularizers(activity=R.L1L2(l2=1e-3))
    model = R.SequenceToVector(R.Stacked.of(R.LSTMCell, 3, 6, 2, regularizers=regs), torch.nn.Linear(6, 2))
    xs = torch.randn(2, 5, 3)
    model(xs)
    assert R.regularization_loss(model).requires_grad
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (twin, loaded):
        assert float(R.regularization_loss(other)) == 0.0  # no penalty before its own forward
        torch.testing.assert_close(other(xs)[0], model(xs)[0])
        torch.testing.assert_close(R.regularization_loss(other), R.regularization_loss(model))
    assert R.regularization_loss(model).requires_grad  # the original keeps its own


def test_shift_right_takes_a_first_step_of_its_shape_only():
    """`first` was reshaped to (B, 1, -1): a (O, B) tensor of as many elements mixed the rows
    silently, and token ids (B, T) with a first token failed inside torch.cat."""
    import re

    y = torch.arange(16.).reshape(2, 2, 4)
    for first in (torch.ones(4, 2), torch.ones(8), torch.ones(2, 4, 1)):
        expected = f"shift_right: first must be y[:, 0]'s shape (2, 4); got tensor {tuple(first.shape)} torch.float32"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            R.shift_right(y, first)
    assert R.shift_right(y, torch.ones(2, 1, 4))[:, 0].eq(1).all()
    assert R.shift_right(torch.tensor([[1, 2, 3]]), torch.tensor([7])).tolist() == [[7, 1, 2]]
