"""Every fast path against the oracle `reference`: outputs, final states and all gradients (float64),
for every cell each one serves, with and without feedback, lengths and initial states; the dispatch."""

import functools
import itertools
import os
import sys

import pytest
import torch

from rnnlab import (
    ForgetGatedCell,
    GRUCell,
    InputGatedCell,
    LayerNormLSTMCell,
    LSTMCell,
    OutputFeedbackCell,
    PeepholeLSTMCell,
    ProjectedLSTMCell,
    Recurrent,
    ResidualCell,
    VanillaCell,
    kernels,
)
from rnnlab.kernels import compiled, fused_cells, time_major
from rnnlab.kernels.scan import chunked, doubling, linear_scan
from rnnlab.kernels.scan import compiled_loop as compiled_solver

from conftest import EXTENSION, EXTENSIONS  # the cached builds of the C++ loops, or None (tests never compile)

B, T, I, H, O = 4, 6, 3, 5, 2

LENGTHS = torch.tensor([6, 2, 4, 1])
LADDER = [VanillaCell, ResidualCell, InputGatedCell, ForgetGatedCell, LSTMCell, GRUCell, OutputFeedbackCell]
NEW_LSTMS = [PeepholeLSTMCell, LayerNormLSTMCell, ProjectedLSTMCell]  # fused_cells.py, module rnnlab_cell_loops


def make(cls, feedback, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return cls(I, H, O if feedback else 0, **options).to(dtype)


def inputs(cell, feedback, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(B, T, I, generator=g, dtype=dtype).to(device).requires_grad_()
    y_prev = torch.randn(B, T, O, generator=g, dtype=dtype).to(device).requires_grad_() if feedback else None
    zero = cell.initial_state(B, dtype=dtype)
    state = tuple(torch.randn(z.shape, generator=g, dtype=dtype).to(device).requires_grad_() for z in zero) \
        if isinstance(zero, tuple) else torch.randn(zero.shape, generator=g, dtype=dtype).to(device).requires_grad_()
    return xs, state, y_prev


def forward_backward(cell, implementation, xs, state, y_prev, lengths, masks=(None, None)):
    """Outputs, final state parts and the gradients of a loss touching all of them."""
    ys, final = kernels.IMPLEMENTATIONS[implementation](cell, xs, state, y_prev, lengths, masks)
    finals = final if isinstance(final, tuple) else (final,)
    weights = torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype, device=ys.device).view_as(ys)
    loss = (ys * weights).sum() + sum((f * f).sum() for f in finals)
    leaves = list(cell.parameters()) + [xs] + list(state if isinstance(state, tuple) else (state,))
    leaves += [y_prev] if y_prev is not None else []
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    # an input that does not reach the loss has a zero gradient; autograd may say None instead
    grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
    return ys, finals, grads


def assert_agree(cell, implementation, feedback, lengths, masks=(None, None), device="cpu"):
    xs, state, y_prev = inputs(cell, feedback, device)
    cell, lengths = cell.to(device), None if lengths is None else lengths.to(device)
    masks = tuple(None if m is None else m.to(device) for m in masks)
    expected = forward_backward(cell, "reference", xs, state, y_prev, lengths, masks)
    got = forward_backward(cell, implementation, xs, state, y_prev, lengths, masks)
    for what, e, g in zip(("outputs", "final state", "gradients"), expected, got):
        e, g = (e,) if isinstance(e, torch.Tensor) else e, (g,) if isinstance(g, torch.Tensor) else g
        assert len(e) == len(g), what
        for k, (a, b) in enumerate(zip(e, g)):
            torch.testing.assert_close(b, a, msg=lambda m, what=what, k=k: f"{implementation} {what}[{k}]: {m}")


def cells(**options):
    """Every ladder cell, with and without feedback, reading its state or not (where it can)."""
    for cls, feedback, reads_state in itertools.product(LADDER, (False, True), (True, False)):
        if cls is OutputFeedbackCell and reads_state:
            continue
        opts = dict(options) if cls is OutputFeedbackCell else dict(options, reads_state=reads_state)
        yield pytest.param(cls, feedback, opts, id=f"{cls.__name__}-fb{int(feedback)}-rs{int(reads_state)}")


def served(implementation, cls, feedback, options, lengths=False):
    cell = make(cls, feedback, **options)
    reason = kernels.available(cell, implementation, feedback=feedback, lengths=lengths, masks=(None, None),
                               training=False)
    return cell, reason


@pytest.mark.parametrize("implementation", ["native", "fused", "scan"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cls, feedback, options", list(cells()))
def test_agrees_with_reference(implementation, with_lengths, cls, feedback, options):
    cell, reason = served(implementation, cls, feedback, options)
    if reason is not None:
        pytest.skip(reason)
    assert_agree(cell, implementation, feedback, LENGTHS if with_lengths else None)


def test_every_cell_has_a_fast_path():
    """fused serves every ladder cell; scan every one without a state read; native torch's own."""
    for cls, feedback, options in (p.values for p in cells()):
        assert served("fused", cls, feedback, options)[1] is None
        scan_reason = served("scan", cls, feedback, options)[1]
        assert (scan_reason is None) == (not options.get("reads_state", False))
    for cls in (LSTMCell, GRUCell, VanillaCell):
        for feedback in (False, True):
            assert served("native", cls, feedback, {})[1] is None


@pytest.mark.parametrize("compiled_loop", [True, False], ids=["c++", "python"])
@pytest.mark.parametrize("feedback, masked, options", [
    (False, False, {}), (True, True, {}), (True, False, dict(reads_state=False)),
    (False, False, dict(activation="elu", gate_activation="hard_sigmoid"))])
@pytest.mark.parametrize("cls", LADDER)
def test_fused_loops(cls, compiled_loop, feedback, masked, options, monkeypatch):
    """The C++ loops and the Python ones each against reference (lengths, masks, initial state)."""
    if compiled_loop and EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    if cls is OutputFeedbackCell and (masked or options.get("reads_state") is False):
        pytest.skip("OutputFeedbackCell reads no state: no recurrent dropout, reads_state is always False")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSION if compiled_loop else None)
    cell = make(cls, feedback, recurrent_dropout=0.3 if masked else 0.0, **options).train()
    masks = (None, cell.sample_masks(B, torch.zeros((), dtype=torch.float64))[1]) if masked else (None, None)
    assert_agree(cell, "fused", feedback, LENGTHS, masks)
    assert_agree(cell, "fused", feedback, None, masks)
    if cls is ResidualCell:
        assert_agree(make(cls, feedback, residual="before", **options), "fused", feedback, LENGTHS)


def test_without_compiler_fused_falls_back(monkeypatch, tmp_path):
    """No compiler on PATH and an empty cache: `extension()` is None and fused still runs."""
    monkeypatch.undo()
    compiled.extension.cache_clear()
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
    try:
        # the notes say what happens: a build is tried, cannot be made, and the Python loops serve
        with pytest.warns(compiled.BuildNote, match=r"(building|cannot build) the C\+\+ loops"):
            assert not compiled.built() and compiled.extension() is None
    finally:
        compiled.extension.cache_clear()
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: None)
    assert_agree(make(LSTMCell, False), "fused", False, LENGTHS)


@pytest.mark.parametrize("cls", [ResidualCell, ForgetGatedCell, LSTMCell, GRUCell])
def test_scan_without_compiled_loop(cls, monkeypatch):
    """The chunked solver inside `scan`, as where no compiler is found (lengths, initial state)."""
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: None)
    assert_agree(make(cls, True, reads_state=False), "scan", True, LENGTHS)


