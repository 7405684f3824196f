"""ONNX export (rnnlab/export.py, kernels/traceable.py): every ladder cell and implementation, with and
without output feedback, exported with dynamic batch and length and compared with PyTorch in
onnxruntime at three lengths and two batch sizes; the step graph; `rnnlab export` and
`rnnlab sample --engine onnxruntime`."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import rnnlab as R
from rnnlab import export, kernels
from rnnlab.cells import LADDER
from rnnlab.cli import main

from conftest import EXTENSION
from play_text import write_play

onnx = pytest.importorskip("onnx", reason="the export extra: pip install 'rnnlab[export]'")
pytest.importorskip("onnxruntime", reason="the export extra: pip install 'rnnlab[export]'")

FEEDBACK = 3


def model_of(name: str, feedback: bool, implementation: str, layers: int = 1, **options) -> R.RecurrentModel:
    torch.manual_seed(0)
    cell = LADDER[name](4, 6, FEEDBACK if feedback else 0, **options)
    core = R.Stacked(R.Recurrent(cell, implementation),
                     *([R.Recurrent(LADDER[name](cell_output(cell), 5, **options), implementation)]
                       if layers == 2 else []))
    feedback_map = R.RawFeedback(FEEDBACK) if feedback else None
    return R.RecurrentModel(core, nn.Linear(core.output_size, 2), feedback_map=feedback_map).eval()


def cell_output(cell) -> int:
    return cell.output_size  # P for the projected LSTM


def implementations(cell) -> list[str]:
    """The implementations that can run this cell in eval mode (explicit ones raise elsewhere)."""
    names = ["auto", "reference", "fused", "native", "scan"]
    return [n for n in names if n == "auto" or kernels.available(cell, n, feedback=cell.feedback_size > 0,
                                                                  lengths=False, masks=(None, None),
                                                                  training=False, device="cpu") is None]


def time_loop_ops(data: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(data).graph.node} & {"Loop", "Scan", "LSTM", "GRU", "RNN"}


CASES = [(name, feedback, {}) for name in LADDER for feedback in (False, True) if name != "feedback" or feedback]
CASES += [("gru", False, {"reads_state": False}), ("forget", True, {"reads_state": False}),
          ("residual", False, {"residual": "before", "activation": "relu"}), ("vanilla", False, {"depth": 2}),
          ("lstm", False, {"zoneout": 0.2}),
          ("input", False, {"activation": "gelu", "gate_activation": "hard_sigmoid"}),
          ("peephole-lstm", False, {"zoneout": 0.2, "activation": "softsign"}),
          ("layernorm-lstm", False, {"reads_state": False}),
          ("projected-lstm", True, {"proj_size": 2, "bias": False})]


@pytest.mark.parametrize("name,feedback,options", CASES,
                         ids=[f"{n}-{'fb' if f else 'plain'}-{'-'.join(map(str, o.values()))}" for n, f, o in CASES])
def test_every_cell_and_implementation_exports_and_matches_pytorch_in_onnxruntime(name, feedback, options):
    cell = model_of(name, feedback, "reference", **options).core.layers[0].cell
    for implementation in implementations(cell):
        graph = export.SequenceGraph(model_of(name, feedback, implementation, **options))
        data = export.export_model(graph)
        # PyTorch runs the implementation itself (fused: the C++ or Python loop), onnxruntime the export
        worst = export.verify(graph, data, lengths=(1, 6, 25), batches=(1, 3))
        assert worst < 1e-4, (implementation, worst)
        ops = time_loop_ops(data)
        assert ops, f"{implementation}: no time loop in the graph: unrolled to the traced length"
        model_inputs = {i.name for i in onnx.load_from_string(data).graph.input}
        assert "inputs" in model_inputs and ("feedback" in model_inputs) == feedback


# Run in a child process: torch 2.4 and 2.5's TorchScript exporter crashes (SIGSEGV, in _optimize_graph)
# on the graph traced through a C++ call; 2.13's exports constants, which `verify` must catch.
TRACED_INTO_CONSTANTS = """
import torch
from torch import nn
import rnnlab as R
from rnnlab import export, kernels
torch.manual_seed(0)
core = R.Stacked(R.Recurrent(R.GRUCell(4, 6), "fused"), R.Recurrent(R.GRUCell(6, 5), "fused"))
graph = export.SequenceGraph(R.RecurrentModel(core, nn.Linear(5, 2)).eval())
print("inputs with the dispatch:", len(__import__("onnx").load_from_string(export.export_model(graph)).graph.input))
kernels.exporting = lambda: False
try:
    export.verify(graph, export.export_model(graph))
    print("verify passed")
