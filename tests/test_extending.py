"""docs/ARCHITECTURE.md's "Extending rnnlab", followed as written: a new cell, a new task and a new
implementation of the time loop, each defined here, registered for the test only (monkeypatch), and
run through Recurrent, the Trainer and the `rnnlab` command. If a recipe's step goes stale, this fails."""

from dataclasses import dataclass

import pytest
import test_config
import torch
import torch.nn.functional as F
from test_kernels import LENGTHS, assert_agree
from torch import nn
from torch.utils.checkpoint import checkpoint

import rnnlab as R
from rnnlab import kernels, runners
from rnnlab.cells import LADDER, Cell
from rnnlab.cli import main
from rnnlab.config import knob, validate
from rnnlab.data.batches import Batch
from rnnlab.data.seeded import SeededBatches
from rnnlab.kernels.reference import reference
from rnnlab.tasks import TASKS, Task
from rnnlab.tasks.cell_options import CellOptions
from rnnlab.training import TrainConfig, Trainer

from resume_check import assert_resume_matches

# --- a cell: the recipe's steps 1 and 2 ------------------------------------------------------------


class LeakyCell(Cell):
    """A leaky integrator: a learned leak u between the old state and the candidate.

        u = sigma(z_u),   r = a(z_r),   s^t = (1 - u) * s^{t-1} + u * r

    z = zx + zh (B, 2H) through `preactivations`, gates [u | r]; state s (B, H)."""

    family = "test-leaky"
    gates = ("u", "r")

    def combine(self, zx, zh, s):
        zu, zr = self.preactivations(zx, zh).chunk(2, dim=-1)
        u = self.sigma(zu)
        return (1 - u) * s + u * self.act(zr)


def test_a_new_cell_computes_its_equations_written_out_by_hand():
    torch.manual_seed(0)
    cell = LeakyCell(3, 4, feedback_size=2).double()
    x, s, y = torch.randn(5, 3).double(), torch.randn(5, 4).double(), torch.randn(5, 2).double()
    z = x @ cell.weight_ih.T + s @ cell.weight_hh.T + y @ cell.weight_yh.T + cell.bias_ih + cell.bias_hh
    u, r = torch.sigmoid(z[:, :4]), torch.tanh(z[:, 4:])
    out, new = cell(x, s, y)
    torch.testing.assert_close(new, (1 - u) * s + u * r)
    torch.testing.assert_close(out, new)
    assert cell.weight_ih.shape == (2 * 4, 3)  # K = 2 gates stacked in the fused weights


def test_a_new_cell_runs_in_every_runner_on_the_reference_loop_and_its_gradients_check():
    torch.manual_seed(0)
    runner = R.Recurrent(LeakyCell(3, 4).double())
    context = dict(feedback=False, lengths=True, masks=(None, None), training=True, device="cpu")
    assert kernels.choose(runner.cell, "auto", **context) == "reference"  # no fast path knows the family
    for name in ("fused", "native", "scan"):
        with pytest.raises(ValueError, match="test-leaky|LeakyCell"):
            kernels.choose(runner.cell, name, **context)
    xs = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3])
    assert torch.autograd.gradcheck(lambda xs: runner(xs, lengths=lengths)[0], (xs,))
    ys, _ = runner(xs, lengths=lengths)
    assert ys.shape == (2, 5, 4) and not ys[1, 3:].any()  # past a sequence's end: zero
    options = CellOptions(depth=2, input_dropout=0.1, zoneout=0.1, l2=1e-4).cell_options("leaky")
    deep = R.Stacked.of(LeakyCell, 3, 6, 2, options=options)
    assert deep(xs.float().detach())[0].shape == (2, 5, 6)
    bi = R.Bidirectional(R.Recurrent(LeakyCell(3, 4)), R.Recurrent(LeakyCell(3, 4)))
    assert bi(xs.float().detach(), lengths=lengths)[0].shape == (2, 5, 8)