@pytest.mark.parametrize("cls", LADDER)
@pytest.mark.parametrize("options", [{}, dict(activation="elu", gate_activation="hard_sigmoid"),
                                     dict(activation="gelu")], ids=["tanh", "elu", "gelu"])
def test_scan_compiled_loop(cls, options):
    """scan's C++ loop (gates and recurrence in one pass; gelu falls back to the linear scan node)."""
    if EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    cell = make(cls, True, **({} if cls is OutputFeedbackCell else dict(reads_state=False)), **options)
    assert_agree(cell, "scan", True, LENGTHS)
    assert_agree(cell, "scan", True, None)


def test_float_tanh_of_the_compiled_loops():
    """loops.cpp's own float tanh: within 1.5 units in the last place of the exact value (every float
    of [0.5, 1), where its two formulas meet, and a sweep beyond), and torch's at 0, -0, +-inf, NaN."""
    if EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    half, one = torch.tensor([0.5, 1.0]).view(torch.int32).tolist()
    every = torch.arange(half, one, dtype=torch.int32).view(torch.float32)
    x = torch.cat([every, -every, torch.linspace(-12, 12, 200_001), torch.logspace(-30, 1, 10_001),
                   -torch.logspace(-30, 1, 10_001),
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])])
    z = x.view(1, -1, 1)  # (B, T, H) = (1, N, 1) as a VanillaCell's scan: out = tanh(z)
    out = torch.empty_like(z)
    EXTENSION.cell_scan_forward("vanilla", "tanh", "sigmoid", z, torch.empty_like(z), torch.zeros(1, 1), None, out,
                                None, None, [])
    got, exact = out.flatten(), torch.tanh(x.double())
    ulp = (exact.float().nextafter(torch.tensor(float("inf"))) - exact.float()).double()
    error = ((got.double() - exact).abs() / ulp)[:-5]
    assert error.max() <= 1.5, f"max error {error.max():.2f} ulp at x = {x[:-5][error.argmax()]}"
    torch.testing.assert_close(got[-5:], torch.tanh(x[-5:]), equal_nan=True)
    assert torch.signbit(got[-4]) and not torch.signbit(got[-5])


@pytest.mark.parametrize("activation, gate_activation", [("relu", "hard_sigmoid"), ("softsign", "sigmoid"),
                                                         ("elu", "hard_tanh"), ("identity", "tanh")])
@pytest.mark.parametrize("cls", [VanillaCell, ForgetGatedCell, LSTMCell, GRUCell])
def test_fused_activations(cls, activation, gate_activation):
    cell = make(cls, True, activation=activation, gate_activation=gate_activation)
    assert_agree(cell, "fused", True, LENGTHS)


@pytest.mark.parametrize("implementation, cls, options", [
    ("fused", ResidualCell, dict(residual="before")),
    ("fused", ResidualCell, dict(residual="before", reads_state=False)),
    ("scan", LSTMCell, dict(reads_state=False, depth=3)),
    ("scan", ForgetGatedCell, dict(reads_state=False, depth=2, bias=False)),
    ("fused", LSTMCell, dict(bias=False)),
    ("fused", GRUCell, dict(bias=False)),
    ("native", GRUCell, dict(bias=False)),
])
def test_variants(implementation, cls, options):
    cell = make(cls, True, **options)
    assert kernels.available(cell, implementation) is None
    assert_agree(cell, implementation, True, LENGTHS)


@pytest.mark.parametrize("cls", [VanillaCell, InputGatedCell, ForgetGatedCell, LSTMCell, GRUCell])
def test_fused_applies_dropout_masks(cls):
    cell = make(cls, True, dropout=0.3, recurrent_dropout=0.4)
    cell.train()
    masks = cell.sample_masks(B, torch.zeros((), dtype=torch.float64))
    assert all(m is not None for m in masks)
    assert_agree(cell, "fused", True, LENGTHS, masks)


def test_runner_in_training_with_dropout_matches_reference():
    """Through Recurrent: the same seed samples the same masks, so fused equals reference."""
    cell = make(LSTMCell, True, dropout=0.2, recurrent_dropout=0.3).train()
    xs, state, y_prev = inputs(cell, True)
    results = []
    for implementation in ("reference", "fused"):
        torch.manual_seed(5)
        ys, _ = Recurrent(cell, implementation)(xs, state, y_prev, LENGTHS)
        results.append((ys, torch.autograd.grad(ys.square().sum(), cell.weight_hh)[0]))
    torch.testing.assert_close(results[1], results[0])


def test_native_applies_input_dropout_mask():
    cell = make(GRUCell, False, dropout=0.5).train()
    masks = (cell.sample_masks(B, torch.zeros((), dtype=torch.float64))[0], None)
    assert kernels.available(cell, "native", masks=masks) is None
    assert_agree(cell, "native", False, LENGTHS, masks)


