"""The ladder: each cell against the lecture's equations written out by hand, gradcheck, the
options the 'official' implementations add, and clear errors (torch.nn equivalence and conversion:
test_interop.py; initialisers, constraints, regularisers: test_init.py)."""

import pytest
import torch
import torch.nn.functional as F

import rnnlab as R
from rnnlab.cells import LADDER

torch.manual_seed(0)
I, H, O, B = 3, 4, 2, 5
σ, tanh = torch.sigmoid, torch.tanh


def lin(x, w, b=None):
    return x @ w.T + (0 if b is None else b)


def gate_blocks(cell, k):
    """U_k, V_k, W_k, b_k of gate k, sliced from the fused weights."""
    rows = slice(k * H, (k + 1) * H)
    U = cell.weight_ih[rows]
    V = cell.weight_hh[rows] if cell.weight_hh is not None else None
    W = cell.weight_yh[rows] if cell.weight_yh is not None else None
    b = cell.bias_ih[rows] + (cell.bias_hh[rows] if cell.bias_hh is not None else 0)
    return U, V, W, b


def z(cell, k, x, s, y):
    """z_k = U_k x + V_k s + W_k y + b_k (eq. 1)."""
    U, V, W, b = gate_blocks(cell, k)
    out = lin(x, U) + b
    if V is not None:
        out = out + lin(s, V)
    if W is not None:
        out = out + lin(y, W)
    return out


@pytest.fixture
def xsy():
    return torch.randn(B, I), torch.randn(B, H), torch.randn(B, O)


def test_vanilla_is_eq1(xsy):
    x, s, y = xsy
    cell = R.VanillaCell(I, H, O)
    out, new = cell(x, s, y)
    torch.testing.assert_close(new, tanh(z(cell, 0, x, s, y)))
    torch.testing.assert_close(out, new)


def test_vanilla_activation_is_choosable(xsy):
    x, s, y = xsy
    cell = R.VanillaCell(I, H, O, activation="relu")
    torch.testing.assert_close(cell(x, s, y)[1], torch.relu(z(cell, 0, x, s, y)))


@pytest.mark.parametrize("residual", ["after", "before"])
def test_residual(xsy, residual):
    x, s, y = xsy
    cell = R.ResidualCell(I, H, O, residual=residual)
    expected = s + tanh(z(cell, 0, x, s, y)) if residual == "after" else tanh(z(cell, 0, x, s, y) + s)
    torch.testing.assert_close(cell(x, s, y)[1], expected)


def test_input_gate(xsy):
    x, s, y = xsy
    cell = R.InputGatedCell(I, H, O)
    i, r = σ(z(cell, 0, x, s, y)), tanh(z(cell, 1, x, s, y))
    torch.testing.assert_close(cell(x, s, y)[1], s + i * r)


def test_forget_gate(xsy):
    x, s, y = xsy
    cell = R.ForgetGatedCell(I, H, O)
    i, f, r = σ(z(cell, 0, x, s, y)), σ(z(cell, 1, x, s, y)), tanh(z(cell, 2, x, s, y))
    torch.testing.assert_close(cell(x, s, y)[1], f * s + i * r)


def test_lstm_in_a_slide(xsy):
    x, s_bar, y = xsy
    s = torch.randn(B, H)
    cell = R.LSTMCell(I, H, O)
    # the gates read s_bar^{t-1} and y^{t-1}
    r = tanh(z(cell, 2, x, s_bar, y))
    i, f, o = σ(z(cell, 0, x, s_bar, y)), σ(z(cell, 1, x, s_bar, y)), σ(z(cell, 3, x, s_bar, y))
    s_new = f * s + i * r
    s_bar_new = o * tanh(s_new)
    out, (h, c) = cell(x, (s_bar, s), y)
    torch.testing.assert_close(c, s_new)
    torch.testing.assert_close(h, s_bar_new)
    torch.testing.assert_close(out, s_bar_new)