def test_a_fast_path_for_the_parent_never_runs_a_subclass_that_changes_the_equations():
    with pytest.raises(TypeError, match="must declare its own `family`"):
        class Leakier(LeakyCell):  # noqa: F841  (no family: refused when defined)
            def combine(self, zx, zh, s):
                return super().combine(zx, zh, s) * 0.5


# --- a task: the recipe's steps 1 to 4 -----------------------------------------------------------------

CELLS = {**LADDER, "leaky": LeakyCell}


@dataclass(frozen=True)
class RunningSumConfig(CellOptions):
    """The length of the sequences to sum and the model."""

    cell: str = knob("leaky", "cell of the ladder", tuple(c for c in CELLS if c != "feedback"))
    hidden: int = knob(8, "state size H", low=1)
    T: int = knob(6, "steps per sequence", low=1)
    batch_size: int = knob(16, "sequences per batch", low=1)
    eval_size: int = knob(64, "held-out sequences", low=1)

    def __post_init__(self):
        validate(self)


class RunningSumTask(Task):
    """The sum of T numbers drawn from N(0, 1): sequence to vector, MSE against predicting 0 (MSE T)."""

    name = "running-sum"
    description = "test: the sum of a sequence, MSE vs predicting 0"
    Config = RunningSumConfig
    train_defaults = TrainConfig(steps=40, max_minutes=1.0, lr=3e-2, eval_every=10, checkpoint_every=10,
                                 log_every=10, threads=1)
    unit = "sequence"

    def __init__(self, config: RunningSumConfig):
        self.config = config
        core = R.Stacked.of(CELLS[config.cell], 1, config.hidden, 1, options=config.cell_options(config.cell))
        self.model = R.SequenceToVector(core, nn.Linear(core.output_size, 1))
        self.held_out = self.batch_of(config.eval_size, torch.Generator().manual_seed(2**31 - 1))

    def batch_of(self, size: int, generator: torch.Generator) -> Batch:
        xs = torch.randn(size, self.config.T, 1, generator=generator)
        return Batch(xs, xs.sum(dim=1))

    def batches(self, seed: int) -> SeededBatches:
        return SeededBatches(lambda generator: self.batch_of(self.config.batch_size, generator), seed)

    @staticmethod
    def loss(model, batch: Batch, state, teacher_forcing: float):
        prediction, state = model(batch.inputs)
        return F.mse_loss(prediction, batch.targets), state, batch.targets.shape[0]

    @torch.no_grad()
    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        prediction, _ = model(self.held_out.inputs)
        return {"loss": float(F.mse_loss(prediction, self.held_out.targets)),
                "baseline": float(self.held_out.targets.square().mean())}

    def describe(self) -> str:
        return f"running sum, T={self.config.T}: {self.config.cell}, hidden {self.config.hidden}"

    def report(self, model, run_dir) -> list[str]:
        metrics = self.evaluate(model)
        return [f"MSE {metrics['loss']:.4f} (predicting 0: {metrics['baseline']:.4f})"]


def test_a_new_task_learns_through_the_trainer_and_its_metric_is_the_hand_computed_one():
    torch.manual_seed(0)
    task = RunningSumTask(RunningSumConfig())
    before = task.evaluate(task.model)
    xs, targets = task.held_out.inputs, task.held_out.targets
    assert before["baseline"] == pytest.approx(float((xs.sum(1) ** 2).mean()))
    Trainer(task.model, task.batches(0), task.loss, task.train_defaults, evaluate=task.evaluate).fit()
    after = task.evaluate(task.model)
    with torch.no_grad():
        prediction, _ = task.model(xs)
    assert after["loss"] == pytest.approx(float(((prediction - targets) ** 2).mean()), rel=1e-5)
    assert after["loss"] < 0.5 * min(before["loss"], before["baseline"])