def test_auto_picks_the_fastest_valid():
    def auto(cell, **context):
        context = dict(dict(feedback=bool(cell.feedback_size), lengths=False, masks=(None, None), training=False),
                       **context)
        return kernels.choose(cell, "auto", **context)
    assert auto(make(LSTMCell, False)) == "native"
    assert auto(make(LSTMCell, True)) == "native"  # teacher forcing: [x, y*] through torch's kernel
    # kernels.order: on CPU the compiled loop beats torch's GRU and RNN kernels, not its LSTM
    torch_kernel = "fused" if EXTENSION is not None else "native"
    assert auto(make(VanillaCell, False, activation="relu")) == torch_kernel
    assert auto(make(GRUCell, True)) == torch_kernel
    assert auto(make(GRUCell, True), device="cuda") == "native"
    assert auto(make(VanillaCell, False, activation="softsign")) == "fused"
    linear = "fused" if EXTENSION is not None else "scan"  # kernels.order: compiled loops on CPU
    assert auto(make(GRUCell, False, reads_state=False)) == linear
    assert auto(make(OutputFeedbackCell, True)) == linear
    assert auto(make(GRUCell, False, reads_state=False), device="cuda") == "scan"
    assert auto(make(ForgetGatedCell, True)) == "fused"
    assert auto(make(LSTMCell, False, zoneout=0.1)) == "reference"
    assert auto(make(LSTMCell, False, depth=2)) == "reference"
    assert auto(make(LSTMCell, False, activation="gelu")) == "reference"
    recurrent_dropout = make(LSTMCell, False, recurrent_dropout=0.5)
    assert auto(recurrent_dropout, masks=(None, torch.ones(B, H))) == "fused"
    assert auto(recurrent_dropout, masks=(None, None)) == "native"  # evaluation: no mask
    # recording gradients, the compiled loop trains the LSTM faster than torch's kernel; without, torch's is first
    assert auto(make(LSTMCell, False), grad=True) == ("fused" if EXTENSION is not None else "native")
    assert auto(make(LSTMCell, True), grad=True, device="cuda") == "native"
    # under autocast torch's kernel runs bf16, the loop not; where this CPU's oneDNN has no bf16 LSTM, the loop
    bf16_lstm = "native" if kernels.cpu_autocast_lstm_runs(torch.bfloat16) else "fused"
    assert auto(make(LSTMCell, False), grad=True, autocast=True) == bf16_lstm


@pytest.mark.parametrize("cls, dtype", [(LSTMCell, torch.float32), (LSTMCell, torch.float64),
                                        (GRUCell, torch.float32)])
def test_auto_dispatches_the_lstm_by_whether_gradients_are_recorded(cls, dtype, monkeypatch):
    """`run` tells `order` whether autograd records the call: with the compiled loops, the LSTM trains
    under `fused` and infers under `native` (no_grad, inference_mode, or nothing that requires grad)."""
    ran = []
    for name in ("native", "fused"):
        spy = lambda *args, _name=name, _run=kernels.IMPLEMENTATIONS[name]: ran.append(_name) or _run(*args)  # noqa: E731
        monkeypatch.setitem(kernels.IMPLEMENTATIONS, name, spy)
    cell = make(cls, False, dtype=dtype)
    xs = torch.randn(B, T, I, dtype=dtype)
    runner = Recurrent(cell, "auto")
    runner(xs)[0].sum().backward()
    with torch.no_grad():
        runner(xs)
    with torch.inference_mode():
        runner(xs)
    cell.requires_grad_(False)
    runner(xs)  # nothing requires grad
    runner(xs.requires_grad_())  # the inputs' gradient is recorded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runner(xs)  # torch's LSTM computes in bf16 under autocast, the loop in float32
    if EXTENSION is None:  # no compiled loops: torch's kernels first, whatever is recorded
        assert ran == ["native"] * 6
    elif cls is LSTMCell:  # under autocast, native where torch's LSTM runs it on this CPU (native.py)
        under_autocast = "native" if kernels.cpu_autocast_lstm_runs(torch.bfloat16) else "fused"
        assert ran == ["fused", "native", "native", "native", "fused", under_autocast]
    else:
        assert ran == ["fused"] * 6


@pytest.mark.parametrize("implementation", ["auto", "native", "reference"])
def test_meta_tensors_run_for_their_shapes(implementation):
    """torch.autocast knows no 'meta' device: the dispatch asks it only where there is one to ask."""
    cell = make(LSTMCell, False, dtype=torch.float32).to("meta")
    ys, (h, c) = Recurrent(cell, implementation)(torch.empty(B, T, I, device="meta"))
    assert ys.shape == (B, T, H) and ys.device.type == h.device.type == "meta"


@pytest.mark.parametrize("implementation, cell, reason", [
    ("native", make(ForgetGatedCell, False), "no torch.nn counterpart"),
    ("native", make(LSTMCell, False, reads_state=False), "reads_state=False"),
    ("scan", make(LSTMCell, False), "reads_state=False"),
    ("scan", make(ResidualCell, False, residual="before", reads_state=False), "residual='before'"),
    ("fused", make(LSTMCell, False, depth=2), "depth > 1"),
    ("fused", make(GRUCell, False, activation="gelu"), "gelu"),
])
def test_unavailable_explicit_choice_raises(implementation, cell, reason):
    runner = Recurrent(cell, implementation)
    with pytest.raises(ValueError, match=f"implementation='{implementation}'.*{reason}"):
        runner(torch.randn(B, T, I, dtype=torch.float64))
    # available() says it in the same Python names: none of the marks the CLI turns into flags is left
    said = kernels.available(cell, implementation, feedback=False, lengths=False, masks=(None, None))
    assert reason in said and "{" not in said


def test_native_declines_recurrent_dropout_mask():
    cell = make(LSTMCell, False, recurrent_dropout=0.5).train()
    with pytest.raises(ValueError, match="recurrent-dropout"):
        Recurrent(cell, "native")(torch.randn(B, T, I, dtype=torch.float64))


@pytest.mark.parametrize("implementation, cls, options", [("fused", LSTMCell, {}), ("fused", GRUCell, {}),
                                                          ("native", LSTMCell, {}),
                                                          ("scan", ForgetGatedCell, dict(reads_state=False))])
def test_inference_keeps_no_graph(implementation, cls, options):
    cell = make(cls, False, **options)
    runner = Recurrent(cell, implementation)
    with torch.no_grad():
        ys, state = runner(torch.randn(B, T, I, dtype=torch.float64), lengths=LENGTHS)
    parts = state if isinstance(state, tuple) else (state,)
    assert ys.grad_fn is None and all(p.grad_fn is None for p in parts)
    assert ys.shape == (B, T, H)


def test_fused_inference_equals_training_forward():
    """Under no_grad fused keeps one-step buffers (a ring for the LSTM's c); results must not change."""
    cell = make(LSTMCell, True)
    xs, state, y_prev = inputs(cell, True)
    ys, final = kernels.fused(cell, xs, state, y_prev, LENGTHS, (None, None))
    with torch.no_grad():
        ys0, final0 = kernels.fused(cell, xs, state, y_prev, LENGTHS, (None, None))
    torch.testing.assert_close(ys0, ys.detach())
    torch.testing.assert_close(final0, tuple(f.detach() for f in final))


SOLVERS = [pytest.param(True, compiled_solver, id="c++"), pytest.param(False, chunked, id="chunked"),
           pytest.param(False, functools.partial(chunked, chunk=4), id="chunk4"),
           pytest.param(False, doubling, id="doubling")]


@pytest.mark.parametrize("needs_extension, solver", SOLVERS)
def test_linear_scan_gradients(needs_extension, solver, monkeypatch):
    """The hand-written backward of the recurrence, against autograd's numerical gradient."""
    if needs_extension and EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSION if needs_extension else None)
    g = torch.Generator().manual_seed(4)
    f = torch.rand(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 11, 3, generator=g, dtype=torch.float64).requires_grad_()
    s0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, b, s0: linear_scan(f, b, s0, solver), (f, b, s0))


