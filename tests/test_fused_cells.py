"""The fused loops of the peephole, layer-norm and projected LSTMs (rnnlab/kernels/fused_cells.py and
its C++ module cell_loops.cpp) against the reference step loop in float64: outputs, final state and
every gradient (inputs, fed-back outputs, initial state, each parameter), with lengths and dropout
masks; the C++ loops and the Python ones alike."""

import pytest
import torch

import rnnlab as R
from rnnlab import kernels
from rnnlab.kernels import compiled, fused_cells

from conftest import EXTENSIONS

B, T, I, H, O = 5, 7, 3, 6, 2
CELLS = {"peephole-lstm": R.PeepholeLSTMCell, "layernorm-lstm": R.LayerNormLSTMCell,
         "projected-lstm": R.ProjectedLSTMCell}
LOOPS = ["python"] + (["c++"] if EXTENSIONS.get(fused_cells.MODULE) is not None else [])


def make(name, feedback, reads_state, **options):
    torch.manual_seed(3)
    cell = CELLS[name](I, H, feedback, reads_state=reads_state, **options).double()
    with torch.no_grad():  # gains, shifts and peepholes away from their start, so that they are tested too
        for p in cell.parameters():
            p.add_(torch.rand_like(p) * 0.2)
    return cell


def run(cell, implementation, xs, state, y_prev, lengths, masks):
    params = [p for p in cell.parameters()]
    for t in (xs, y_prev, *state):
        if t is not None:
            t.grad = None
    for p in params:
        p.grad = None
    ys, (h, c) = kernels.run(cell, xs, state, y_prev, lengths, masks, implementation)
    weights = torch.linspace(0.5, 1.5, ys.numel(), dtype=ys.dtype).view_as(ys)
    loss = (ys * weights).sum() + (h ** 2).sum() + (c * 0.3).sum()
    loss.backward()
    grads = [t.grad for t in (xs, y_prev, *state) if t is not None] + [p.grad for p in params]
    return [ys.detach(), h.detach(), c.detach()] + grads


@pytest.fixture(params=LOOPS)
def loop(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: None)
    return request.param


CASES = [(name, feedback, reads_state, lengths, dropout)
         for name in CELLS for feedback in (0, O) for reads_state in (True, False)
         for lengths, dropout in ((False, False), (True, True))]


@pytest.mark.parametrize("name,feedback,reads_state,lengths,dropout", CASES)
def test_fused_matches_the_reference_in_float64(loop, name, feedback, reads_state, lengths, dropout):
    cell = make(name, feedback, reads_state, activation="softsign" if lengths else "tanh")
    assert kernels.available(cell, "fused", feedback=bool(feedback), lengths=lengths, masks=(None, None),
                             training=False) is None
    xs = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    y_prev = torch.randn(B, T, O, dtype=torch.float64, requires_grad=True) if feedback else None
    h0, c0 = (torch.randn_like(p).requires_grad_() for p in cell.initial_state(B, dtype=torch.float64))
    length = torch.tensor([7, 3, 7, 1, 5]) if lengths else None
    read = cell.proj_size if name == "projected-lstm" else H
    masks = (torch.rand(B, I, dtype=torch.float64) * 2, torch.rand(B, read, dtype=torch.float64) * 2) if dropout \
        else (None, None)
    if not reads_state:
        masks = (masks[0], None)
    expected = run(cell, "reference", xs, (h0, c0), y_prev, length, masks)
    got = run(cell, "fused", xs, (h0, c0), y_prev, length, masks)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        if e is None:  # unread (h0 without a state read): no gradient there, or zeros
            assert g is None or not bool(g.any())
            continue
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CELLS)
def test_fused_without_grad_and_without_bias(loop, name):
    cell = make(name, 0, True, bias=False, gate_activation="hard_sigmoid")
    xs = torch.randn(B, T, I, dtype=torch.float64)
    state = cell.initial_state(B, dtype=torch.float64)
    with torch.no_grad():
        expected = kernels.run(cell, xs, state, None, None, None, "reference")
        got = kernels.run(cell, xs, state, None, None, None, "fused")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CELLS)