def test_a_new_task_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = RunningSumTask(RunningSumConfig(hidden=4, batch_size=4, eval_size=8))
        train = TrainConfig(steps=steps, eval_every=2, checkpoint_every=2, lr=1e-2, lr_schedule="constant")
        return task, Trainer(task.model, task.batches(3), task.loss, train, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_a_registered_task_is_a_command_and_must_be_recorded(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(TASKS, RunningSumTask.name, RunningSumTask)
    run = tmp_path / "sum"
    assert main(["tasks"]) == 0 and "running-sum" in capsys.readouterr().out
    assert main(["train", "running-sum", "--steps", "4", "--hidden", "4", "--depth", "2", "--eval-every", "2",
                 "--out", str(run)]) == 0
    assert "running sum, T=6: leaky, hidden 4" in capsys.readouterr().out
    assert main(["eval", str(run)]) == 0 and "MSE" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 0
    capsys.readouterr()
    assert main(["train", "running-sum", "--T", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--T" in err[0] and "0" in err[0]
    with pytest.raises(AssertionError, match="running-sum .* is not recorded: a new task"):
        test_config.test_every_stored_config_field_is_recorded_with_what_its_absence_means()


# --- an implementation: the recipe's steps 1 to 3 -------------------------------------------------------


def checkpointed(cell, xs, state, y_prev, lengths, masks, chunk: int = 4):
    """The reference loop over chunks of `chunk` steps, each recomputed in backward rather than kept
    (torch.utils.checkpoint): what is saved for backward is one chunk's steps and the states between
    chunks. Padding: each chunk gets the lengths left in it, so `reference` keeps its promise."""
    outputs = []
    for start in range(0, xs.shape[1], chunk):
        part = slice(start, start + chunk)
        steps = xs[:, part].shape[1]
        left = None if lengths is None else (lengths - start).clamp(0, steps)
        feedback = None if y_prev is None else y_prev[:, part]
        ys, state = checkpoint(reference, cell, xs[:, part], state, feedback, left, masks, use_reentrant=False)
        outputs.append(ys)
    return torch.cat(outputs, dim=1), state


def checkpointed_unavailable(cell, **context) -> str | None:
    if not context.get("training", True):
        return "checkpointed saves memory for backward, which evaluation does not do; use reference"
    return None


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, "checkpointed", checkpointed)
    monkeypatch.setitem(kernels._UNAVAILABLE, "checkpointed", checkpointed_unavailable)
    monkeypatch.setattr(runners, "IMPLEMENTATION_NAMES", (*runners.IMPLEMENTATION_NAMES, "checkpointed"))


def test_an_implementation_not_registered_is_refused_by_name():
    with pytest.raises(ValueError, match="implementation must be one of"):
        R.Recurrent(R.LSTMCell(3, 4), implementation="checkpointed")


@pytest.mark.parametrize("cls, feedback", [(R.LSTMCell, False), (R.GRUCell, True), (LeakyCell, False)])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_a_registered_implementation_agrees_with_the_reference(registered, cls, feedback, lengths):
    torch.manual_seed(0)
    cell = cls(3, 5, 2 if feedback else 0).double()
    assert_agree(cell, "checkpointed", feedback, lengths)
    runner = R.Recurrent(cell, implementation="checkpointed")
    xs = torch.randn(4, 6, 3, dtype=torch.float64)  # test_kernels' sizes: B, T, I = 4, 6, 3 (LENGTHS: B = 4)
    y_prev = torch.randn(4, 6, 2, dtype=torch.float64) if feedback else None
    expected, _ = R.Recurrent(cell, implementation="reference")(xs, y_prev=y_prev, lengths=lengths)
    torch.testing.assert_close(runner(xs, y_prev=y_prev, lengths=lengths)[0], expected)
    assert kernels.choose(cell, "auto", feedback=feedback, lengths=lengths is not None, masks=(None, None),
                          training=True, device="cpu") != "checkpointed"  # auto tries only its orders


def test_a_registered_implementations_refusal_is_one_line_before_the_run(registered):
    runner = R.Recurrent(R.LSTMCell(3, 4), implementation="checkpointed")
    with pytest.raises(ValueError, match="implementation='checkpointed' cannot run LSTMCell here: checkpointed saves"):
        runners.check_implementations(runner)
    runner.eval()
    with pytest.raises(ValueError, match="evaluation does not do"):
        runner(torch.randn(2, 5, 3))