except ValueError as error:
    print("verify refused:", error)
"""


def test_without_the_export_dispatch_fused_is_traced_into_constants():
    # the bug, kept as a check that `verify` catches it: the C++ loop's outputs become constants
    # the cached C++ loops where they are built, else the Python loops: the child never compiles (conftest.py);
    # it built the loops, a minute or more, where no build was cached
    env = {**os.environ, **({} if EXTENSION is not None else {"RNNLAB_NO_EXTENSION": "1"})}
    done = subprocess.run([sys.executable, "-c", TRACED_INTO_CONSTANTS], capture_output=True, text=True, timeout=300,
                          env=env)
    assert "inputs with the dispatch: 3" in done.stdout, done.stderr[-2000:]  # inputs and both states
    if done.returncode < 0:
        pytest.skip(f"torch {torch.__version__}'s exporter crashes (signal {-done.returncode}) tracing a C++ call "
                    f"without the export dispatch, which every export goes through")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verify refused:" in done.stdout and "does not read state_0" in done.stdout, done.stdout


def test_exported_graph_has_dynamic_batch_and_time_axes():
    data = export.export_model(export.SequenceGraph(model_of("lstm", False, "auto", layers=2)))
    inputs = onnx.load_from_string(data).graph.input
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs]
    assert dims[0] == ["batch", "time", 4] and dims[1] == ["batch", 6]


def test_step_graph_takes_and_returns_the_state_and_matches_the_sequence_one_step_at_a_time():
    model = model_of("forget", True, "fused", layers=2)
    step = export.StepGraph(model)
    data = export.export_model(step)
    assert export.verify(step, data) < 1e-4
    names = [i.name for i in onnx.load_from_string(data).graph.input]
    assert names == ["inputs", "feedback", "state_0", "state_1"]
    # running the step graph T times gives the sequence model's outputs and final state
    sess = export.session(data)
    xs, fed = torch.randn(2, 9, 4), torch.randn(2, 9, FEEDBACK)
    with torch.no_grad():
        expected, *final = export.SequenceGraph(model)(xs, fed, *step.examples(2, None)[2:])
    state = [s.numpy() for s in step.examples(2, None)[2:]]
    outs = []
    for t in range(9):
        y, *state = sess.run(None, {"inputs": xs[:, t].numpy(), "feedback": fed[:, t].numpy(),
                                    "state_0": state[0], "state_1": state[1]})
        outs.append(torch.from_numpy(y))
    assert torch.allclose(torch.stack(outs, 1), expected, atol=1e-5)
    assert all(torch.allclose(torch.from_numpy(a), b, atol=1e-5) for a, b in zip(state, final))


def test_sequence_to_vector_with_lengths_exports():
    torch.manual_seed(0)
    core = R.Stacked(R.Recurrent(R.GRUCell(5, 7)))
    for pool in ("last", "mean", "max"):
        model = R.SequenceToVector(core, nn.Linear(7, 2), input_map=nn.Embedding(11, 5), pool=pool).eval()
        graph = export.SequenceGraph(model)
        assert graph.input_names() == ["inputs", "lengths", "state_0"]
        assert export.verify(graph, export.export_model(graph)) < 1e-4
    with pytest.raises(ValueError, match="pool='mean' has no one-step form"):
        export.StepGraph(model.__class__(core, nn.Linear(7, 2), pool="mean"))


def test_bad_models_give_one_line_errors():
    with pytest.raises(ValueError, match="model must be a RecurrentModel or a SequenceToVector; got Recurrent"):
        export.SequenceGraph(R.Recurrent(R.GRUCell(2, 3)))
    graph = export.SequenceGraph(model_of("gru", False, "auto"))
    with pytest.raises(ValueError, match="eval mode"):
        graph.train()


def test_a_user_trace_uses_the_traceable_loop_and_keeps_the_length_dynamic():
    class Outputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.runner = R.Recurrent(R.ForgetGatedCell(3, 4), "fused").eval()

        def forward(self, xs):
            return self.runner(xs)[0]

    model = Outputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(2, 5, 3))
    xs = torch.randn(3, 11, 3)
    assert torch.allclose(traced(xs), model(xs), atol=1e-6)


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    with pytest.raises(export.MissingExtra, match=r"onnxruntime is not installed; .*pip install 'rnnlab\[export\]'"):
        export.require("onnxruntime")


TINY = ["--hidden", "12", "--embedding", "6", "--batch-size", "4", "--seq-len", "12", "--eval-tokens", "200",
        "--eval-every", "8", "--log-every", "4", "--threads", "1", "--steps", "8", "--samples", "0"]


@pytest.mark.parametrize("cell,feedback", [("gru", False), ("lstm", False), ("forget", True)])
def test_cli_export_and_greedy_sampling_on_onnxruntime_equals_pytorch(tmp_path, capsys, cell, feedback):
    run = tmp_path / "run"
    text = write_play(tmp_path / "play.txt")
    flags = ["--cell", cell] + (["--feedback"] if feedback else [])
    assert main(["train", "--text", str(text), *TINY, *flags, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "lm.onnx")]) == 0
    out = capsys.readouterr().out
    assert "lm.onnx" in out and "lm-step.onnx" in out and "onnxruntime matches PyTorch" in out
    assert export.exported_by_rnnlab(tmp_path / "lm.onnx") and export.exported_by_rnnlab(tmp_path / "lm-step.onnx")
    assert main(["export", str(run), "--out", str(tmp_path / "lm.onnx")]) == 0  # its own graphs are replaced
    capsys.readouterr()
    sample = ["sample", str(run), "--prompt", "ROMEO:", "--length", "60", "--temperature", "0"]
    assert main(sample) == 0
    torch_text = capsys.readouterr().out
    assert main(sample + ["--engine", "onnxruntime"]) == 0
    assert capsys.readouterr().out == torch_text


def test_cli_export_rejects_bad_paths(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "rnnlab: error:" in capsys.readouterr().err
    # --out is checked before the run is read, let alone its weights loaded
    for out, message in (("model.txt", "--out must name a .onnx file"), ("nowhere/m.onnx", "--out's folder")):
        assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
    # a file rnnlab did not export, at --out or where its step graph goes beside it, was replaced: refused first
    (tmp_path / "theirs.onnx").write_bytes(b"a user's model")
    (tmp_path / "mine-step.onnx").write_bytes(b"a user's model")
    for out, refused in (("theirs.onnx", "theirs.onnx"), ("mine.onnx", "mine-step.onnx")):
        assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert f"{str(tmp_path / refused)!r} exists and is not a graph rnnlab exported" in err and err.count("\n") == 1
    assert (tmp_path / "theirs.onnx").read_bytes() == (tmp_path / "mine-step.onnx").read_bytes() == b"a user's model"


def test_every_exported_graph_carries_rnnlab_s_mark_and_a_plain_one_does_not(tmp_path):
    graph = export.SequenceGraph(model_of("lstm", False, "auto"))
    export.export_model(graph, tmp_path / "ours.onnx")
    assert export.exported_by_rnnlab(tmp_path / "ours.onnx")
    plain = onnx.load(tmp_path / "ours.onnx")
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    assert not export.exported_by_rnnlab(tmp_path / "plain.onnx")
    assert not export.exported_by_rnnlab(tmp_path)  # a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.onnx", "plain.onnx"]  # no temporary file left


def test_cli_export_refuses_a_run_it_cannot_export_before_loading_its_weights(tmp_path, capsys):
    """A caption run (as translate's and control's) has no sequence graph: refused first, naming the task
    and what export writes, where it loaded the weights and then failed."""
    run = tmp_path / "run"
    assert main(["train", "caption", "--vector", "8", "--hidden", "8", "--embed", "4", "--batch-size", "8",
                 "--eval-size", "20", "--steps", "1", "--threads", "1", "--out", str(run)]) == 0
    for weights in run.glob("*.safetensors"):
        weights.unlink()  # loading them would now fail: the refusal must come first
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights" not in err, err
    assert "a 'caption' run cannot be exported: model must be a RecurrentModel or a SequenceToVector" in err


class _CustomLSTM(R.LSTMCell):
    family = "custom-lstm"  # a family no kernel knows


def test_a_cell_without_a_traceable_step_is_refused_in_one_line():
    model = R.RecurrentModel(R.Stacked(R.Recurrent(_CustomLSTM(4, 6))), nn.Linear(6, 2)).eval()
    with pytest.raises(ValueError, match=r"cannot export or trace _CustomLSTM: the traceable loop has no step for"):
        export.export_model(export.SequenceGraph(model))


@pytest.mark.parametrize("name", ["peephole-lstm", "layernorm-lstm", "projected-lstm"])
def test_the_new_lstms_export_with_lengths_and_as_steps(name):
    torch.manual_seed(0)
    core = R.Stacked(R.Recurrent(LADDER[name](5, 7)))
    model = R.SequenceToVector(core, nn.Linear(core.output_size, 2), input_map=nn.Embedding(11, 5), pool="last").eval()
    graph = export.SequenceGraph(model)
    assert export.verify(graph, export.export_model(graph)) < 1e-4
    step = export.StepGraph(model_of(name, True, "auto", layers=2))
    assert export.verify(step, export.export_model(step)) < 1e-4


def test_sampling_on_onnxruntime_runs_the_threads_threads_says(tmp_path, capsys, monkeypatch):
    """`sample --engine onnxruntime` ran one thread whatever --threads said; the step graph's session now
    takes --threads (without it, torch's count, as the PyTorch engine runs)."""
    run = tmp_path / "run"
    assert main(["train", "--text", str(write_play(tmp_path / "play.txt")), *TINY, "--out", str(run)]) == 0
    made = []
    real = export.session
    monkeypatch.setattr(export, "session", lambda source, threads=1: made.append(real(source, threads)) or made[-1])
    sample = ["sample", str(run), "--prompt", "ROMEO:", "--length", "5", "--engine", "onnxruntime"]
    assert main(sample + ["--threads", "2"]) == 0
    assert made[-1].get_session_options().intra_op_num_threads == 2
    assert main(sample) == 0 and made[-1].get_session_options().intra_op_num_threads == torch.get_num_threads()
    graph = export.StepGraph(model_of("gru", False, "auto"))
    stepper = export.OnnxStep(export.export_model(graph), graph, threads=3)  # the library's own argument
    assert stepper.session.get_session_options().intra_op_num_threads == 3


def test_a_graph_leaves_the_mode_of_a_model_in_training_as_it_was():
    """SequenceGraph(model) called model.eval() for good: a model exported (or checked) between
    training steps went on training with its dropout off, silently. The graph still runs in eval mode."""
    torch.manual_seed(0)
    model = R.RecurrentModel(R.Stacked.of(R.LSTMCell, 4, 6, 2, dropout=0.5), nn.Linear(6, 2)).train()
    for kind in (export.SequenceGraph, export.StepGraph):
        graph = kind(model)
        assert model.training
        data = export.export_model(graph)
        assert all(m.training for m in model.modules())
        assert export.verify(graph, data) < 1e-4  # eval mode inside: no dropout in PyTorch's outputs either
        assert all(m.training for m in model.modules())
    model.eval()
    export.export_model(export.SequenceGraph(model))
    assert not any(m.training for m in model.modules())
