"""rnnlab ladder: equal parameter budgets within 5%, a tiny ladder through the CLI, clear errors."""

import pytest

from rnnlab.cli import main
from rnnlab.errors import RunDirError
from rnnlab.ladder import LADDER_CELLS, hidden_for_budget, parameter_count, run_ladder
from rnnlab.tasks.memory import AddingConfig, AddingTask, CopyConfig, CopyTask


@pytest.mark.parametrize("cls, config", [(AddingTask, AddingConfig(T=4, eval_size=2)),
                                         (CopyTask, CopyConfig(T=4, eval_size=2, hidden=64))])
def test_equal_budgets_within_five_percent(cls, config):
    budget = parameter_count(cls(config).model)  # the LSTM at H = 64
    sizes = {}
    for cell in LADDER_CELLS:
        hidden, params = hidden_for_budget(cls, config, cell, budget)
        assert abs(params - budget) / budget < 0.05, (cell, hidden, params, budget)
        sizes[cell] = hidden
    assert sizes["lstm"] == 64
    # more gates, fewer state units: vanilla (1 block) > input (2) > forget (3) > lstm (4)
    assert sizes["vanilla"] > sizes["input"] > sizes["forget"] > sizes["lstm"]
    assert sizes["vanilla"] == sizes["residual"]


def test_tiny_ladder_prints_one_table_and_saves_one_plot(tmp_path, capsys):
    out = tmp_path / "ladder"
    assert main(["ladder", "copy", "--T", "3", "--hidden", "4", "--batch-size", "4", "--steps", "2",
                 "--eval-every", "1", "--cells", "vanilla,gru", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| cell | hidden | params | steps | final loss |" in text and "| vanilla |" in text and "| gru |" in text
    assert (out / "ladder.png").stat().st_size > 1000 and (out / "gru" / "metrics.jsonl").is_file()
    # an existing ladder directory is resumed, not retrained: the curves keep their two evaluations
    rows = run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 2, "eval_every": 1}, out, ("gru",)).rows
    assert rows[0].steps == 2 and [step for step, _ in rows[0].curve] == [1, 2]


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="ladder: TASK must be one of \\['adding', 'copy'\\]; got 'language'"):
        run_ladder("language", {}, {}, tmp_path)
    with pytest.raises(ValueError, match="ladder: cells must be some of"):
        run_ladder("adding", {}, {}, tmp_path, ("vanilla", "transformer"))
    with pytest.raises(ValueError, match="hidden_for_budget: budget must be an int >= 1"):
        hidden_for_budget(AddingTask, AddingConfig(), "gru", 0)
    assert main(["ladder", "forecast", "--out", str(tmp_path / "x")]) == 2


def test_the_ladder_keeps_the_plain_copy_task(tmp_path):
    """The copy defaults carry one LSTM's long curriculum run; the ladder compares cells on the plain task."""
    rows = run_ladder("copy", {"T": 3, "batch_size": 4}, {"steps": 1, "eval_every": 1}, tmp_path, ("lstm",)).rows
    assert rows[0].hidden == 64
    import json
    saved = json.loads((tmp_path / "lstm" / "config.json").read_text())
    assert saved["task_config"]["curriculum"] == 0 and saved["train"]["lr"] == 1e-2
    assert saved["task_config"]["mix"] == 0 and saved["task_config"]["chrono"] is False


def test_a_cell_folder_of_another_configuration_is_refused_not_resumed(tmp_path, capsys):
    """Rerunning a ladder in its folder with another --T must not resume the T=3 runs as T=4 ones."""
    out = tmp_path / "ladder"
    run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 1, "eval_every": 1}, out, ("gru",))
    with pytest.raises(RunDirError, match=r"ladder/gru holds a run of another configuration \(T differs\)"):
        run_ladder("copy", {"T": 4, "hidden": 4, "batch_size": 4}, {"steps": 2, "eval_every": 1}, out, ("gru",))
    assert main(["ladder", "copy", "--T", "4", "--hidden", "4", "--batch-size", "4", "--steps", "2",
                 "--cells", "gru", "--out", str(out)]) == 2
    assert "holds a run of another configuration" in capsys.readouterr().err
    # more steps is a continuation, as with train --resume
    rows = run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 2, "eval_every": 1}, out, ("gru",)).rows
    assert rows[0].steps == 2


def test_out_naming_a_run_directory_or_a_file_is_refused(tmp_path):
    run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 1, "eval_every": 1}, tmp_path / "l", ("gru",))
    with pytest.raises(RunDirError, match="is a run directory"):
        run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 1}, tmp_path / "l" / "gru", ("gru",))
    assert not (tmp_path / "l" / "gru" / "gru").exists()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        run_ladder("copy", {"T": 3}, {"steps": 1}, tmp_path / "file", ("gru",))
    assert (tmp_path / "file").read_text() == "mine"


def test_ctrl_c_stops_the_ladder_not_only_the_cell_and_the_same_command_continues(tmp_path, monkeypatch, capsys):
    """Ctrl-C stopped the cell being trained, and the ladder went on to train every other cell (up to 20
    minutes each), then printed the interrupted cell as a finished rung."""
    from rnnlab.training import Trainer

    out = tmp_path / "ladder"
    args = ["ladder", "copy", "--T", "3", "--hidden", "4", "--batch-size", "4", "--steps", "3", "--eval-every", "1",
            "--cells", "vanilla,gru", "--out", str(out)]
    monkeypatch.setattr(Trainer, "_stop_reason", lambda self, deadline: "interrupted" if self.step >= 1 else None)
    with pytest.raises(KeyboardInterrupt):
        run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 3, "eval_every": 1}, out,
                   ("vanilla", "gru"))
    assert (out / "vanilla" / "checkpoint.json").is_file() and not (out / "gru").exists()
    assert main(args) == 130
    assert f"interrupted: the cell's checkpoint is saved; continue with the same command (--out {out})" in \
        capsys.readouterr().out
    assert not (out / "gru").exists()
    monkeypatch.undo()
    rows = run_ladder("copy", {"T": 3, "hidden": 4, "batch_size": 4}, {"steps": 3, "eval_every": 1}, out,
                      ("vanilla", "gru")).rows
    assert [(row.cell, row.steps, row.stopped) for row in rows] == [("vanilla", 3, "steps"), ("gru", 3, "steps")]