def test_gru(xsy):
    x, s, y = xsy
    cell = R.GRUCell(I, H, O)
    blk = lambda w, k: w[k * H:(k + 1) * H]
    zx = [lin(x, blk(cell.weight_ih, k), blk(cell.bias_ih, k)) + lin(y, blk(cell.weight_yh, k)) for k in range(3)]
    zh = [lin(s, blk(cell.weight_hh, k), blk(cell.bias_hh, k)) for k in range(3)]
    r, u = σ(zx[0] + zh[0]), σ(zx[1] + zh[1])
    n = tanh(zx[2] + r * zh[2])
    torch.testing.assert_close(cell(x, s, y)[1], (1 - u) * n + u * s)


def test_output_feedback_cell_ignores_state(xsy):
    x, s, y = xsy
    cell = R.OutputFeedbackCell(I, H, O)
    assert cell.weight_hh is None
    U, W, b = cell.weight_ih, cell.weight_yh, cell.bias_ih
    out, new = cell(x, s, y)
    torch.testing.assert_close(new, tanh(lin(x, U) + lin(y, W) + b))
    torch.testing.assert_close(cell(x, torch.randn(B, H), y)[1], new)


@pytest.mark.parametrize("name", ["forget", "lstm", "gru", "residual", "input"])
def test_reads_state_false_is_linear_in_state(name):
    cell = LADDER[name](I, H, O, reads_state=False)
    assert cell.weight_hh is None
    x, y = torch.randn(B, I), torch.randn(B, O)
    s0 = cell.initial_state(B)
    a = tuple(torch.randn(B, H) for _ in range(2)) if isinstance(s0, tuple) else torch.randn(B, H)
    b = tuple(torch.randn(B, H) for _ in range(2)) if isinstance(s0, tuple) else torch.randn(B, H)
    mem = lambda st: st[1] if isinstance(st, tuple) else st  # the linearly updated memory s
    lerp = lambda u, v, t: tuple(p + t * (q - p) for p, q in zip(u, v)) if isinstance(u, tuple) else u + t * (v - u)
    # s^t = A s^{t-1} + c  =>  the update of a mix is the mix of the updates
    mixed = mem(cell(x, lerp(a, b, 0.3), y)[1])
    torch.testing.assert_close(mixed, mem(lerp(cell(x, a, y)[1], cell(x, b, y)[1], 0.3)))


# --- gradcheck ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LADDER))
@pytest.mark.parametrize("feedback", [0, O])
def test_gradcheck(name, feedback):
    cell = LADDER[name](I, H, feedback).double()
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, feedback, dtype=torch.float64, requires_grad=True) if feedback else None
    s0 = cell.initial_state(2, dtype=torch.float64)
    if isinstance(s0, tuple):
        s0 = tuple(torch.randn_like(p).requires_grad_() for p in s0)
    else:
        s0 = torch.randn_like(s0).requires_grad_()
    params = list(cell.parameters())
    # inputs, fed-back outputs and state
    def g(*args):
        x_, *rest = args
        y_ = rest.pop(0) if feedback else None
        s_ = (rest[0], rest[1]) if isinstance(s0, tuple) else rest[0]
        return cell(x_, s_, y_)[1]

    state_inputs = list(s0) if isinstance(s0, tuple) else [s0]
    assert torch.autograd.gradcheck(g, [x] + ([y] if y is not None else []) + state_inputs)
    # parameters: check d(loss)/d(param) against finite differences
    def h(*ps):
        state = s0 if not isinstance(s0, tuple) else tuple(t.detach() for t in s0)
        out = torch.func.functional_call(cell, {n: p for (n, _), p in zip(cell.named_parameters(), ps)},
                                         (x.detach(), state, None if y is None else y.detach()))
        return out[1]
    assert torch.autograd.gradcheck(h, [p.detach().clone().requires_grad_() for p in params])


# --- the official extras ------------------------------------------------------------------------


def test_gate_activation_choosable(xsy):
    x, s, y = xsy
    cell = R.InputGatedCell(I, H, O, gate_activation="hard_sigmoid")
    expected = s + F.hardsigmoid(z(cell, 0, x, s, y)) * tanh(z(cell, 1, x, s, y))
    torch.testing.assert_close(cell(x, s, y)[1], expected)


