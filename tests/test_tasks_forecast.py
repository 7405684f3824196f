"""The forecast task: baselines and errors on known data, normalisation on the training part only,
free running, a tiny run through the CLI, exact resume, clear errors."""

import dataclasses

import pytest
import torch

from rnnlab.cli import main
from rnnlab.tasks.forecast import (
    ForecastConfig,
    ForecastTask,
    Normaliser,
    errors,
    forecast,
    naive_forecast,
    seasonal_naive_forecast,
)
from rnnlab.training import TrainConfig, Trainer

from resume_check import assert_resume_matches

TINY = dict(series="sunspots", hidden=4, window=12, batch_size=4)
TINY_FLAGS = ["--series", "sunspots", "--hidden", "4", "--window", "12", "--batch-size", "4", "--threads", "1"]


def test_baselines_and_errors_on_known_data():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert naive_forecast(history, 3).tolist() == [5.0, 5.0, 5.0]
    assert seasonal_naive_forecast(history, 5, season=2).tolist() == [4.0, 5.0, 4.0, 5.0, 4.0]
    assert seasonal_naive_forecast(history, 2, season=5).tolist() == [1.0, 2.0]
    e = errors(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 2.0, 3.0, 1.0]))
    assert e["mae"] == pytest.approx(1.0) and e["rmse"] == pytest.approx(10 ** 0.5 / 2)
    with pytest.raises(ValueError, match="history must hold a season"):
        seasonal_naive_forecast(history, 3, season=6)
    with pytest.raises(ValueError, match="prediction must have the shape"):
        errors(torch.zeros(3), torch.zeros(4))


def test_normaliser_round_trip_and_training_part_only():
    v = torch.tensor([10.0, 11.0, 13.0, 12.0, 15.0, 40.0])
    for transform in ("difference", "level"):
        norm = Normaliser.fit(v[:4], transform)
        z = norm.encode(v)
        assert len(z) == len(v) - norm.offset
        known = norm.offset + 2  # levels known before the decoded ones
        assert torch.allclose(norm.decode(z[2:], v[known - 1]), v[known:])
    assert Normaliser.fit(v[:4], "difference").mean == pytest.approx(2 / 3)
    task = ForecastTask(ForecastConfig(series="co2"))
    diffs = task.values[: task.n_train].diff()
    assert task.normaliser.mean == pytest.approx(float(diffs.mean()))  # the test tail plays no part
    assert task.n_train + task.n_val + task.n_test == len(task.values) == 2284
    assert task.inputs.shape == (len(task.z), 2)  # the calendar: (sin, cos) of the year


def test_forecast_runs_free_on_its_own_predictions():
    torch.manual_seed(0)
    task = ForecastTask(ForecastConfig(**TINY))
    n, horizon = task.n_train, 7
    first = task.predict(task.model, n, horizon)
    assert first.shape == (horizon,) and torch.isfinite(first).all()
    task.z[n:] = 1e3  # the truth after the history must not reach the forecast
    assert torch.equal(task.predict(task.model, n, horizon), first)
    # free running = the model stepped by hand, each output fed back
    z = task.z[:n]
    with torch.no_grad():
        _, state = task.model(task.inputs[None, :n], targets=z[None, :, None])
        y, manual = z[None, -1:], []
        for _ in range(3):
            out, state = task.model.core.step(task.inputs[None, 0, :0], state, y)
            y = task.model.readout(out)
            manual.append(float(y))
    assert forecast(task.model, z, task.inputs[: n + 3]).tolist() == pytest.approx(manual)


def test_tiny_run_prints_errors_next_to_baselines_and_plots(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "forecast", *TINY_FLAGS, "--steps", "4", "--eval-every", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "forecast sunspots" in out and "MAE" in out and "naive" in out and "seasonal naive (11)" in out
    assert (run / "forecast.png").stat().st_size > 1000
    assert main(["eval", str(run)]) == 0 and "seasonal naive" in capsys.readouterr().out


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = ForecastTask(ForecastConfig(**TINY))
        config = TrainConfig(steps=steps, eval_every=2, checkpoint_every=2, lr=1e-2, lr_schedule="constant",
                             teacher_forcing=0.5)  # constant: a cosine rate would depend on the total
        return task, Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_clear_errors():
    with pytest.raises(ValueError, match="ForecastConfig: series must be one of"):
        ForecastConfig(series="rainfall")
    with pytest.raises(ValueError, match="ForecastConfig: test_fraction must be a number in"):
        ForecastConfig(test_fraction=0.7)
    with pytest.raises(ValueError, match="ForecastTask: window must be shorter than the training part"):
        ForecastTask(dataclasses.replace(ForecastConfig(**TINY), window=400))