@pytest.mark.parametrize("needs_extension, solver", SOLVERS)
def test_linear_scan_is_stable_over_long_sequences(needs_extension, solver, monkeypatch):
    """Gates near 0 (products underflow), exactly 0, and negative: agrees with the plain loop."""
    if needs_extension and EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSION if needs_extension else None)
    g = torch.Generator().manual_seed(3)
    steps = 3000
    f = torch.rand(2, steps, 3, generator=g, dtype=torch.float64) * 2 - 0.5  # in [-0.5, 1.5)
    f[:, ::7] = 1e-30
    f[:, 5] = 0.0
    f = f.clamp(max=1.0)
    b = torch.randn(2, steps, 3, generator=g, dtype=torch.float64)
    s0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    s, expected = s0, []
    for t in range(steps):
        s = f[:, t] * s + b[:, t]
        expected.append(s)
    expected = torch.stack(expected, 1)
    torch.testing.assert_close(linear_scan(f, b, s0, solver), expected)
    torch.testing.assert_close(linear_scan(f.float(), b.float(), s0.float(), solver), expected.float(),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(linear_scan(None, b, s0), s0[:, None] + b.cumsum(1))


def test_float32_long_sequence_scan_matches_reference():
    cell = make(ForgetGatedCell, False, dtype=torch.float32, reads_state=False)
    xs = torch.randn(2, 1500, I)
    state = cell.initial_state(2)
    with torch.no_grad():
        expected, _ = kernels.reference(cell, xs, state, None, None, (None, None))
        got, _ = kernels.scan(cell, xs, state, None, None, (None, None))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("implementation, cls, options", [("native", LSTMCell, {}), ("native", GRUCell, {}),
                                                          ("fused", LSTMCell, {}), ("fused", GRUCell, {}),
                                                          ("fused", ForgetGatedCell, {}),
                                                          ("scan", LSTMCell, dict(reads_state=False))])
def test_cuda_agrees_with_reference(implementation, cls, options):
    cell = make(cls, True, **options)
    assert_agree(cell, implementation, True, LENGTHS, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [ForgetGatedCell, LSTMCell, GRUCell])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_cuda_graph_replays_agree_with_reference(cls, lengths):
    """fused on CUDA runs eagerly the first time, is captured the second and replayed after
    (kernels/graphs.py); weights, inputs, state, lengths' order and the dropout mask change between
    calls, so a replay must read the new ones; with grad, without, and in inference mode."""
    from rnnlab.kernels import graphs
    graphs.clear()
    cell = make(cls, True, recurrent_dropout=0.3).cuda().train()
    for call in range(4):
        with torch.no_grad():
            for p in cell.parameters():
                p.mul_(0.9)
        torch.manual_seed(call)
        masks = cell.sample_masks(B, torch.zeros((), dtype=torch.float64, device="cuda"))
        on_device = None if lengths is None else lengths[torch.randperm(B)].cuda()
        xs, state, y_prev = inputs(cell, True, device="cuda")
        scale = lambda t, call=call: (t.detach() * (1 + call)).requires_grad_()  # noqa: E731
        xs, y_prev = scale(xs), scale(y_prev)
        state = tuple(map(scale, state)) if isinstance(state, tuple) else scale(state)
        expected = forward_backward(cell, "reference", xs, state, y_prev, on_device, masks)
        got = forward_backward(cell, "fused", xs, state, y_prev, on_device, masks)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e)
        for mode in (torch.no_grad, torch.inference_mode):  # forward graphs of their own, either order
            with mode():
                ys, _ = kernels.fused(cell, xs, state, y_prev, on_device, masks)
            torch.testing.assert_close(ys, expected[0])
    assert any(entry is not None for entry in graphs._graphs.values()), "nothing was captured"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_off(monkeypatch):
    from rnnlab.kernels import graphs
    graphs.clear()
    monkeypatch.setenv("RNNLAB_NO_CUDA_GRAPHS", "1")
    cell = make(LSTMCell, True).cuda()
    for _ in range(3):
        assert_agree(cell, "fused", True, LENGTHS, device="cuda")
    assert not graphs._graphs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls, options", [(GRUCell, {}), (VanillaCell, {}), (LSTMCell, {}),
                                          (ForgetGatedCell, dict(reads_state=False))])