def test_deep_transition():
    cell = R.VanillaCell(I, H, depth=3)
    x, s = torch.randn(B, I), torch.randn(B, H)
    l1, l2 = cell.transition[1], cell.transition[3]
    u = tanh(lin(x, cell.weight_ih, cell.bias_ih) + lin(s, cell.weight_hh, cell.bias_hh))
    expected = tanh(l2(tanh(l1(u))))
    torch.testing.assert_close(cell(x, s)[1], expected)
    lstm = R.LSTMCell(I, H, O, depth=2)
    assert lstm.transition[-1].out_features == 4 * H
    out, _ = lstm(torch.randn(B, I), None, torch.randn(B, O))
    assert out.shape == (B, H)


def test_recurrent_dropout_is_one_mask_per_sequence():
    cell = R.VanillaCell(I, H, recurrent_dropout=0.5, activation="identity", bias=False)
    runner = R.Recurrent(cell, implementation="reference")
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.copy_(torch.eye(H))
    state = torch.ones(1, H)
    cell.train()
    ys, _ = runner(torch.zeros(1, 4, I), state)
    dropped = ys[0, 0] == 0
    # the same units are dropped at every step: a unit zeroed once stays zero, a kept one doubles
    for t in range(1, 4):
        torch.testing.assert_close(ys[0, t] == 0, dropped)
    cell.eval()
    torch.testing.assert_close(runner(torch.zeros(1, 4, I), state)[0][0, -1], torch.ones(H))


def test_input_dropout_only_in_training():
    cell = R.VanillaCell(I, H, dropout=0.9)
    x = torch.randn(B, I)
    cell.eval()
    a, b = cell(x)[0], cell(x)[0]
    torch.testing.assert_close(a, b)
    cell.train()
    outs = {tuple(cell(x)[0].flatten().tolist()) for _ in range(5)}
    assert len(outs) > 1


def test_zoneout_expectation_at_eval(xsy):
    x, s, y = xsy
    cell = R.VanillaCell(I, H, O, zoneout=0.25).eval()
    torch.testing.assert_close(cell(x, s, y)[1], 0.25 * s + 0.75 * tanh(z(cell, 0, x, s, y)))
    cell.train()
    new = cell(x, s, y)[1]
    fresh = tanh(z(cell, 0, x, s, y))
    assert torch.all(torch.isclose(new, s) | torch.isclose(new, fresh))


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LADDER))
def test_a_state_check_refuses_a_wrong_state_after_right_ones(name):
    """check_state learns the state's structure once (cached): later calls still refuse a wrong one."""
    cell = LADDER[name](I, H)
    right = cell.initial_state(B)
    for _ in range(2):
        cell.check_state(right, B, "here")
    wrong = right[0] if isinstance(right, tuple) else (right, right)
    with pytest.raises(ValueError, match="here: state must be a t"):
        cell.check_state(wrong, B, "here")
    with pytest.raises(ValueError, match=rf"here: state must be \({B + 1}, "):  # another batch
        cell.check_state(right, B + 1, "here")


def test_cell_errors_name_argument_expected_and_actual():
    cell = R.LSTMCell(I, H)
    with pytest.raises(ValueError, match=r"LSTMCell: x must be \(B, 3\); got tensor \(5, 7\)"):
        cell(torch.randn(B, 7))
    with pytest.raises(ValueError, match="x must be"):
        cell(torch.randn(B, 2, I))
    with pytest.raises(ValueError, match="floating-point"):
        cell(torch.ones(B, I, dtype=torch.long))
    with pytest.raises(ValueError, match="y_prev given but LSTMCell has no output feedback"):
        cell(torch.randn(B, I), None, torch.randn(B, O))
    with pytest.raises(ValueError, match="state must be a tuple of 2 tensors"):
        cell(torch.randn(B, I), torch.randn(B, H))
    with pytest.raises(ValueError, match=r"state must be \(5, 4\); got tensor \(5, 9\)"):
        cell(torch.randn(B, I), (torch.randn(B, 9), torch.randn(B, 9)))
    with pytest.raises(ValueError, match=r"y_prev must be \(5, 2\)"):
        R.GRUCell(I, H, O)(torch.randn(B, I), None, torch.randn(B, 3))
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1; got 0"):
        R.VanillaCell(I, 0)
    with pytest.raises(ValueError, match="activation must be one of"):
        R.VanillaCell(I, H, activation="swoosh")
    with pytest.raises(ValueError, match="dropout must be in"):
        R.VanillaCell(I, H, dropout=1.0)
    with pytest.raises(ValueError, match="reads_state must be False"):
        R.OutputFeedbackCell(I, H, reads_state=True)