def test_auto_runs_these_cells_fused_and_refuses_what_fused_cannot(name):
    cell = CELLS[name](I, H)
    context = dict(feedback=False, lengths=False, masks=(None, None), training=False)
    assert kernels.choose(cell, "auto", **context) == "fused"
    assert "zoneout" in kernels.available(CELLS[name](I, H, zoneout=0.1), "fused", **context)
    assert "gelu" in kernels.available(CELLS[name](I, H, activation="gelu"), "fused", **context)


def test_fused_in_float32_is_close_to_the_reference():
    for name in CELLS:
        cell = CELLS[name](I, H)
        xs = torch.randn(B, T, I)
        state = cell.initial_state(B)
        torch.testing.assert_close(kernels.run(cell, xs, state, None, None, None, "fused"),
                                   kernels.run(cell, xs, state, None, None, None, "reference"), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("rows", [4, 16])
def test_layer_norms_of_rows_far_from_zero_in_float32(loop, rows):
    """The C++ loop's moments take a row's mean and variance in one pass, shifted by one of the row's own
    values: a row of pre-activations offset by 1000 (a constant input feature of weight 1000) keeps its
    spread of about 0.35, where E[v^2] - mean^2 in float32 (ulp(10^6) = 0.06) would lose most of it. Without
    a gradient the steps normalise x_t U^T themselves: with 16 rows they compute it too
    (time_major.steps_multiply_inputs), with 4 it is one product over all steps."""
    torch.manual_seed(5)
    cell = R.LayerNormLSTMCell(I + 1, H)
    with torch.no_grad():
        cell.weight_ih[:, 0] = 1e3
    xs = torch.cat([torch.ones(rows, T, 1), torch.randn(rows, T, I)], dim=-1)
    state = cell.initial_state(rows)
    with torch.no_grad():
        ys, (_, c) = kernels.run(cell, xs, state, None, None, None, "fused")
        oracle = cell.double()
        want, (_, want_c) = kernels.run(oracle, xs.double(), tuple(s.double() for s in state), None, None, None,
                                        "reference")
    # float32's rounding of the offset rows themselves (ulp(1000) = 6e-5 against their spread) is the bound
    torch.testing.assert_close(ys.double(), want, rtol=0, atol=1e-2)
    torch.testing.assert_close(c.double(), want_c, rtol=0, atol=1e-2)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_steps_that_multiply_their_own_inputs(loop, name, grad):
    """From 16 rows the C++ steps compute x_t U^T themselves (time_major.steps_multiply_inputs: the
    peephole and projected LSTMs; the layer-norm LSTM its LN_x(x_t U^T) where nothing is
    differentiated), and without grad keep rings of one step: against reference in float64, with
    lengths, dropout masks and feedback, under no_grad and inference_mode, and with grad (outputs
    and gradients)."""
    batch = 17
    cell = make(name, O, True)
    xs = torch.randn(batch, T, I, dtype=torch.float64, requires_grad=grad)
    y_prev = torch.randn(batch, T, O, dtype=torch.float64, requires_grad=grad)
    h0, c0 = (torch.randn_like(p).requires_grad_(grad) for p in cell.initial_state(batch, dtype=torch.float64))
    length = torch.randint(1, T + 1, (batch,), generator=torch.Generator().manual_seed(2))
    read = cell.proj_size if name == "projected-lstm" else H
    masks = (torch.rand(batch, I, dtype=torch.float64) * 2, torch.rand(batch, read, dtype=torch.float64) * 2)
    if grad:
        expected = run(cell, "reference", xs, (h0, c0), y_prev, length, masks)
        for e, g in zip(expected, run(cell, "fused", xs, (h0, c0), y_prev, length, masks)):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)
        return
    with torch.no_grad():
        expected = kernels.run(cell, xs, (h0, c0), y_prev, length, masks, "reference")
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            got = kernels.run(cell, xs, (h0, c0), y_prev, length, masks, "fused")
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