def test_auto_in_half_precision_on_cpu(cls, options, dtype):
    """The C++ loops serve float and double only; auto must pick what runs other dtypes."""
    cell = make(cls, False, dtype=torch.float32, **options)
    xs = torch.randn(B, T, I)
    expected, _ = Recurrent(cell, "reference")(xs)
    got, _ = Recurrent(cell.to(dtype), "auto")(xs.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("implementation, cls", [("fused", LSTMCell), ("fused", ForgetGatedCell),
                                                 ("scan", LSTMCell), ("scan", ResidualCell)])
@pytest.mark.parametrize("compiled_loop", [True, False], ids=["c++", "python"])
def test_hand_written_backwards_refuse_a_second_derivative(implementation, cls, compiled_loop, monkeypatch):
    """A hand-written backward is not differentiable: a second derivative through one must fail,
    not come back wrong (where autograd's own ops do the work, as in the Python residual scan's
    cumulative sum, it must equal reference's)."""
    if compiled_loop and EXTENSION is None:
        pytest.skip("the C++ loops are not built (no compiler, or not cached yet: run rnnlab once)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSION if compiled_loop else None)
    cell = make(cls, False, **({} if implementation == "fused" else dict(reads_state=False)))
    xs, state, _ = inputs(cell, False)

    def second(name):
        xs.grad = None
        ys, _ = kernels.IMPLEMENTATIONS[name](cell, xs, state, None, None, (None, None))
        (grad,) = torch.autograd.grad(ys.square().sum(), xs, create_graph=True)
        grad.square().sum().backward()
        return xs.grad
    hand_written = not (implementation == "scan" and cls is ResidualCell and not compiled_loop)
    if hand_written:
        with pytest.raises(RuntimeError, match="once_differentiable"):
            second(implementation)
    else:
        torch.testing.assert_close(second(implementation), second("reference"))


@pytest.mark.parametrize("implementation, options", [("fused", {}), ("scan", dict(reads_state=False))])
@pytest.mark.parametrize("cls", [ResidualCell, ForgetGatedCell, LSTMCell, GRUCell])
def test_float32_gradients_agree_with_reference(cls, implementation, options):
    """In float32 (the C++ loops' own tanh, sums in another order): close to reference."""
    cell = make(cls, True, dtype=torch.float32, **options)
    xs, state, y_prev = inputs(cell, True, dtype=torch.float32)
    expected = forward_backward(cell, "reference", xs, state, y_prev, LENGTHS)
    got = forward_backward(cell, implementation, xs, state, y_prev, LENGTHS)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_scan_keeps_doubling_to_bounded_gates(monkeypatch):
    """Products of f over long spans overflow where |f| > 1 can occur: those cells take chunked."""
    scan_module = sys.modules["rnnlab.kernels.scan"]
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: None)
    monkeypatch.setattr(scan_module, "default_solver", lambda like: scan_module.doubling)
    calls = []
    monkeypatch.setattr(scan_module, "doubling", lambda *a: calls.append(1) or scan_module.chunked(*a))
    assert_agree(make(ForgetGatedCell, False, gate_activation="relu", reads_state=False), "scan", False, LENGTHS)
    assert not calls
    assert_agree(make(ForgetGatedCell, False, reads_state=False), "scan", False, LENGTHS)
    assert calls


@pytest.mark.parametrize("batch", [4, 32])  # 32 rows: the C++ steps multiply [x_t, s'] themselves (Stacked)
@pytest.mark.parametrize("compiled_loop", [True, False], ids=["c++", "python"])
@pytest.mark.parametrize("options", [dict(), dict(residual="before")], ids=["vanilla", "residual-before"])
def test_fused_gate_and_state_share_one_buffer(options, compiled_loop, batch, monkeypatch):
    """The vanilla cell's state is its gate's value (s = a(z); the residual cell's 'before' too): without
    lengths fused keeps ONE (T, B, H) buffer for both, with grad (one such tensor saved, not two) and
    without, and still equals reference (float64), the C++ loops and the Python ones."""
    if compiled_loop and EXTENSION is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSION if compiled_loop else None)
    torch.manual_seed(0)
    cls = ResidualCell if options else VanillaCell
    cell = cls(I, H, **options).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(batch, T, I, generator=g, dtype=torch.float64).requires_grad_()
    state = torch.randn(batch, H, generator=g, dtype=torch.float64).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = forward_backward(cell, "fused", xs, state, None, None)
    expected = forward_backward(cell, "reference", xs, state, None, None)
    for e, g_ in zip((expected[0], *expected[1], *expected[2]), (got[0], *got[1], *got[2])):
        torch.testing.assert_close(g_, e)
    steps_by_state = {t.data_ptr() for t in saved if t.shape == (T, batch, H)}
    assert len(steps_by_state) == 1, f"{len(steps_by_state)} (T, B, H) buffers saved; the gate's is the state's"
    with torch.no_grad():
        ys, final = kernels.fused(cell, xs, state, None, None, (None, None))
    torch.testing.assert_close(ys, expected[0])
    torch.testing.assert_close(final, expected[1][0])


# --- inference and threads (issue 15) ---------------------------------------------------------------


@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
@pytest.mark.parametrize("compiled_loop", [True, False], ids=["c++", "python"])
def test_fused_inference_saves_nothing_and_agrees(cls, compiled_loop, monkeypatch):
    """Under no_grad and inference_mode fused keeps no activation for a backward (no saved tensor,
    no autograd node) and still equals reference (float64, lengths; the new LSTMs also with output
    feedback); with grad it does save."""
    module = fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME
    if compiled_loop and EXTENSIONS[module] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSIONS[name] if compiled_loop else None)
    feedback = cls in (OutputFeedbackCell, *NEW_LSTMS)
    cell = make(cls, feedback)
    xs, state, y_prev = inputs(cell, feedback)
    packed = []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor

    expected = kernels.reference(cell, xs, state, y_prev, LENGTHS, (None, None))
    for mode in (torch.no_grad, torch.inference_mode):
        with mode(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            ys, final = kernels.fused(cell, xs, state, y_prev, LENGTHS, (None, None))
        assert packed == [] and ys.grad_fn is None
        finals = final if isinstance(final, tuple) else (final,)
        assert all(f.grad_fn is None for f in finals)
        torch.testing.assert_close(ys, expected[0].detach())
        torch.testing.assert_close(final, tuple(e.detach() for e in expected[1]) if isinstance(final, tuple)
                                   else expected[1].detach())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ys, _ = kernels.fused(cell, xs, state, y_prev, LENGTHS, (None, None))
    assert packed and ys.grad_fn is not None  # the same hooks see what a training forward keeps


def _split_case(cls, dtype, batch=64, hidden=64):
    """A batch whose steps the C++ loops split over two threads (64 rows, H = 64: by rows by the rule),
    with lengths and, but for the feedback cell, a recurrent-dropout mask."""
    steps, size, out = 4, 8, 3
    feedback = cls in (OutputFeedbackCell, *NEW_LSTMS)
    torch.manual_seed(0)
    masked = cls is not OutputFeedbackCell
    cell = cls(size, hidden, out if feedback else 0, recurrent_dropout=0.3 if masked else 0.0).to(dtype).train()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(batch, steps, size, generator=g, dtype=dtype).requires_grad_()
    y_prev = torch.randn(batch, steps, out, generator=g, dtype=dtype).requires_grad_() if feedback else None
    zero = cell.initial_state(batch, dtype=dtype)
    state = tuple(torch.randn(z.shape, generator=g, dtype=dtype).requires_grad_() for z in zero) \
        if isinstance(zero, tuple) else torch.randn(zero.shape, generator=g, dtype=dtype).requires_grad_()
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    masks = (None, cell.sample_masks(batch, torch.zeros((), dtype=dtype))[1]) if masked else (None, None)
    return cell, xs, state, y_prev, lengths, masks


def _run_threads(case, implementation, threads):
    """Outputs, final state and (where grad is enabled) every gradient, on `threads` threads."""
    cell, xs, state, y_prev, lengths, masks = case
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ys, final = kernels.IMPLEMENTATIONS[implementation](cell, xs, state, y_prev, lengths, masks)
        finals = final if isinstance(final, tuple) else (final,)
        if not torch.is_grad_enabled():
            return [ys, *finals]
        loss = (ys * torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).view_as(ys)).sum() + \
            sum((f * f).sum() for f in finals)
        leaves = [p for p in cell.parameters()] + [xs] + list(state if isinstance(state, tuple) else (state,))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [ys, *finals] + [torch.zeros_like(v) if d is None else d for d, v in zip(grads, leaves)]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