# --- the cells users ask torch for ------------------------------------------------------------------

def test_peephole_lstm_equations():
    cell = R.PeepholeLSTMCell(I, H, O)
    x, y = torch.randn(B, I), torch.randn(B, O)
    h, c = torch.randn(B, H), torch.randn(B, H)
    p_i, p_f, p_o = cell.weight_peephole
    i = σ(z(cell, 0, x, h, y) + p_i * c)
    f = σ(z(cell, 1, x, h, y) + p_f * c)
    c_new = f * c + i * tanh(z(cell, 2, x, h, y))
    o = σ(z(cell, 3, x, h, y) + p_o * c_new)  # the output gate reads the new cell state
    out, (h_new, c_got) = cell(x, (h, c), y)
    torch.testing.assert_close(c_got, c_new)
    torch.testing.assert_close(h_new, o * tanh(c_new))
    torch.testing.assert_close(out, h_new)


def test_peephole_lstm_with_zero_peepholes_is_the_lstm():
    plain, peep = R.LSTMCell(I, H, O), R.PeepholeLSTMCell(I, H, O)
    peep.load_state_dict({**plain.state_dict(), "weight_peephole": torch.zeros(3, H)})
    x, y, st = torch.randn(B, I), torch.randn(B, O), (torch.randn(B, H), torch.randn(B, H))
    torch.testing.assert_close(peep(x, st, y)[1], plain(x, st, y)[1])


