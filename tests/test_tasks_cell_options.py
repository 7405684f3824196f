"""The cell's options reach every task's cells from the command line."""

import pytest
import torch

import rnnlab as R
from rnnlab.cli import main
from rnnlab.tasks import TASKS, open_run
from rnnlab.tasks.cell_options import CellOptions


def cells_of(model):
    return [m for m in model.modules() if isinstance(m, R.Cell)]


@pytest.mark.parametrize("name", ["adding", "copy", "digits", "forecast", "sentiment", "language"])
def test_every_supervised_task_takes_the_cell_options(name):
    cls = TASKS[name]
    assert issubclass(cls.Config, CellOptions)
    config = cls.Config(depth=2, zoneout=0.1, recurrent_dropout=0.2, input_dropout=0.1, activation="relu",
                        max_norm=3.0, l2=1e-4, activity_l2=1e-3, init="keras", hidden=8)
    cells = cells_of(cls(config).model)
    assert cells
    for cell in cells:
        options = (cell.depth, cell.zoneout, cell.recurrent_dropout, cell.dropout, cell.activation)
        assert options == (2, 0.1, 0.2, 0.1, "relu")
        assert cell.constraints.kernel == R.MaxNorm(3.0) and cell.regularizers.kernel == R.L1L2(l2=1e-4)
        assert cell.regularizers.activity == R.L1L2(l2=1e-3)


def test_no_state_read_and_residual_before_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "adding", "--T", "5", "--hidden", "4", "--steps", "1", "--eval-size", "4",
                 "--batch-size", "4", "--cell", "residual", "--residual", "before", "--no-state-read",
                 "--out", str(run)]) == 0
    task, _ = open_run(run)
    (cell,) = cells_of(task.model)
    assert cell.residual == "before" and cell.reads_state is False


def test_keras_init_option_changes_the_weights():
    plain, keras = (TASKS["adding"](TASKS["adding"].Config(hidden=16, init=i)) for i in ("torch", "keras"))
    w_plain, w_keras = (cells_of(t.model)[0].weight_hh for t in (plain, keras))
    torch.testing.assert_close(w_keras.T @ w_keras, torch.eye(16), atol=1e-5, rtol=0)
    assert not torch.allclose(w_plain.T @ w_plain, torch.eye(16), atol=1e-2)


@pytest.mark.parametrize("name", ["adding", "copy", "digits", "forecast", "sentiment", "language"])
def test_the_projected_lstm_reaches_every_supervised_task_and_its_readout_reads_p(name):
    cls = TASKS[name]
    task = cls(cls.Config(cell="projected-lstm", proj_size=3, hidden=8))
    cells = cells_of(task.model)
    assert cells and all(isinstance(c, R.ProjectedLSTMCell) and c.proj_size == 3 for c in cells)
    readouts = [m for m in task.model.modules() if isinstance(m, torch.nn.Linear)]
    assert readouts and readouts[-1].in_features in (3, 6)  # P, or 2P for a bidirectional core


def test_proj_size_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "adding", "--T", "5", "--hidden", "6", "--steps", "1", "--eval-size", "4",
                 "--batch-size", "4", "--cell", "projected-lstm", "--proj-size", "2", "--out", str(run)]) == 0
    task, _ = open_run(run)
    (cell,) = cells_of(task.model)
    assert cell.proj_size == 2 and tuple(cell.weight_hr.shape) == (2, 6)
    assert main(["train", "adding", "--T", "5", "--hidden", "6", "--steps", "1", "--cell", "gru", "--proj-size", "2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--proj-size must be none unless the cell is projected-lstm" in capsys.readouterr().err
