"""Time-series forecasting: sequence to sequence with output feedback, on weekly Mauna Loa CO2 or
yearly sunspots (the bundled statsmodels series, rnnlab.data.series).

The model is the lecture's general model with the series itself as the fed-back output:

    s^t = h(x^t, s^{t-1}, y^{t-1}),    y^t = f(s^t) = the prediction of z_t

where z is the normalised series and x^t what is known in advance about step t (for CO2 the
position in the calendar year as (sin, cos); sunspots have no calendar: their ~11-year cycle varies
from 9 to 14 years, so x is empty and the model is driven by feedback alone). Training feeds back
the true z_{t-1} (teacher forcing: all steps at once) or, with the Trainer's scheduled sampling,
sometimes its own prediction. Forecasting warms the state up on the known history under teacher
forcing, then runs free: each prediction is fed back as the next y^{t-1}, as many steps ahead as
asked.

Normalisation is fitted on the training part only. CO2 rises ~1.5 ppm a year, so its levels in the
test years lie outside anything seen in training; the default for CO2 models the weekly
*differences* instead (standardised), which are stationary: a trend is a mean difference, the
season a pattern in the differences, and the forecast is the last known level plus the running sum
of predicted differences. Sunspots have no trend and are modelled as standardised levels.

The series is cut in time: the last `test_fraction` is the held-out tail, the `val_fraction`
before it validation (forecast free running from the training part, for the choice of the best
weights), the rest training. The metric is MAE and RMSE on the tail, next to the naive forecast
(the last known value, repeated) and the seasonal-naive one (the last known season, repeated).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import LADDER
from ..config import MAX_LAYERS, knob, validate
from ..data.batches import Batch
from ..data.seeded import SeededBatches
from ..data.series import load_co2, load_sunspots
from ..init import Init
from ..models import RecurrentModel
from ..plots import pyplot, save_figure
from ..preprocessing import RawFeedback
from ..runners import IMPLEMENTATION_NAMES, Stacked
from ..training import TrainConfig
from .base import Task
from .cell_options import CellOptions

__all__ = ["Series", "SERIES", "ForecastConfig", "ForecastTask", "Normaliser", "naive_forecast",
           "seasonal_naive_forecast", "errors", "forecast"]


@dataclass(frozen=True)
class Series:
    """A bundled series and what is known about its calendar."""

    load: Callable[[], torch.Tensor]
    season: int  # steps per season, for the seasonal-naive baseline
    transform: str  # the default: "difference" or "level"
    window: int  # training window in steps: two seasons or more, so a window sees the pattern
    calendar: float | None  # steps per calendar year, for the (sin, cos) input; None: no input
    start: float  # the first step as a decimal year, and the step in years (for the plot)
    years_per_step: float
    unit: str
    step_name: str


SERIES = {
    "co2": Series(load_co2, 52, "difference", 104, 365.25 / 7, 1958 + 88 / 365.25, 7 / 365.25, "ppm", "week"),
    "sunspots": Series(load_sunspots, 11, "level", 40, None, 1700.0, 1.0, "sunspot number", "year"),
}
TRANSFORMS = ("auto", "difference", "level")


@dataclass(frozen=True)
class ForecastConfig(CellOptions):
    """Which series, how it is split and normalised, and the model."""

    series: str = knob("co2", "the series: weekly Mauna Loa CO2 or yearly sunspots", tuple(SERIES))
    transform: str = knob("auto", "what the model predicts: differences (trend removed) or levels; "
                                  "auto: differences for co2, levels for sunspots", TRANSFORMS)
    test_fraction: float = knob(0.1, "the held-out tail, forecast free running (fraction of the series)", above=0,
                                below=0.5)
    val_fraction: float = knob(0.1, "the validation part before the tail (fraction of the series)", above=0, below=0.5)
    cell: str = knob("lstm", "cell of the ladder", tuple(LADDER))
    hidden: int = knob(16, "state size H of each layer", low=1)
    layers: int = knob(1, "stacked layers", low=1, high=MAX_LAYERS)
    window: int | None = knob(None, "training window in steps (none: 104 weeks for co2, 40 years for sunspots)",
                              low=2)
    batch_size: int = knob(32, "windows per batch, at random places in the training part", low=1)
    implementation: str = knob("auto", "runner implementation", IMPLEMENTATION_NAMES)

    def __post_init__(self):
        validate(self)


# --- baselines and errors -----------------------------------------------------------------------


def naive_forecast(history: torch.Tensor, horizon: int) -> torch.Tensor:
    """The last known value, repeated `horizon` times."""
    return history[-1].expand(horizon).clone()


def seasonal_naive_forecast(history: torch.Tensor, horizon: int, season: int) -> torch.Tensor:
    """The last known season, repeated: the forecast of step N+k is the value at N+k-m*season for the
    smallest m >= 1 that lands in the history."""
    if len(history) < season:
        raise ValueError(f"seasonal_naive_forecast: history must hold a season ({season} values); got {len(history)}")
    last = history[-season:]
    return last[torch.arange(horizon) % season]


def errors(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean absolute error and root mean squared error."""
    if prediction.shape != truth.shape:
        raise ValueError(f"errors: prediction must have the shape of truth {tuple(truth.shape)}; "
                         f"got {tuple(prediction.shape)}")
    diff = (prediction - truth).double()
    return {"mae": float(diff.abs().mean()), "rmse": float(diff.square().mean().sqrt())}