def layer_norm(v, norm):
    std = (v.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    return (v - v.mean(-1, keepdim=True)) / std * norm.weight + norm.bias


def test_layernorm_lstm_equations():
    cell = R.LayerNormLSTMCell(I, H, O)
    with torch.no_grad():  # gains and shifts away from 1 and 0, so that they are tested too
        for norm in (cell.norm_ih, cell.norm_hh, cell.norm_cell):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x, y = torch.randn(B, I), torch.randn(B, O)
    h, c = torch.randn(B, H), torch.randn(B, H)
    zx = layer_norm(lin(x, cell.weight_ih) + lin(y, cell.weight_yh), cell.norm_ih) + cell.bias_ih
    zh = layer_norm(lin(h, cell.weight_hh), cell.norm_hh) + cell.bias_hh
    zi, zf, zr, zo = (zx + zh).chunk(4, dim=-1)
    c_new = σ(zf) * c + σ(zi) * tanh(zr)
    h_new = σ(zo) * tanh(layer_norm(c_new, cell.norm_cell))
    out, (h_got, c_got) = cell(x, (h, c), y)
    torch.testing.assert_close(c_got, c_new)
    torch.testing.assert_close(h_got, h_new)


def test_layernorm_lstm_refuses_a_deep_transition():
    with pytest.raises(ValueError, match="LayerNormLSTMCell: depth must be 1"):
        R.LayerNormLSTMCell(I, H, depth=2)


def test_projected_lstm_equations():
    P = 3
    cell = R.ProjectedLSTMCell(I, H, O, proj_size=P)
    assert tuple(cell.weight_hh.shape) == (4 * H, P) and tuple(cell.weight_hr.shape) == (P, H)
    x, y = torch.randn(B, I), torch.randn(B, O)
    h, c = torch.randn(B, P), torch.randn(B, H)
    c_new = σ(z(cell, 1, x, h, y)) * c + σ(z(cell, 0, x, h, y)) * tanh(z(cell, 2, x, h, y))
    h_new = lin(σ(z(cell, 3, x, h, y)) * tanh(c_new), cell.weight_hr)  # the gates read the projection
    out, (h_got, c_got) = cell(x, (h, c), y)
    torch.testing.assert_close(c_got, c_new)
    torch.testing.assert_close(h_got, h_new)
    torch.testing.assert_close(out, h_new)
    assert R.Recurrent(cell).output_size == P and R.ProjectedLSTMCell(I, 9).proj_size == 4  # default H // 2


def test_projected_lstm_loads_into_torch_lstm_with_proj_size_strictly():
    torch.manual_seed(1)
    cell = R.ProjectedLSTMCell(I, 6, proj_size=2).double()
    module = torch.nn.LSTM(I, 6, proj_size=2, batch_first=True).double()
    module.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()}, strict=True)
    xs = torch.randn(B, 7, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, 2, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    ys, (h, c) = R.Recurrent(cell, implementation="reference")(xs, (h0, c0))
    expected, (h_t, c_t) = module(xs, (h0[None], c0[None]))
    torch.testing.assert_close(ys, expected)
    torch.testing.assert_close((h, c), (h_t[0], c_t[0]))
    # stacks both ways through interop, two layers (the second reads P)
    stack = R.Stacked.of(R.ProjectedLSTMCell, I, 6, 2, proj_size=2).double()
    torch_stack = R.to_torch(stack)
    assert torch_stack.proj_size == 2 and torch_stack.num_layers == 2
    torch.testing.assert_close(stack(xs)[0], torch_stack(xs)[0])
    torch.testing.assert_close(R.from_torch(torch_stack)(xs)[0], torch_stack(xs)[0])


def test_projected_lstm_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"proj_size must be an int in \[1, hidden_size\) = \[1, 4\); got 4"):
        R.ProjectedLSTMCell(I, H, proj_size=4)
    with pytest.raises(ValueError, match="ProjectedLSTMCell: depth must be 1"):
        R.ProjectedLSTMCell(I, H, depth=2)
    with pytest.raises(ValueError, match=r"state must be \(5, 2\) and \(5, 4\)"):
        R.ProjectedLSTMCell(I, H, proj_size=2)(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, H)))
    with pytest.raises(ValueError, match="torch.nn.LSTMCell has no projection"):
        R.to_torch_cell(R.ProjectedLSTMCell(I, H))
    with pytest.raises(ValueError, match=r"torch.nn.LSTM\(proj_size\) has no output feedback"):
        R.to_torch(R.Recurrent(R.ProjectedLSTMCell(I, H, O)))


@pytest.mark.parametrize("cls", [R.PeepholeLSTMCell, R.LayerNormLSTMCell, R.ProjectedLSTMCell])
def test_new_lstms_take_every_option_and_run_through_auto(cls):
    cell = cls(I, H, O, activation="softsign", gate_activation="hard_sigmoid", dropout=0.1, recurrent_dropout=0.1,
               zoneout=0.1, init=R.Init.keras(), constraints=R.Constraints(kernel=R.MaxNorm(2)),
               regularizers=R.Regularizers(kernel=R.L1L2(l2=1e-3)))
    ys, (h, c) = R.Recurrent(cell)(torch.randn(B, 6, I), y_prev=torch.randn(B, 6, O),
                                   lengths=torch.tensor([6, 5, 4, 3, 2]))
    assert ys.shape == (B, 6, R.Recurrent(cell).output_size) and bool((ys[4, 2:] == 0).all())
    assert R.regularization_loss(cell).item() > 0
    R.apply_constraints(cell)
    assert bool((cell.weight_ih.norm(dim=1) <= 2 + 1e-6).all())
    assert R.torch_mode(cell)[0] is None  # torch.nn has neither


# --- the family registry -------------------------------------------------------------------------

def test_every_cell_declares_its_own_family_and_a_subclass_must_too():
    assert {cls.family for cls in LADDER.values()} == {"vanilla", "residual", "input", "forget", "lstm", "gru",
                                                       "feedback", "peephole-lstm", "layernorm-lstm",
                                                       "projected-lstm"}
    with pytest.raises(TypeError, match="MyLSTM: a Cell subclass must declare its own `family`"):
        class MyLSTM(R.LSTMCell):  # noqa: F841  (changes the equations, inherits nothing a kernel could misread)
            def combine(self, zx, zh, state):
                return state


