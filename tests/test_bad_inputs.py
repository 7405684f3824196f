"""The API under bad input: every mistake is a one-line error of the exact type naming the argument,
checked at the entry (not deep inside a kernel); and NaN or inf in the padding past `lengths`
never reaches outputs, states or gradients, on any implementation or model path."""

import warnings

import pytest
import torch
from torch import nn

import rnnlab as R
from rnnlab import kernels
from rnnlab.config import ConfigTypeError
from rnnlab.init import L1L2, Constraints, Init, MaxNorm, Regularizers
from rnnlab.kernels import compiled
from rnnlab.training import TrainConfig, Trainer

from conftest import EXTENSION

B, T, I, H, O = 4, 6, 3, 5, 2
LENGTHS = torch.tensor([6, 2, 4, 1])
LADDER = [R.VanillaCell, R.ResidualCell, R.InputGatedCell, R.ForgetGatedCell, R.LSTMCell, R.GRUCell,
          R.OutputFeedbackCell]


def fp64(t):
    return t.to(torch.float64)


def lstm(**options):
    return R.LSTMCell(I, H, **options)


def runner(*layers):
    return R.Stacked(*layers) if len(layers) > 1 else layers[0]


# (error type, text the message must hold (it names the argument), the call)
BAD_CALLS = {
    # cells: strings where numbers or flags belong, wrong kinds of objects
    "cell dropout as a string": (TypeError, "LSTMCell: dropout must be a number; got str '0.2'",
                                 lambda: R.LSTMCell(I, H, dropout="0.2")),
    "cell recurrent_dropout as a string": (TypeError, "GRUCell: recurrent_dropout must be a number",
                                           lambda: R.GRUCell(I, H, recurrent_dropout="0.1")),
    "cell zoneout None": (TypeError, "VanillaCell: zoneout must be a number; got NoneType",
                          lambda: R.VanillaCell(I, H, zoneout=None)),
    "cell input_size as a string": (TypeError, "LSTMCell: input_size must be an int; got str '3'",
                                    lambda: R.LSTMCell("3", H)),
    "cell hidden_size as a float": (TypeError, "LSTMCell: hidden_size must be an int; got float 5.0",
                                    lambda: R.LSTMCell(I, 5.0)),
    "cell feedback_size as a bool": (TypeError, "InputGatedCell: feedback_size must be an int; got bool True",
                                     lambda: R.InputGatedCell(I, H, True)),
    "GRU depth as a string": (TypeError, "GRUCell: depth must be an int; got str '2'",
                              lambda: R.GRUCell(I, H, depth="2")),
    "reads_state as the string 'False'": (TypeError, "VanillaCell: reads_state must be True or False; got str 'False'",
                                          lambda: R.VanillaCell(I, H, reads_state="False")),
    "bias as 1": (TypeError, "ForgetGatedCell: bias must be True or False; got int 1",
                  lambda: R.ForgetGatedCell(I, H, bias=1)),
    "activation as a function": (TypeError, "VanillaCell: activation must be a name",
                                 lambda: R.VanillaCell(I, H, activation=torch.tanh)),
    "init as a string": (TypeError, "LSTMCell: init must be an rnnlab Init; got str",
                         lambda: R.LSTMCell(I, H, init="keras")),
    "Init scheme as a number": (TypeError, "Init: kernel must be a scheme name", lambda: Init(kernel=3)),
    "Init unit_forget_bias as a string": (TypeError, "Init: unit_forget_bias must be True or False",
                                          lambda: Init(unit_forget_bias="yes")),
    "MaxNorm as a string": (TypeError, "MaxNorm: max_value must be a number; got str '3'", lambda: MaxNorm("3")),
    "MaxNorm of zero": (ValueError, "MaxNorm: max_value must be > 0; got 0", lambda: MaxNorm(0)),
    "L1L2 as a string": (TypeError, "L1L2: l2 must be a number; got str '1e-4'", lambda: L1L2(l2="1e-4")),
    "L1L2 negative": (ValueError, "L1L2: l1 must be >= 0; got -1", lambda: L1L2(l1=-1)),
    "a regulariser as a number": (TypeError, "Regularizers: kernel must be None or callable",
                                  lambda: Regularizers(kernel=0.01)),
    "a constraint as a number": (TypeError, "Constraints: recurrent must be None or callable",
                                 lambda: Constraints(recurrent=3.0)),
    # cells: dtype and device mismatches, at the entry
    "cell x float64": (ValueError, "LSTMCell: x must be torch.float32 like the weights; got torch.float64",
                       lambda: lstm()(torch.zeros(2, I, dtype=torch.float64))),
    "cell state float16": (ValueError, "LSTMCell: state must be torch.float32 like the weights; got torch.float16",
                           lambda: lstm()(torch.zeros(2, I),
                                          (torch.zeros(2, H), torch.zeros(2, H, dtype=torch.float16)))),
    "cell y_prev float64": (ValueError, "GRUCell: y_prev must be torch.float32 like the weights; got torch.float64",
                            lambda: R.GRUCell(I, H, O)(torch.zeros(2, I), None,
                                                       torch.zeros(2, O, dtype=torch.float64))),
    "cell x float32 for float64 weights": (ValueError, "VanillaCell: x must be torch.float64 like the weights",
                                           lambda: R.VanillaCell(I, H).double()(torch.zeros(2, I))),
    # runners
    "Recurrent xs float64": (ValueError, "Recurrent: xs must be torch.float32 like the weights; got torch.float64",
                             lambda: R.Recurrent(lstm())(torch.zeros(2, T, I, dtype=torch.float64))),
    "Recurrent xs float16": (ValueError, "Recurrent: xs must be torch.float32 like the weights; got torch.float16",
                             lambda: R.Recurrent(R.GRUCell(I, H))(torch.zeros(2, T, I, dtype=torch.float16))),
    "Recurrent state float64": (ValueError, "Recurrent: state must be torch.float32 like the weights",
                                lambda: R.Recurrent(R.GRUCell(I, H))(torch.zeros(2, T, I),
                                                                     torch.zeros(2, H, dtype=torch.float64))),
    "Recurrent LSTM c float16": (ValueError, "Recurrent: state must be torch.float32",
                                 lambda: R.Recurrent(lstm())(torch.zeros(2, T, I), (torch.zeros(2, H),
                                                                                   torch.zeros(2, H).half()))),
    "Recurrent y_prev float64": (ValueError, "Recurrent: y_prev must be torch.float32 like the weights",
                                 lambda: R.Recurrent(R.ForgetGatedCell(I, H, O))(
                                     torch.zeros(2, T, I), y_prev=torch.zeros(2, T, O, dtype=torch.float64))),
    "Recurrent xs on another device": (ValueError, "Recurrent: xs must be on cpu like the weights; got meta",
                                       lambda: R.Recurrent(lstm())(torch.zeros(2, T, I, device="meta"))),
    "Stacked xs float64": (ValueError, "Stacked: xs must be torch.float32 like the weights",
                           lambda: R.Stacked.of(R.LSTMCell, I, H, 2)(torch.zeros(2, T, I, dtype=torch.float64))),
    "Stacked state of layer 1 float64": (ValueError, "Stacked layer 1: state must be torch.float32",
                                         lambda: R.Stacked.of(R.GRUCell, I, H, 2)(
                                             torch.zeros(2, T, I), (torch.zeros(2, H), fp64(torch.zeros(2, H))))),
    "Bidirectional xs float16": (ValueError, "Bidirectional: xs must be torch.float32",
                                 lambda: R.Bidirectional(R.Recurrent(lstm()), R.Recurrent(lstm()))(
                                     torch.zeros(2, T, I).half())),
    "Stacked dropout as a string": (TypeError, "Stacked: dropout must be a number; got str '0.2'",
                                    lambda: R.Stacked(R.Recurrent(lstm()), dropout="0.2")),
    "Stacked residual as a string": (TypeError, "Stacked: residual must be True or False",
                                     lambda: R.Stacked(R.Recurrent(lstm()), residual="yes")),
    "Stacked.of num_layers as a string": (TypeError, "Stacked.of: num_layers must be an int; got str '2'",
                                          lambda: R.Stacked.of(R.LSTMCell, I, H, "2")),
    "Stacked.of num_layers zero": (ValueError, "Stacked.of: num_layers must be an int >= 1; got 0",
                                   lambda: R.Stacked.of(R.LSTMCell, I, H, 0)),
    "Stacked of a torch module": (TypeError, "Stacked: every layer must be a runner", lambda: R.Stacked(nn.LSTM(I, H))),
    "Bidirectional of a torch module": (TypeError, "Bidirectional: forward_runner must be a runner",
                                        lambda: R.Bidirectional(nn.LSTM(I, H), R.Recurrent(lstm()))),
    # models
    "RecurrentModel xs float64": (ValueError, "Recurrent: xs must be torch.float32",
                                  lambda: R.RecurrentModel(R.Recurrent(lstm()), nn.Linear(H, 2))(
                                      torch.zeros(2, T, I, dtype=torch.float64))),
    "RecurrentModel free-running xs float64": (ValueError, "RecurrentModel: xs must be torch.float32",
                                               lambda: R.RecurrentModel(R.Recurrent(R.GRUCell(I, H, 1)),
                                                                        nn.Linear(H, 1),
                                                                        feedback_map=R.RawFeedback(1))(
                                                   torch.zeros(2, T, I, dtype=torch.float64))),
    "RecurrentModel teacher_forcing as a string": (TypeError, "RecurrentModel: teacher_forcing must be a number",
                                                   lambda: R.RecurrentModel(R.Recurrent(lstm()), nn.Linear(H, 2))(
                                                       torch.zeros(2, T, I), teacher_forcing="1")),
    "SequenceToVector xs float16": (ValueError, "Recurrent: xs must be torch.float32",
                                    lambda: R.SequenceToVector(R.Recurrent(lstm()), nn.Linear(H, 2))(
                                        torch.zeros(2, T, I).half())),
    "VectorToSequence steps as a string": (TypeError, "VectorToSequence: steps must be an int; got str '3'",
                                           lambda: R.VectorToSequence(R.RecurrentModel(
                                               R.Recurrent(R.GRUCell(I, H, 1)), nn.Linear(H, 1),
                                               feedback_map=R.RawFeedback(1)))(torch.zeros(2, I), "3")),
    # TrainConfig
    "TrainConfig lr as a string": (ConfigTypeError, "TrainConfig: lr must be a number > 0; got '3e-3'",
                                   lambda: TrainConfig(lr="3e-3")),
    "TrainConfig steps as a float": (ConfigTypeError, "TrainConfig: steps must be an int >= 1; got 100.0",
                                     lambda: TrainConfig(steps=100.0)),
    "TrainConfig threads as a string": (ConfigTypeError,
                                        "TrainConfig: threads must be None or an int in [1, 1024]; got '1'",
                                        lambda: TrainConfig(threads="1")),
    "TrainConfig clip_norm as a string": (ConfigTypeError, "TrainConfig: clip_norm must be None or a number > 0",
                                          lambda: TrainConfig(clip_norm="5")),
    "TrainConfig seed as a bool": (ConfigTypeError, "TrainConfig: seed must be an int in [0, 4294967295]; got True",
                                   lambda: TrainConfig(seed=True)),
    "TrainConfig optimizer None": (ConfigTypeError,
                                   "TrainConfig: optimizer must be one of ('adam', 'adamw', 'sgd'); got None",
                                   lambda: TrainConfig(optimizer=None)),
    "TrainConfig max_minutes as a string": (ConfigTypeError, "TrainConfig: max_minutes must be None or a number > 0",
                                            lambda: TrainConfig(max_minutes="3")),
    "Trainer config as a dict": (TypeError, "Trainer: config must be a TrainConfig; got dict",
                                 lambda: Trainer(nn.Linear(1, 1), [], None, {"lr": 1e-3})),
    "Trainer model as a function": (TypeError, "Trainer: model must be a torch.nn.Module; got function",
                                    lambda: Trainer(lambda x: x, [], None, TrainConfig())),
    # token ids, lengths, step counts: torch would fail deep inside (IndexError, negative dimension), naming nothing
    "Recurrent lengths of bools": (ValueError, "Recurrent: lengths must be an integer tensor (4,); got tensor (4,) "
                                               "torch.bool", lambda: R.Recurrent(lstm())(torch.randn(B, T, I),
                                                                                        lengths=torch.ones(B).bool())),
    "generate steps negative": (ValueError, "RecurrentModel.generate: steps must be >= 1; got -1",
                                lambda: free_running().generate(2, -1)),
    "generate steps zero": (ValueError, "RecurrentModel.generate: steps must be >= 1; got 0",
                            lambda: free_running().generate(2, 0)),
    "generate batch as a float": (TypeError, "RecurrentModel.generate: batch must be an int; got float 2.0",
                                  lambda: free_running().generate(2.0, 3)),
    "EmbeddingFeedback target past the vocabulary": (
        ValueError, "EmbeddingFeedback: targets must be token ids in [0, 9]; got values from 0 to 10",
        lambda: R.EmbeddingFeedback(10, 4).from_target(torch.tensor([[0, 10]]))),
    "SoftmaxFeedback negative target": (ValueError, "SoftmaxFeedback: targets must be token ids in [0, 9]; got values "
                                                    "from -1 to 3", lambda: R.SoftmaxFeedback(10).from_target(
                                                        torch.tensor([[3, -1]]))),
    "EncoderDecoder targets of one row": (ValueError, "EncoderDecoder: targets must be (2, T_target), one row per "
                                                      "source; got tensor (4,)",
                                          lambda: encoder_decoder()(torch.zeros(2, 3, dtype=torch.long),
                                                                    torch.zeros(4, dtype=torch.long))),
    "EncoderDecoder teacher_forcing as a string": (TypeError, "EncoderDecoder: teacher_forcing must be a number; got "
                                                              "str '0.5'",
                                                   lambda: encoder_decoder()(torch.zeros(2, 3, dtype=torch.long),
                                                                             torch.zeros(2, 4, dtype=torch.long),
                                                                             teacher_forcing="0.5")),
    "RecurrentModel core a cell": (TypeError, "RecurrentModel: core must be a runner (Recurrent, Stacked, "
                                              "Bidirectional; a cell goes in Recurrent(cell)); got LSTMCell",
                                   lambda: R.RecurrentModel(lstm(), nn.Linear(H, 2))),
    "SequenceToVector core a torch.nn module": (TypeError, "SequenceToVector: core must be a runner", lambda:
                                                R.SequenceToVector(nn.Linear(I, H), nn.Linear(H, 2))),
    "VectorToSequence model a runner": (TypeError, "VectorToSequence: model must be a RecurrentModel with output "
                                                   "feedback; got Recurrent",
                                        lambda: R.VectorToSequence(R.Recurrent(R.GRUCell(I, H, O)))),
    "EncoderDecoder decoder a runner": (TypeError, "EncoderDecoder: decoder must be a RecurrentModel with output "
                                                   "feedback; got Recurrent",
                                        lambda: R.EncoderDecoder(R.Recurrent(R.GRUCell(I, H)),
                                                                 R.Recurrent(R.GRUCell(H, H, O)))),
    "Stacked.of a torch.nn module": (TypeError, "Stacked.of: cell_type must be a cell class such as rnnlab.LSTMCell; "
                                                "got <class 'torch.nn.modules.rnn.LSTM'>",
                                     lambda: R.Stacked.of(nn.LSTM, I, H, 2)),
    "shift_right of a (B,) tensor": (ValueError, "shift_right: y must be (B, T, ...); got tensor (4,)",
                                     lambda: R.shift_right(torch.zeros(4))),
}