# --- normalisation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normaliser:
    """Series levels v <-> the modelled sequence z, with statistics of the training part only.

    difference: z_i = (v_{i+1} - v_i - mean) / std of the training differences (one shorter than v)
    level:      z_i = (v_i - mean) / std of the training values
    """

    transform: str
    mean: float
    std: float

    @classmethod
    def fit(cls, train: torch.Tensor, transform: str) -> Normaliser:
        values = train.diff() if transform == "difference" else train
        return cls(transform, float(values.mean()), float(values.std()) or 1.0)

    @property
    def offset(self) -> int:
        """z_i stands for the level v_{i + offset}."""
        return 1 if self.transform == "difference" else 0

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        values = v.diff() if self.transform == "difference" else v
        return (values - self.mean) / self.std

    def decode(self, z: torch.Tensor, last_level: torch.Tensor) -> torch.Tensor:
        """Levels from predicted z that follow a known level (differences are summed from it)."""
        values = z * self.std + self.mean
        return last_level + values.cumsum(0) if self.transform == "difference" else values


# --- the model and the free-running forecast --------------------------------------------------


def build_model(config: ForecastConfig, input_size: int) -> RecurrentModel:
    """Cells of the ladder with one fed-back output (the raw value), a linear readout to it.

    Keras's initialisation (orthogonal recurrent weights, forget bias 1): the state then keeps
    what it read for longer from the start, which the season needs."""
    core = Stacked.of(LADDER[config.cell], input_size, config.hidden, config.layers, feedback_size=1,
                      implementation=config.implementation, options=config.cell_options(config.cell, Init.keras()))
    return RecurrentModel(core, nn.Linear(core.output_size, 1), feedback_map=RawFeedback(1))