def test_every_cell_writes_its_equations_in_the_one_hook():
    assert all("combine" in cls.__dict__ for cls in LADDER.values())
    # final concrete classes: none is a subclass of another (what the LSTMs share is the abstract LSTMBase)
    assert not any(issubclass(cls, other) for cls in LADDER.values() for other in LADDER.values() if other is not cls)
    assert all(issubclass(LADDER[name], R.cells.LSTMBase) for name in ("lstm", "peephole-lstm", "layernorm-lstm"))
    with pytest.raises(TypeError, match="abstract"):
        R.Cell(I, H)
    with pytest.raises(TypeError, match=r"OldCell: write the equations in combine\(zx, zh, state\)"):
        class OldCell(R.Cell):  # noqa: F841  (the hook before combine: it would be silently ignored)
            family = "old"

            def update(self, z, state):
                return z


def test_the_kernels_serve_cells_by_family_not_by_class():
    from rnnlab import kernels

    class CustomCell(R.ForgetGatedCell):
        family = "custom-forget"

    cell = CustomCell(I, H)
    for implementation in ("fused", "native", "scan"):
        assert "custom-forget" in kernels.available(cell, implementation, feedback=False, lengths=False,
                                                    masks=(None, None), training=False) or implementation == "native"
    assert kernels.choose(cell, "auto", feedback=False, lengths=False, masks=(None, None),
                          training=False) == "reference"


def test_every_cell_declares_how_wide_its_output_is_and_the_runner_reads_it():
    """`Cell.output_size` is the contract (H; the projected LSTM's P), not a probe the runner guesses with."""
    for name, cls in LADDER.items():
        cell = cls(I, 6, O if name == "feedback" else 0)
        out, _ = cell(torch.randn(B, I), y_prev=torch.zeros(B, O) if name == "feedback" else None)
        assert cell.output_size == out.shape[-1] == R.Recurrent(cell).output_size, name
    assert R.ProjectedLSTMCell(I, 6, proj_size=2).output_size == 2

    class Halved(R.Cell):
        """A cell of the user's that emits half its state: it says so by overriding output_size."""

        family = "halved"

        def combine(self, zx, zh, s):
            return torch.tanh(self.preactivations(zx, zh))

        def output(self, state):
            return state[:, : self.hidden_size // 2]

        output_size = property(lambda self: self.hidden_size // 2)

    class Plain(R.Cell):
        family = "plain"

        def combine(self, zx, zh, s):
            return torch.tanh(self.preactivations(zx, zh))

    assert Plain(I, 6).output_size == 6 == R.Recurrent(Plain(I, 6)).output_size  # inherited: H
    stack = R.Stacked(R.Recurrent(Halved(I, 6)), R.Recurrent(Plain(3, 5)))  # the second reads 3 = 6 // 2
    ys, _ = stack(torch.randn(B, 4, I))
    assert R.Recurrent(Halved(I, 6)).output_size == 3 and ys.shape == (B, 4, 5)


def test_a_cell_that_sets_its_output_size_in_init_still_builds_and_runs():
    """Before output_size was a property of Cell, a cell whose output is not H wide could set it in its
    `__init__` (`self.output_size = P`: the recipe said it "also sets output_size"), and Recurrent read it;
    such a cell raised AttributeError ("property 'output_size' ... has no setter") when built."""

    class Halved(R.Cell):
        family = "halved-set"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.output_size = self.hidden_size // 2

        def combine(self, zx, zh, s):
            return torch.tanh(self.preactivations(zx, zh))

        def output(self, state):
            return state[:, : self.hidden_size // 2]

    cell = Halved(I, 6)
    ys, _ = R.Recurrent(cell)(torch.randn(B, 4, I))
    assert cell.output_size == R.Recurrent(cell).output_size == 3 and ys.shape == (B, 4, 3)
    with pytest.raises(AttributeError):  # the projected LSTM's P is its proj_size, never set apart from it
        R.ProjectedLSTMCell(I, 6, proj_size=2).output_size = 4
