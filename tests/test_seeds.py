"""`rnnlab seeds`: one configuration over several seeds, each an ordinary run in OUT/seed-S; finished
seeds are read, not trained again; another configuration's folder is refused; mean and std."""

import json

import pytest

from rnnlab import seeds
from rnnlab.cli import main
from rnnlab.tasks import DigitsConfig
from rnnlab.training import TrainConfig

TINY = ["--hidden", "4", "--steps", "3", "--eval-every", "3", "--checkpoint-every", "3", "--threads", "1"]


def test_seeds_train_each_seed_once_and_tabulate_mean_and_std(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["seeds", "digits", *TINY, "--count", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed 0: training" in printed and "seed 1: training" in printed
    rows = [json.loads((out / f"seed-{s}" / "final.json").read_text()) for s in (0, 1)]
    assert [json.loads((out / f"seed-{s}" / "config.json").read_text())["train"]["seed"] for s in (0, 1)] == [0, 1]
    losses = [dict(row["metrics"])["validation loss"] for row in rows]
    assert losses[0] != losses[1]  # two seeds, two runs
    assert f"**{sum(losses) / 2:.4g}** +- {abs(losses[0] - losses[1]) / 2 ** 0.5:.2g}" in printed
    stamp = (out / "seed-0" / "final.json").stat().st_mtime_ns
    # one seed (read, not trained again) has no spread: its value alone, never "+- 0"
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"| **n = 1 (no spread)** | **{losses[0]:.4g}** |" in printed and "+-" not in printed, printed
    # a third seed, beside its two finished ones: those are read, not trained again
    assert main(["seeds", "digits", *TINY, "--count", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed 0: done" in printed and "seed 2: training" in printed
    assert (out / "seed-0" / "final.json").stat().st_mtime_ns == stamp
    assert printed.count("\n| 2 |") == 1 and "mean +- std" in printed
    assert main(["eval", str(out / "seed-2")]) == 0  # each seed is an ordinary run


def test_seeds_refuse_another_configuration_and_bad_folders(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["seeds", "digits", *TINY, "--count", "1", "--lr", "0.1", "--out", str(out)]) == 2
    assert "holds a run of another configuration (lr differs)" in capsys.readouterr().err
    assert main(["seeds", "digits", *TINY[:-2], "--threads", "2", "--count", "1", "--out", str(out)]) == 0  # free
    assert main(["seeds", "digits", "--count", "0"]) == 2
    assert "--count must be >= 1; got 0" in capsys.readouterr().err
    assert main(["seeds", "digits", *TINY, "--out", str(out / "seed-0")]) == 2
    assert "is a run directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["seeds", "digits", *TINY, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["seeds", "digits", "--hidden", "0"]) == 2
    assert "--hidden must be an int >= 1; got 0" in capsys.readouterr().err


@pytest.mark.parametrize("file, content, message", [
    ("final.json", '{"seed": 0}', "not a seed's result"), ("final.json", '[1, 2]', "not a seed's result"),
    ("final.json", '{"seed": 0, "metrics": 3}', "not a seed's result"),
    # a seed resumed from its checkpoint reads its pretraining.json (sentiment's pretraining times)
    ("pretraining.json", '{"steps": 3}', "not a pretraining record"), ("pretraining.json", '[1]', "not a pretraining"),
    ("pretraining.json", '{"elapsed_s": "x", "cpu_s": 1}', "not a pretraining record")])
def test_a_damaged_seed_file_is_one_line_naming_it(tmp_path, capsys, file, content, message):
    """A final.json without its metrics, or a pretraining.json without its times, was a KeyError traceback."""
    out = tmp_path / "digits"
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 0
    if file != "final.json":
        (out / "seed-0" / "final.json").unlink()  # the seed is scored again from its checkpoint
    (out / "seed-0" / file).write_text(content)
    capsys.readouterr()
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"rnnlab: error: {out / 'seed-0' / file} is corrupt: {message}") and "\n" not in line, line


def test_a_seed_config_json_whose_train_is_not_an_object_is_one_line(tmp_path, capsys):
    """A TypeError traceback ('list' object is not a mapping) before."""
    out = tmp_path / "digits"
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 0
    config = out / "seed-0" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "train": [1]}))
    capsys.readouterr()
    assert main(["seeds", "digits", *TINY, "--count", "1", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"rnnlab: error: {config}: train must be an object of config fields; got [1]", line


def test_run_seeds_and_summarize_directly(tmp_path):
    rows = seeds.run_seeds("digits", DigitsConfig(hidden=4), TrainConfig(steps=2, eval_every=2, threads=1),
                           tmp_path / "s", range(3, 5))
    assert [row.seed for row in rows] == [3, 4] and all(row.step == 2 for row in rows)
    assert set(rows[0].metrics) == {f"validation {k}" for k in ("loss", "accuracy")}
    summary = seeds.summarize([seeds.SeedRow(0, {"a": 1.0}, 1, "steps", 0, 0), seeds.SeedRow(1, {"a": 3.0}, 1,
                                                                                               "steps", 0, 0)])
    assert summary == {"a": (2.0, pytest.approx(2 ** 0.5))}
    assert seeds.summarize([seeds.SeedRow(0, {"a": 1.0}, 1, "steps", 0, 0)]) == {"a": (1.0, None)}  # not 0.0
    with pytest.raises(ValueError, match="task must be one of"):
        seeds.run_seeds("nosuch", DigitsConfig(), TrainConfig(), tmp_path, range(1))
    with pytest.raises(ValueError, match="non-empty range"):
        seeds.run_seeds("digits", DigitsConfig(), TrainConfig(), tmp_path, range(0))


def test_seeds_tabulate_the_copy_tasks_fresh_test_accuracy(tmp_path, capsys):
    out = tmp_path / "copy"
    flags = ["--T", "3", "--eval-size", "8", "--batch-size", "4", "--curriculum", "0", "--stop-at", "1"]
    assert main(["seeds", "copy", *TINY, *flags, "--count", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| seed | validation loss | validation accuracy | test loss | test accuracy |" in printed
    assert "test accuracy" in dict(json.loads((out / "seed-0" / "final.json").read_text())["metrics"])