@torch.no_grad()
def forecast(model: RecurrentModel, history: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Forecast len(inputs) - len(history) steps after `history` (N,) of z, free running.

    inputs (N + horizon, I) are the x^t of every step. The state is warmed up on the history with
    the true values fed back, then each prediction is fed back as the next y^{t-1}."""
    was_training = model.training
    model.eval()
    N = len(history)
    _, state = model(inputs[None, :N], targets=history[None, :, None])
    y_fed, predictions = history[None, -1:], []  # (1, 1): y^{N-1} is the last known value
    for x_t in inputs[N:]:
        out, state = model.core.step(x_t[None], state, y_fed)
        y_fed = model.readout(out)
        predictions.append(y_fed[0, 0])
    model.train(was_training)
    return torch.stack(predictions) if predictions else history.new_zeros(0)


def window_loss(model, batch: Batch, state, teacher_forcing: float):
    """MSE of the one-step-ahead predictions of a window (the Trainer's loss_fn). The first step of
    a window only starts the state (it has no y^{t-1}) and is not scored."""
    predictions, state = model(batch.inputs, targets=batch.targets, teacher_forcing=teacher_forcing)
    loss = F.mse_loss(predictions[:, 1:], batch.targets[:, 1:])
    return loss, state, batch.targets[:, 1:].numel()


class ForecastTask(Task):
    """The forecasting task: series, split, normalisation, model, windows, forecasts and metrics."""

    name = "forecast"
    description = "time series (CO2 or sunspots): teacher-forced training, free-running forecast vs naive baselines"
    Config = ForecastConfig
    # Sized on a shared 2-core CPU: about a minute for CO2 (docs/RESULTS.md).
    train_defaults = TrainConfig(steps=800, max_minutes=10.0, lr=3e-3, eval_every=50, checkpoint_every=200,
                                 log_every=10, clip_norm=1.0, threads=1)
    unit = "value"
    artifact_files = ()  # everything is rebuilt from the config and the bundled series

    def __init__(self, config: ForecastConfig):
        self.config = config
        self.series = SERIES[config.series]
        self.values = self.series.load().float()  # (N,) levels
        N = len(self.values)
        self.n_test = max(1, round(N * config.test_fraction))
        self.n_val = max(1, round(N * config.val_fraction))
        self.n_train = N - self.n_test - self.n_val
        transform = self.series.transform if config.transform == "auto" else config.transform
        self.normaliser = Normaliser.fit(self.values[: self.n_train], transform)
        self.z = self.normaliser.encode(self.values)  # (N - offset,)
        self.inputs = self._calendar(torch.arange(N, dtype=torch.float32)[self.normaliser.offset:])
        self.window = config.window or self.series.window
        # the training windows: z entries whose levels lie in the training part
        self.train_z = self.z[: self.n_train - self.normaliser.offset]
        if len(self.train_z) <= self.window:
            raise ValueError(f"ForecastTask: window must be shorter than the training part "
                             f"({len(self.train_z)} steps); got {self.window}")
        self.model = build_model(config, self.inputs.shape[1])

    def _calendar(self, t: torch.Tensor) -> torch.Tensor:
        """x^t: (sin, cos) of the position in the calendar year, or nothing; (len(t), I)."""
        if self.series.calendar is None:
            return t.new_zeros(len(t), 0)
        angle = 2 * math.pi * t / self.series.calendar
        return torch.stack([angle.sin(), angle.cos()], dim=-1)

    def batches(self, seed: int) -> SeededBatches:
        W, B = self.window, self.config.batch_size

        def make(generator: torch.Generator) -> Batch:
            starts = torch.randint(0, len(self.train_z) - W, (B,), generator=generator).tolist()
            # W + 1 values: step 0 starts the state, steps 1..W are scored
            targets = torch.stack([self.train_z[s:s + W + 1] for s in starts])[..., None]  # (B, W+1, 1)
            inputs = torch.stack([self.inputs[s:s + W + 1] for s in starts])  # (B, W+1, I)
            return Batch(inputs, targets)

        return SeededBatches(make, seed)

    loss = staticmethod(window_loss)

    def predict(self, model, n_history: int, horizon: int) -> torch.Tensor:
        """Levels of the `horizon` steps after the first n_history levels, free running."""
        device = next(model.parameters()).device
        k = n_history - self.normaliser.offset  # z entries known
        z = forecast(model, self.z[:k].to(device), self.inputs[: k + horizon].to(device)).cpu()
        return self.normaliser.decode(z, self.values[n_history - 1])

    def compare(self, model, n_history: int, horizon: int) -> dict[str, dict[str, float]]:
        """Errors of the model and of both baselines on the `horizon` steps after n_history."""
        history, truth = self.values[:n_history], self.values[n_history:n_history + horizon]
        return {"model": errors(self.predict(model, n_history, horizon), truth),
                "naive": errors(naive_forecast(history, horizon), truth),
                "seasonal_naive": errors(seasonal_naive_forecast(history, horizon, self.series.season), truth)}

    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """The validation part forecast free running from the training part. loss: the MSE over
        the training part's variance (1: as bad as predicting the training mean's spread);
        full=True: the held-out tail forecast from everything before it instead."""
        n_history = self.n_train + self.n_val if full else self.n_train
        horizon = self.n_test if full else self.n_val
        result = self.compare(model, n_history, horizon)
        scale = float(self.values[: self.n_train].var())
        return {"loss": result["model"]["rmse"] ** 2 / scale,
                **{f"{who}_{metric}": value for who, r in result.items() for metric, value in r.items()}}

    # --- what the CLI prints and saves ----------------------------------------------------------

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        s, c = self.series, self.config
        return (f"forecast {c.series}: {c.cell} x{c.layers}, hidden {c.hidden}, {params:,} parameters, "
                f"modelling {self.normaliser.transform}s; {self.n_train} training, {self.n_val} validation, "
                f"{self.n_test} test {s.step_name}s")

    def report(self, model, run_dir: str | Path) -> list[str]:
        """The held-out tail: errors next to the baselines, and forecast.png in the run directory."""
        n_history = self.n_train + self.n_val
        result = self.compare(model, n_history, self.n_test)
        s = self.series
        lines = [f"test: the last {self.n_test} {s.step_name}s forecast free running ({s.unit})",
                 f"  {'':20} {'MAE':>8} {'RMSE':>8}"]
        for who, label in (("model", "model"), ("naive", "naive"), ("seasonal_naive", f"seasonal naive ({s.season})")):
            lines.append(f"  {label:20} {result[who]['mae']:8.3f} {result[who]['rmse']:8.3f}")
        path = self.plot(model, Path(run_dir) / "forecast.png")
        lines.append(f"wrote {path}")
        return lines

    def plot(self, model, path: Path) -> Path:
        """History (the last three tails' worth), forecast and truth against the year."""
        plt = pyplot()

        n_history, s = self.n_train + self.n_val, self.series
        years = s.start + s.years_per_step * torch.arange(len(self.values))
        shown = max(0, n_history - 3 * self.n_test)
        figure, axes = plt.subplots(figsize=(9, 4))
        axes.plot(years[shown:n_history], self.values[shown:n_history], color="0.4", lw=1, label="history")
        axes.plot(years[n_history:], self.values[n_history:], color="black", lw=1, label="truth")
        axes.plot(years[n_history:], self.predict(model, n_history, self.n_test), color="tab:red", lw=1.5,
                  label=f"forecast ({self.config.cell}, free running)")
        axes.plot(years[n_history:], seasonal_naive_forecast(self.values[:n_history], self.n_test, s.season),
                  color="tab:blue", lw=1, ls=":", label="seasonal naive")
        axes.axvline(float(years[n_history]), color="0.7", ls="--", lw=1)
        axes.set_xlabel("year")
        axes.set_ylabel(s.unit)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return save_figure(figure, path)