def test_two_threads_equal_one_thread(cls, dtype, split):
    """Steps large enough that the C++ loops split each step over two threads (team.h: one team for the
    whole loop; loops.cpp by blocks of batch rows or of hidden units, cell_loops.cpp by rows): outputs,
    final state and every gradient equal one thread's up to the rounding of a product split differently
    (a block's GEMM kernel may sum in another order), with lengths and a recurrent-dropout mask, with
    and without grad, and agree with reference (float64). loops.cpp's split is forced both ways
    (`set_split`; by its rule these 64 rows go by rows)."""
    if EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    if cls in NEW_LSTMS and split == "units":
        pytest.skip("cell_loops.cpp splits by rows only")
    case = _split_case(cls, dtype)
    if EXTENSION is not None:
        EXTENSION.set_split(split)
    try:
        one, two = _run_threads(case, "fused", 1), _run_threads(case, "fused", 2)
        with torch.no_grad():
            one_forward, two_forward = _run_threads(case, "fused", 1), _run_threads(case, "fused", 2)
    finally:
        if EXTENSION is not None:
            EXTENSION.set_split("rule")
    tight = dict(rtol=1e-12, atol=1e-12) if dtype is torch.float64 else dict(rtol=1e-5, atol=1e-6)
    if cls is LayerNormLSTMCell and dtype is torch.float32:  # 1/std of the norms scales the rounding up
        tight = dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(one, two):
        torch.testing.assert_close(b, a, **tight)
    for a, b in zip(one_forward, two_forward):  # the forward-only loops (rings of one step) split the same way
        torch.testing.assert_close(b, a, **tight)
    if dtype is torch.float64:
        for a, b in zip(_run_threads(case, "reference", 1), two):
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("knob", ["set_apart", "set_own_barrier"])
@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
def test_the_loops_ways_of_syncing_give_the_same_bits(cls, knob):
    """Two-thread loops give bit for bit the same outputs, final state and gradients, with and without
    grad, and agree with reference (float64), whichever way their threads sync, set by a knob kept for
    measuring (team.h): `set_apart` -- without lengths, a loop split by rows keeps each thread's rows at
    every step, so its threads run their steps apart, against the same loop with a sync between steps;
    `set_own_barrier` -- with lengths (a sync at every step; loops.cpp split by units, where a step also
    syncs between gathering its rows and its product), team.h's barrier against OpenMP's."""
    module = EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME]
    if module is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    cell, xs, state, y_prev, lengths, masks = _split_case(cls, torch.float64)
    case = (cell, xs, state, y_prev, None if knob == "set_apart" else lengths, masks)
    split = knob == "set_own_barrier" and cls not in NEW_LSTMS
    runs = {}
    try:
        if split:
            module.set_split("units")
        for on in (True, False):
            getattr(module, knob)(on)
            with torch.no_grad():
                forward = _run_threads(case, "fused", 2)
            runs[on] = _run_threads(case, "fused", 2) + forward
    finally:
        getattr(module, knob)(True)
        if split:
            module.set_split("rule")
    for a, b in zip(runs[False], runs[True]):
        assert torch.equal(a, b)
    for a, b in zip(_run_threads(case, "reference", 1), runs[True]):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls", LADDER)
def test_steps_read_batch_first_inputs_where_they_are(cls, threads):
    """Where the C++ steps multiply the inputs themselves (B >= 16, small weights: time_major.
    steps_multiply_inputs), they read batch-first x where it is (`kept_inputs`: a time-major view, no
    copy) and, when training, write the time-major copy the backward's products read as they go: the
    loop's copy equals the inputs, and outputs, final state and every gradient equal reference's, with and
    without grad, on 1 and 2 threads (float64). Other layouts (a strided x) are copied first, as before."""
    if EXTENSION is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    cell, xs, state, y_prev, _, masks = _split_case(cls, torch.float64, batch=32, hidden=16)
    view = xs.detach().transpose(0, 1)
    read, kept = time_major.kept_inputs(view, keep=True)
    assert read.data_ptr() == xs.data_ptr() and not read.is_contiguous() and kept.is_contiguous()
    assert time_major.kept_inputs(view, keep=False)[1] is None
    assert time_major.kept_inputs(xs.detach()[:, :, ::2].transpose(0, 1), keep=True)[0].is_contiguous()
    weight = cell.weight_ih.detach()
    gates, states = torch.empty(*view.shape[:2], weight.shape[0], dtype=view.dtype), torch.empty(
        *view.shape[:2], cell.hidden_size, dtype=view.dtype)
    if cls is VanillaCell:  # the loop's copy, called directly
        EXTENSION.gated_forward("vanilla", cell.activation, cell.gate_activation, gates, cell.weight_hh.detach(),
                                None, torch.zeros(view.shape[1], cell.hidden_size, dtype=view.dtype), states, [],
                                inputs=read, weight=weight, inputs_copy=kept)
        assert torch.equal(kept, view)
    time_major_x = xs.transpose(0, 1).contiguous().transpose(0, 1)  # batch-first, stored time-major
    strided = (cell, time_major_x, state, y_prev, None, masks)
    for case in ((cell, xs, state, y_prev, None, masks), strided):
        with torch.no_grad():
            forward = _run_threads(case, "fused", threads)
        for a, b in zip(_run_threads(case, "reference", 1), _run_threads(case, "fused", threads) + forward):
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", NEW_LSTMS)
def test_one_row_forward_split_by_columns(cls, dtype):
    """At B = 1 (one row: nothing to split by rows) cell_loops.cpp's forwards split each step's product
    by columns over two threads, the row's elementwise work on the first (Split::columns): outputs,
    final state and gradients (the backward runs on one thread there) equal one thread's to rounding,
    with a recurrent-dropout mask, with and without grad, and reference's (float64)."""
    if EXTENSIONS[fused_cells.MODULE] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    case = _split_case(cls, dtype, batch=1, hidden=128)  # 4 H^2 = 65k multiply-adds a step: split
    module = EXTENSIONS[fused_cells.MODULE]
    module.set_fault(0)  # the loop's team, named in the error: two threads (B = 1 splits by columns only)
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="in thread 1 of 2"):
            _run_threads(case, "fused", 2)
    finally:
        module.set_fault(None)
    one, two = _run_threads(case, "fused", 1), _run_threads(case, "fused", 2)
    with torch.no_grad():
        one_forward, two_forward = _run_threads(case, "fused", 1), _run_threads(case, "fused", 2)
    tight = dict(rtol=1e-12, atol=1e-12) if dtype is torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(one + one_forward, two + two_forward):
        torch.testing.assert_close(b, a, **tight)
    if dtype is torch.float64:
        for a, b in zip(_run_threads(case, "reference", 1), two):
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell, VanillaCell, PeepholeLSTMCell, LayerNormLSTMCell])
def test_loops_inside_a_parallel_region_run_serially(cls):
    """Called inside a parallel region (a user's own parallel code, at::parallel_for) the C++ loops form
    no team of their own (team.h: in_team) and run on the calling thread: the same results as two
    threads outside it, forward and backward, and reference's (float64)."""
    if EXTENSION is None or EXTENSIONS[fused_cells.MODULE] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    case = _split_case(cls, torch.float64)
    outside, inside, seen = _run_threads(case, "fused", 2), [], []  # outside: a team of two (test above)

    module = EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME]

    def call():
        inside.extend(_run_threads(case, "fused", 2))
        module.set_fault(0)  # the team's size, in the error's message: one thread
        try:
            _run_threads(case, "fused", 2)
        except RuntimeError as error:
            seen.append(str(error))
        finally:
            module.set_fault(None)

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        EXTENSION.in_parallel_region(call)
    finally:
        torch.set_num_threads(previous)
    assert len(seen) == 1 and "in thread 0 of 1" in seen[0], seen
    assert len(inside) == len(outside)
    for a, b in zip(outside, inside):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for a, b in zip(_run_threads(case, "reference", 1), inside):
        torch.testing.assert_close(b, a)