def encoder_decoder():
    decoder = R.RecurrentModel(R.Recurrent(R.GRUCell(H, H, feedback_size=O)), nn.Linear(H, 7),
                               feedback_map=R.EmbeddingFeedback(7, O))
    return R.EncoderDecoder(R.Recurrent(R.GRUCell(I, H)), decoder, source_map=nn.Embedding(7, I))


def free_running():
    return R.RecurrentModel(R.Recurrent(R.VanillaCell(0, H, O)), nn.Linear(H, O), feedback_map=R.RawFeedback(O))


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_a_bad_call_is_a_one_line_error_naming_the_argument(case):
    error, text, call = BAD_CALLS[case]
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
    message = str(caught.value)
    assert text in message and "\n" not in message


def test_a_long_list_where_a_tensor_belongs_is_named_in_a_short_line():
    """A (B, T) list of lists in place of a tensor: the message shows its first elements, not all 16 x 8."""
    with pytest.raises(ValueError) as caught:
        R.LSTMCell(8, H)([[0.0] * 8] * 16, None)
    message = str(caught.value)
    assert message.startswith("LSTMCell: x must be (B, 8); got list of 16 [list of 8 [float, float, float, ...], ")
    assert len(message) < 200, message


def test_integer_inputs_are_not_told_to_convert_the_module_to_integers():
    """A module's weights cannot be int64: the advice is to convert the input."""
    model = R.Recurrent(R.GRUCell(I, H, feedback_size=O))
    with pytest.raises(ValueError) as caught:
        model(torch.randn(B, T, I), y_prev=torch.ones(B, T, O, dtype=torch.long))
    assert str(caught.value) == ("Recurrent: y_prev must be torch.float32 like the weights; got torch.int64 "
                                 "(convert it with .to(torch.float32))")