def _output_gradients(shape, dtype):
    """The layouts autograd hands a backward loop as its outputs' gradient (time-major (T, B, H) loop,
    batch-first (B, T, H) output): a batch-first tensor (non-contiguous time-major), the expanded ones of
    a sum (strides 0), and a time-major tensor seen batch-first (contiguous where the loop reads it)."""
    batch, steps, width = shape
    g = torch.Generator().manual_seed(2)
    time_major = torch.randn(steps, batch, width, generator=g, dtype=dtype)
    return {"batch-first": torch.randn(shape, generator=g, dtype=dtype),
            "expanded": torch.ones((), dtype=dtype).expand(shape),
            "time-major": time_major.transpose(0, 1)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
def test_backward_reads_any_layout_of_the_output_gradient(cls, threads):
    """The C++ backward loops read the outputs' gradient in whatever strides autograd gives it (upstream.h:
    each thread copies its rows of a step) rather than a contiguous copy made before the loop: for each
    layout, on one thread and on two (64 rows: split by rows, or by units where forced), every gradient
    equals reference's (float64, lengths and a recurrent-dropout mask)."""
    if EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    cell, xs, state, y_prev, lengths, masks = _split_case(cls, torch.float64)
    leaves = [p for p in cell.parameters()] + [xs] + list(state if isinstance(state, tuple) else (state,))
    expected_ys, _ = kernels.reference(cell, xs, state, y_prev, lengths, masks)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for split in (["rows", "units"] if threads == 2 and cls not in NEW_LSTMS else ["rule"]):
            if EXTENSION is not None:
                EXTENSION.set_split(split)
            ys, _ = kernels.fused(cell, xs, state, y_prev, lengths, masks)
            for name, d_ys in _output_gradients(ys.shape, ys.dtype).items():
                got = torch.autograd.grad(ys, leaves, d_ys, retain_graph=True, allow_unused=True)
                want = torch.autograd.grad(expected_ys, leaves, d_ys, retain_graph=True, allow_unused=True)
                for a, b, leaf in zip(want, got, leaves):  # a leaf one path leaves unused: zeros
                    a, b = (torch.zeros_like(leaf) if d is None else d for d in (a, b))
                    torch.testing.assert_close(b, a, msg=lambda m, name=name, split=split: f"{name}, {split}: {m}")
    finally:
        torch.set_num_threads(previous)
        if EXTENSION is not None:
            EXTENSION.set_split("rule")


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_weight_grad_equals_the_product_of_the_shifted_states(steps, masked):
    """time_major.weight_grad (dV without a copy of the states shifted by one step) equals
    sum_t dz^t^T (s^{t-1} * mask), s^{-1} the initial state, for one step and several."""
    from rnnlab.kernels.time_major import weight_grad
    g = torch.Generator().manual_seed(3)
    dz = torch.randn(steps, 4, 6, generator=g, dtype=torch.float64)
    states = torch.randn(steps, 4, 3, generator=g, dtype=torch.float64)
    first = torch.randn(4, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 3, generator=g, dtype=torch.float64) if masked else None
    expected = sum(dz[t].t() @ ((first if t == 0 else states[t - 1]) * (1 if mask is None else mask))
                   for t in range(steps))
    torch.testing.assert_close(weight_grad(dz, first, states, mask), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_of_a_transposed_view_is_the_product(dtype):
    """time_major.product of a transposed view with more rows than the result's columns (a weight's gradient,
    dz^T x: where MKL serves, from 2^28 multiply-adds computed as (x^T dz)^T) equals torch.mm's and comes
    contiguous, as every other; below the bound, and the other way round, too."""
    from rnnlab.kernels.time_major import product
    g = torch.Generator().manual_seed(4)
    dz, x = torch.randn(2048, 2048, generator=g, dtype=dtype), torch.randn(2048, 64, generator=g, dtype=dtype)
    for a, b in ((dz.t(), x), (x.t(), dz), (dz[:300, :64].t(), x[:300, :8])):  # 2^28 multiply-adds, then fewer
        got = product(a, b)
        assert got.is_contiguous() and got.shape == (a.shape[0], b.shape[1])
        torch.testing.assert_close(got, torch.mm(a, b), rtol=1e-5, atol=1e-3 if dtype == torch.float32 else 1e-9)


def _team_size(threads: int) -> int:
    """The threads of a loop's team on `threads` of torch's threads: no more than the CPUs (team.h)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(threads, cpus)


@pytest.mark.parametrize("cls", [VanillaCell, LSTMCell, GRUCell, PeepholeLSTMCell])
def test_more_threads_than_cpus_make_a_team_of_the_cpus(cls):
    """With more of torch's threads than CPUs, a loop's team is only as large as the CPUs (team.h:
    threads meeting at a barrier every few microseconds must all be running; with twice the threads of
    the cores, a step loop ran 15-60 times slower): the fault's message names a team of the CPUs, and
    outputs, final state and gradients equal one thread's (float64; with lengths, so that the threads
    sync at every step; loops.cpp's eight rows split by units) and reference's."""
    module = EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME]
    if module is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    threads = _team_size(1 << 20) + 2
    case = _split_case(cls, torch.float64, batch=64 if cls in NEW_LSTMS else 8)  # cell_loops.cpp: by rows
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module.set_fault(0)
        with torch.no_grad(), pytest.raises(RuntimeError, match=f"of {_team_size(threads)}\\b"):
            kernels.fused(*case)
    finally:
        module.set_fault(None)
        torch.set_num_threads(previous)
    many = _run_threads(case, "fused", threads)
    for a, b in zip(_run_threads(case, "fused", 1), many):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for a, b in zip(_run_threads(case, "reference", 1), many):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls,step", [(LSTMCell, 2), (LSTMCell, -1), (GRUCell, 1), (VanillaCell, 0),
                                      (PeepholeLSTMCell, 3), (LayerNormLSTMCell, 0), (ProjectedLSTMCell, 1)])
def test_an_error_inside_the_loop_surfaces_once(cls, step, threads):
    """An exception thrown inside a time loop (here one asked for by `set_fault` at one step, in the last
    thread of the team) surfaces as one Python error, forward or backward (step -1: the backward's last),
    on one thread or two (the other thread neither waits forever nor runs on into garbage); the next call
    runs normally."""
    module = EXTENSIONS[fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME]
    if module is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    case = _split_case(cls, torch.float32)
    cell, xs, state, y_prev, lengths, masks = case
    expected = _run_threads(case, "fused", threads)
    backward = (cls, step) in ((LSTMCell, -1), (ProjectedLSTMCell, 1))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ys, _ = kernels.fused(cell, xs, state, y_prev, lengths, masks) if backward else (None, None)
        module.set_fault(step)  # after the forward where the backward's step is meant
        size = _team_size(threads)
        fault = f"fault asked for at step {step} .*in thread {size - 1} of {size}"
        with pytest.raises(RuntimeError, match=fault):
            if backward:
                ys.sum().backward()
            else:
                kernels.fused(cell, xs, state, y_prev, lengths, masks)
    finally:
        module.set_fault(None)
        torch.set_num_threads(previous)
    for a, b in zip(expected, _run_threads(case, "fused", threads)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("batch", [8, 16], ids=["Zx", "stacked"])
@pytest.mark.parametrize("cls,hidden", [(LSTMCell, 256), (GRUCell, 512), (PeepholeLSTMCell, 256),
                                        (LayerNormLSTMCell, 256), (ProjectedLSTMCell, 256)])
def test_weights_packed_in_panels(cls, hidden, batch):
    """Where a step's weight is 1024 or more columns wide and 8 or more rows run, the C++ forwards
    read it packed in 64-column panels (loops.cpp, cell_loops.cpp: panels_of): float32 outputs and
    gradients against reference, and (loops.cpp) the same as with the plain weight to rounding; with
    8 rows the steps read Zx, with 16 they multiply their own inputs."""
    module = fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME
    if EXTENSIONS[module] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    torch.manual_seed(0)
    cell = cls(8, hidden)
    xs = torch.randn(batch, 3, 8, requires_grad=True)
    state = cell.initial_state(batch)
    lengths = torch.tensor([3, 1, 2] + [3] * (batch - 3))

    def run(implementation):
        ys, _ = kernels.IMPLEMENTATIONS[implementation](cell, xs, state, None, lengths, (None, None))
        with torch.no_grad():
            forward, _ = kernels.IMPLEMENTATIONS[implementation](cell, xs, state, None, lengths, (None, None))
        return [ys, forward, *torch.autograd.grad((ys * ys).sum(), [xs, *cell.parameters()])]

    close = dict(rtol=1e-4, atol=1e-4 if cls is LayerNormLSTMCell else 2e-5)  # float32; the norms' 1/std
    packed = run("fused")
    for a, b in zip(run("reference"), packed):
        torch.testing.assert_close(b, a, **close)
    if module == compiled.NAME:
        EXTENSION.set_panels(False)
        try:
            plain = run("fused")
        finally:
            EXTENSION.set_panels(True)
        for a, b in zip(plain, packed):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def random_state(cell, batch, dtype):
    """A random initial state of `cell` for `batch` rows, requiring grad."""
    zero = cell.initial_state(batch, dtype=dtype)
    return tuple(torch.randn_like(z).requires_grad_() for z in zero) if isinstance(zero, tuple) \
        else torch.randn_like(zero).requires_grad_()


def assert_fused_agrees(cell, xs, state, y_prev, lengths, close):
    """fused's outputs, final state and gradients against reference's, and its no_grad outputs."""
    expected = forward_backward(cell, "reference", xs, state, y_prev, lengths)
    got = forward_backward(cell, "fused", xs, state, y_prev, lengths)
    for e, g in zip(expected, got):
        for a, b in zip(*((e,), (g,)) if isinstance(e, torch.Tensor) else (e, g)):
            torch.testing.assert_close(b, a, **close)
    with torch.no_grad():
        ys, _ = kernels.fused(cell, xs, state, y_prev, lengths, (None, None))
    torch.testing.assert_close(ys, expected[0].detach(), **close)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [4, 16], ids=["zx-product", "steps-multiply"])
@pytest.mark.parametrize("compiled_loop", [True, False], ids=["c++", "python"])
@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
def test_fused_runs_cells_without_inputs(cls, compiled_loop, batch, dtype, monkeypatch):
    """input_size=0 and no feedback (a cell driven by its bias and state alone): fused's inputs are
    (T, B, 0), which its C++ steps refused (ValueError), its products and layer-norm reshapes failed on
    and the float32 peephole loop ran out of memory on (std::bad_alloc; found by
    tests/test_fuzz_implementations.py); it agrees with reference, with lengths, grad and no_grad."""
    module = fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME
    if compiled_loop and EXTENSIONS[module] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: EXTENSIONS[name] if compiled_loop else None)
    torch.manual_seed(0)
    cell = cls(0, 3).to(dtype)
    xs = torch.randn(batch, 5, 0, dtype=dtype, requires_grad=True)
    state = random_state(cell, batch, dtype)
    lengths = torch.tensor([5, 2] + [4] * (batch - 2))
    close = {} if dtype is torch.float64 else dict(rtol=1e-4, atol=1e-4)  # float32: the layer norms' 1/std
    for steps in (None, lengths):
        assert_fused_agrees(cell, xs, state, None, steps, close)


@pytest.mark.parametrize("batch", [4, 32], ids=["zx-product", "steps-multiply"])
@pytest.mark.parametrize("cls", LADDER + NEW_LSTMS)
def test_fused_reads_weights_stored_transposed(cls, batch):
    """The C++ loops transpose the weights themselves (products.h `stacked_transposes`, by tiles): weights
    whose storage is transposed (a Parameter made from w.t()) and sizes that are not multiples of the
    tiles give reference's outputs and gradients, in float64 and float32, inference included."""
    module = fused_cells.MODULE if cls in NEW_LSTMS else compiled.NAME
    if EXTENSIONS[module] is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    torch.manual_seed(0)
    for dtype, close in ((torch.float64, {}), (torch.float32, dict(rtol=1e-3, atol=5e-4))):
        cell = cls(19, 17, 3).to(dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "weight_hr"):
                w = getattr(cell, name, None)
                if isinstance(w, torch.nn.Parameter):
                    setattr(cell, name, torch.nn.Parameter(w.detach().t().contiguous().t()))
        assert not cell.weight_ih.is_contiguous()
        xs = torch.randn(batch, 7, 19, dtype=dtype, requires_grad=True)
        y_prev = torch.randn(batch, 7, 3, dtype=dtype, requires_grad=True)
        assert_fused_agrees(cell, xs, random_state(cell, batch, dtype), y_prev, None, close)