def test_numbers_of_the_right_kind_still_pass():
    """ints where floats belong, and the autocast dtype under torch.autocast, are fine."""
    R.LSTMCell(I, H, dropout=0, zoneout=0)
    TrainConfig(lr=1, max_minutes=3, clip_norm=None)
    MaxNorm(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R.VanillaCell(I, H)(torch.zeros(2, I), torch.zeros(2, H, dtype=torch.bfloat16))


def test_from_torch_warns_about_a_time_major_module():
    with pytest.warns(UserWarning, match=r"from_torch: the module reads \(T, B, I\) \(batch_first=False\)"):
        R.from_torch(nn.LSTM(I, H))
    module = nn.GRU(I, H, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stack = R.from_torch(module)  # batch first: nothing to warn about
    xs = torch.randn(2, T, I)
    torch.testing.assert_close(stack(xs)[0], module(xs)[0])


# --- padding is never read ------------------------------------------------------------------------

IMPLEMENTATIONS = ["reference", "native", "fused (C++ loops)", "fused (Python loops)", "scan (C++ loops)",
                   "scan (Python loops)"]
VARIANTS = [dict(feedback=False, reads_state=True), dict(feedback=True, reads_state=True),
            dict(feedback=False, reads_state=False), dict(feedback=True, reads_state=False)]


def make_cell(cls, feedback, reads_state):
    torch.manual_seed(0)
    options = {} if cls is R.OutputFeedbackCell else dict(reads_state=reads_state)
    return cls(I, H, O if feedback else 0, **options).double().eval()


def served(cls, implementation) -> list[dict]:
    name = implementation.split()[0]
    out = []
    for variant in VARIANTS:
        if cls is R.OutputFeedbackCell and variant["reads_state"]:
            continue
        cell = make_cell(cls, **variant)
        if kernels.available(cell, name, feedback=variant["feedback"], lengths=True, masks=(None, None),
                             training=False, device="cpu") is None:
            out.append(variant)
    return out


CASES = [(cls, impl) for cls in LADDER for impl in IMPLEMENTATIONS if served(cls, impl)]


def padded(shape, fill, generator):
    """(B, T, n) random values, `fill` at every step past each sequence's length."""
    values = torch.randn(*shape, generator=generator, dtype=torch.float64)
    past = torch.arange(T)[None, :] >= LENGTHS[:, None]
    values[past] = fill
    return values.requires_grad_()


def run_with_padding(cell, name, feedback, fill):
    g = torch.Generator().manual_seed(1)
    xs = padded((B, T, I), fill, g)
    y_prev = padded((B, T, O), fill, g) if feedback else None
    zero = cell.initial_state(B, dtype=torch.float64)
    state = tuple(torch.randn(z.shape, generator=g, dtype=torch.float64).requires_grad_() for z in zero) \
        if isinstance(zero, tuple) else torch.randn(zero.shape, generator=g, dtype=torch.float64).requires_grad_()
    ys, final = kernels.run(cell, xs, state, y_prev, LENGTHS, (None, None), name)
    finals = final if isinstance(final, tuple) else (final,)
    weights = torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).view_as(ys)
    loss = (ys * weights).sum() + sum((f * f).sum() for f in finals)
    leaves = list(cell.parameters()) + [xs] + list(state if isinstance(state, tuple) else (state,))
    leaves += [y_prev] if feedback else []
    grads = [torch.zeros_like(leaf) if d is None else d
             for d, leaf in zip(torch.autograd.grad(loss, leaves, allow_unused=True), leaves)]
    return [ys, *finals, *grads]


@pytest.mark.parametrize("cls, implementation", CASES, ids=[f"{c.__name__}-{i}" for c, i in CASES])
def test_nan_and_inf_padding_never_reach_results(cls, implementation, monkeypatch):
    """Every implementation, every cell it serves (plain, feedback, reads_state=False): NaN or inf
    past `lengths` give exactly the outputs, final state and gradients of zero padding."""
    name, loops = implementation.split()[0], implementation.split(" ", 1)[1:]
    if loops == ["(C++ loops)"] and EXTENSION is None:
        pytest.skip("the C++ loops are not built (tests never compile them)")
    extension = None if loops == ["(Python loops)"] else EXTENSION
    monkeypatch.setattr(compiled, "extension", lambda name=compiled.NAME: extension)
    for variant in served(cls, implementation):
        cell = make_cell(cls, **variant)
        clean = run_with_padding(cell, name, variant["feedback"], 0.0)
        for fill in (float("nan"), float("inf"), -float("inf")):
            dirty = run_with_padding(cell, name, variant["feedback"], fill)
            for k, (c, d) in enumerate(zip(clean, dirty)):
                assert torch.isfinite(d).all(), f"{variant} fill={fill}: result {k} is not finite"
                torch.testing.assert_close(d, c, rtol=1e-12, atol=1e-12, msg=f"{variant} fill={fill}: result {k}")


@pytest.mark.parametrize("implementation", ["reference", "auto"])
@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_sequence_to_vector_never_reads_padding(pool, implementation):
    torch.manual_seed(0)
    core = R.Bidirectional(R.Recurrent(R.GRUCell(I, H), implementation),
                           R.Recurrent(R.LSTMCell(I, H), implementation))
    model = R.SequenceToVector(core, nn.Linear(2 * H, 3), pool=pool).double()
    results = []
    for fill in (0.0, float("nan"), float("inf")):
        xs = padded((B, T, I), fill, torch.Generator().manual_seed(2))
        out, _ = model(xs, lengths=LENGTHS)
        grads = torch.autograd.grad(out.pow(2).sum(), [xs, *model.parameters()])
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads), fill
        results.append([out, *grads])
    for dirty in results[1:]:
        for c, d in zip(results[0], dirty):
            torch.testing.assert_close(d, c)


def test_free_running_model_never_reads_padding():
    """The closed loop (scheduled sampling): NaN in padded inputs and targets stays out."""
    torch.manual_seed(0)
    model = R.RecurrentModel(R.Recurrent(R.GRUCell(I, H, 1)), nn.Linear(H, 1), feedback_map=R.RawFeedback(1)).double()
    results = []
    for fill in (0.0, float("nan")):
        g = torch.Generator().manual_seed(3)
        xs, targets = padded((B, T, I), fill, g), padded((B, T, 1), fill, g).detach()
        torch.manual_seed(4)  # the same coins
        ys, state = model(xs, targets=targets, teacher_forcing=0.5, lengths=LENGTHS)
        valid = (torch.arange(T)[None, :] < LENGTHS[:, None])[..., None]
        grads = torch.autograd.grad((ys * valid).pow(2).sum() + state.pow(2).sum(), [xs, *model.parameters()])
        assert torch.isfinite(ys).all() and torch.isfinite(state).all()
        assert all(torch.isfinite(d).all() for d in grads)
        results.append([ys * valid, state, *grads])
    for c, d in zip(*results):
        torch.testing.assert_close(d, c)
