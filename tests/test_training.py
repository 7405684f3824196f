"""Trainer: repeatable and resumable runs, atomic checkpoints and their errors, truncated BPTT,
scheduled sampling, constraints and regularisers, budgets, early stopping, Ctrl-C."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from rnnlab import L1L2, Constraints, LSTMCell, MaxNorm, Regularizers, Stacked
from rnnlab.checkpoints import CheckpointError, RunDir
from rnnlab.data import Batch
from rnnlab.tasks import LanguageConfig, LanguageTask, run_config
from rnnlab.training import TrainConfig, Trainer, seed_everything

from play_text import write_play


def tiny_task(text_file, seed=0, **options):
    seed_everything(seed)
    config = dict(text=str(text_file), hidden=16, embedding=8, batch_size=4, seq_len=12, eval_tokens=200)
    return LanguageTask(LanguageConfig(**{**config, **options}))


def trainer_for(task, run_dir=None, on_event=None, **options):
    config = quick(**{"steps": 20, "eval_every": 5, "checkpoint_every": 7, "log_every": 2, **options})
    return Trainer(task.model, task.batches(config.seed), task.loss, config, evaluate=task.evaluate,
                   run_dir=run_dir, run_config=run_config(task), on_event=on_event)


def quick(**options):
    """A TrainConfig on one thread: tiny models only lose from more (and the cores may be busy)."""
    return TrainConfig(threads=1, **options)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- repeatability and resume ---------------------------------------------------------------

RESUME_CASES = {
    "lstm, dropout, stateful": dict(cell="lstm", layers=2, dropout=0.2),
    "gru, feedback, scheduled sampling": dict(cell="gru", feedback=True),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, case):
    text = write_play(tmp_path / "play.txt")
    options = RESUME_CASES[case]
    schedule = dict(teacher_forcing=1.0, teacher_forcing_end=0.5) if options.get("feedback") else {}

    whole = trainer_for(tiny_task(text, **options), tmp_path / "whole", **schedule)
    assert whole.fit().step == 20

    def stop_halfway(event):
        if event["kind"] == "step" and event["step"] == 10:
            first.request_stop()

    first = trainer_for(tiny_task(text, **options), tmp_path / "split", on_event=stop_halfway, **schedule)
    result = first.fit()
    assert (result.step, result.stopped) == (10, "interrupted")
    torch.manual_seed(123)  # a new process: whatever the RNG did since must not matter
    second = trainer_for(tiny_task(text, **options), tmp_path / "split", **schedule)
    assert second.resume() == 10
    assert second.fit().step == 20
    assert_same_weights(weights(whole.model), weights(second.model))
    # the metrics log of the resumed run is the uninterrupted one's
    timing = ("tokens_per_s", "elapsed_s", "cpu_s")
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]
    assert strip(RunDir(tmp_path / "split").read_metrics()) == strip(RunDir(tmp_path / "whole").read_metrics())


def test_same_seed_same_weights_and_another_seed_differs(tmp_path):
    text = write_play(tmp_path / "play.txt")
    runs = []
    for seed in (0, 0, 1):
        task = tiny_task(text, seed)
        trainer_for(task, steps=6, seed=seed).fit()
        runs.append(weights(task.model))
    assert_same_weights(runs[0], runs[1])
    assert not torch.equal(runs[0]["readout.1.weight"], runs[2]["readout.1.weight"])


def test_run_directory_holds_config_checkpoint_metrics_and_plot(tmp_path):
    task = tiny_task(write_play(tmp_path / "play.txt"))
    run = tmp_path / "run"
    result = trainer_for(task, run).fit()
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "checkpoint.json", "model-0000020.safetensors", "trainer-0000020.pt",
            "best.safetensors", "metrics.jsonl", "loss.png"} <= names
    assert ".rnnlab.lock" in names and "rnnlab-run.json" in names  # the run's lock file and marker
    # old and temp files gone
    assert not any(n.startswith(".") and n != ".rnnlab.lock" or n.startswith("model-0000014") for n in names)
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "language" and config["train"]["steps"] == 20 and config["task_config"]["hidden"] == 16
    records = RunDir(run).read_metrics()
    assert [r["step"] for r in records if r["kind"] == "eval"] == [5, 10, 15, 20]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in records if r["kind"] == "train")
    assert result.last_eval["bits"] == pytest.approx(result.last_eval["loss"] / math.log(2))
    with pytest.raises(ValueError, match="already holds a run"):
        trainer_for(tiny_task(tmp_path / "play.txt"), run).fit()


# --- checkpoints: atomic, verified, matched --------------------------------------------------


def test_a_crash_while_saving_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save(5, {"w": torch.ones(3)}, {"step": 5})
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith("checkpoint.json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr("rnnlab.checkpoints.os.replace", crash_on_manifest)
    with pytest.raises(OSError):
        run.save(10, {"w": torch.zeros(3)}, {"step": 10})
    monkeypatch.undo()
    step, w, state = run.load()
    assert step == 5 and torch.equal(w["w"], torch.ones(3)) and state == {"step": 5}


@pytest.mark.parametrize("damage, message", [
    ("weights", r"model-0000020\.safetensors is corrupt"),
    ("trainer", r"trainer-0000020\.pt is corrupt"),
    ("manifest", r"checkpoint\.json is corrupt"),
    ("missing", r"model-0000020\.safetensors is missing"),
])
def test_a_damaged_checkpoint_names_the_file(tmp_path, damage, message):
    task = tiny_task(write_play(tmp_path / "play.txt"))
    run = tmp_path / "run"
    trainer_for(task, run).fit()
    target = {"weights": run / "model-0000020.safetensors", "trainer": run / "trainer-0000020.pt",
              "manifest": run / "checkpoint.json", "missing": run / "model-0000020.safetensors"}[damage]
    if damage == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data[: len(data) - 7]))
    with pytest.raises(CheckpointError, match=message):
        trainer_for(tiny_task(tmp_path / "play.txt"), run).resume()


def test_a_checkpoint_of_another_model_names_file_and_mismatch(tmp_path):
    text = write_play(tmp_path / "play.txt")
    trainer_for(tiny_task(text), tmp_path / "run", steps=3).fit()
    with pytest.raises(CheckpointError, match=r"model-0000003\.safetensors does not match the model.*\(64, 16\) in "
                                              r"the file but \(128, 32\) in the model"):
        trainer_for(tiny_task(text, hidden=32), tmp_path / "run").resume()


# --- what each step does ---------------------------------------------------------------------


class Stream:
    """Batches of a regression task: `continues` as given, inputs (B, T, 1)."""

    def __init__(self, continues=(False, True, True), steps=12):
        self.continues, self.steps, self.served = continues, steps, 0
        self.generator = torch.Generator().manual_seed(0)

    def __next__(self):
        xs = torch.randn(2, self.steps, 1, generator=self.generator)
        batch = Batch(xs, xs.cumsum(1), continues=self.continues[self.served % len(self.continues)])
        self.served += 1
        return batch

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]


class Regression(nn.Module):
    def __init__(self, **cell_options):
        super().__init__()
        self.core = Stacked.of(LSTMCell, 1, 8, **cell_options)
        self.readout = nn.Linear(8, 1)


def spying_loss(calls):
    def loss_fn(model, batch, state, teacher_forcing):
        calls.append({"state": state, "steps": batch.steps, "continues": batch.continues,
                      "teacher_forcing": teacher_forcing})
        ys, state = model.core(batch.inputs, state)
        return ((model.readout(ys) - batch.targets) ** 2).mean(), state, batch.targets.numel()
    return loss_fn


def test_state_carries_detached_across_continuing_batches_and_resets_otherwise():
    calls = []
    model = Regression()
    trainer = Trainer(model, Stream(), spying_loss(calls), quick(steps=4))
    trainer.fit()
    assert calls[0]["state"] is None and calls[3]["state"] is None  # batches 0 and 3 start afresh
    carried = calls[1]["state"]
    assert carried is not None and not any(s.requires_grad for layer in carried for s in layer)
    assert calls[2]["state"] is not None


def test_truncate_every_cuts_a_batch_into_windows_with_state_carried():
    calls = []
    trainer = Trainer(Regression(), Stream(continues=(False,), steps=10), spying_loss(calls),
                      quick(steps=2, truncate_every=4))
    trainer.fit()
    assert [c["steps"] for c in calls] == [4, 4, 2, 4, 4, 2]  # one update per window
    assert [c["state"] is None for c in calls] == [True, False, False, True, False, False]
    assert trainer.step == 2


def test_scheduled_sampling_probability_follows_its_schedule():
    linear = quick(steps=11, teacher_forcing=1.0, teacher_forcing_end=0.0)
    assert [round(linear.teacher_forcing_at(s), 6) for s in (0, 5, 10, 50)] == [1.0, 0.5, 0.0, 0.0]
    for shape in ("exponential", "inverse_sigmoid"):
        config = TrainConfig(steps=11, teacher_forcing=1.0, teacher_forcing_end=0.1, teacher_forcing_schedule=shape)
        values = [config.teacher_forcing_at(s) for s in range(11)]
        assert values[0] == pytest.approx(1.0, abs=0.01) and values[-1] == pytest.approx(0.1, abs=0.01)
        assert all(a >= b for a, b in zip(values, values[1:]))
    assert TrainConfig(teacher_forcing=0.7).teacher_forcing_at(999) == 0.7
    calls = []
    Trainer(Regression(), Stream(), spying_loss(calls), linear).fit()
    assert [round(c["teacher_forcing"], 6) for c in calls] == [round(1 - s / 10, 6) for s in range(11)]


def test_learning_rate_warms_up_then_follows_the_schedule():
    cosine = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine.learning_rate(0) == pytest.approx(0.1) and cosine.learning_rate(9) == pytest.approx(1.0)
    assert cosine.learning_rate(60) == pytest.approx(0.55) and cosine.learning_rate(110) == pytest.approx(0.1)
    step = TrainConfig(lr=1.0, lr_schedule="step", lr_step_every=10, lr_gamma=0.5)
    assert [step.learning_rate(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    for optimizer in ("adam", "adamw", "sgd"):
        trainer = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=3, optimizer=optimizer))
        trainer.fit()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.config.learning_rate(2))


def test_constraints_hold_after_every_step_and_regularisers_enter_the_loss():
    model = Regression(constraints=Constraints(recurrent=MaxNorm(0.05)))
    norms = []
    Trainer(model, Stream(), spying_loss([]), quick(steps=3, lr=0.1),
            on_event=lambda e: norms.append(model.core.layers[0].cell.weight_hh.norm(dim=1).max().item())
            if e["kind"] == "step" else None).fit()
    assert max(norms) <= 0.05 + 1e-6

    def zero_loss(model, batch, state, teacher_forcing):
        return model.readout.weight.sum() * 0, None, 1

    penalised = Regression(regularizers=Regularizers(recurrent=L1L2(l2=10.0)))
    before = penalised.core.layers[0].cell.weight_hh.norm().item()
    config = quick(steps=5, optimizer="sgd", lr=0.01, momentum=0.0, clip_norm=None)
    Trainer(penalised, Stream(), zero_loss, config).fit()
    assert penalised.core.layers[0].cell.weight_hh.norm().item() < 0.5 * before


# --- stopping --------------------------------------------------------------------------------


def test_early_stopping_after_patience_evaluations_without_improvement():
    losses = iter([3.0, 2.0, 2.5, 2.4, 2.2, 1.0])
    trainer = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=100, eval_every=2, patience=3),
                      evaluate=lambda model: {"loss": next(losses)})
    result = trainer.fit()
    assert (result.stopped, result.step, result.best_eval_loss) == ("early_stopping", 10, 2.0)


def test_the_task_goal_stops_the_run_and_a_resume_stays_stopped(tmp_path):
    # solved at the 4th evaluation, though its loss is not the best
    evals = iter([{"loss": 0.5, "accuracy": 0.5}, {"loss": 0.1, "accuracy": 0.9}, {"loss": 0.2, "accuracy": 0.8},
                  {"loss": 0.3, "accuracy": 0.99}, {"loss": 0.0, "accuracy": 1.0}])
    evaluate = lambda model: next(evals)
    solved = lambda metrics: metrics["accuracy"] >= 0.95
    trainer = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=100, eval_every=2), evaluate=evaluate,
                      solved=solved, run_dir=tmp_path / "run")
    result = trainer.fit()
    assert (result.stopped, result.step, result.last_eval["accuracy"]) == ("solved", 8, 0.99)
    again = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=100, eval_every=2), evaluate=evaluate,
                    solved=solved, run_dir=tmp_path / "run")
    assert again.resume() == 8
    assert (again.fit().stopped, again.step) == ("solved", 8)
    unsolved = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=6, eval_every=2),
                       evaluate=lambda model: {"loss": 1.0, "accuracy": 0.5}, solved=solved).fit()
    assert (unsolved.stopped, unsolved.step) == ("steps", 6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_loss_that_is_not_finite_stops_the_run_on_the_last_finite_weights(tmp_path, bad):
    """A NaN or inf loss would make every weight NaN: the run stops before that step's backward
    ('diverged'), its weights the last step's, checkpointed and evaluated; the best weights kept."""
    def diverging(calls):
        regression = spying_loss(calls)

        def loss_fn(model, batch, state, teacher_forcing):
            loss, state, n = regression(model, batch, state, teacher_forcing)
            return (loss * bad if len(calls) == 5 else loss), state, n
        return loss_fn

    torch.manual_seed(0)
    model = Regression()
    trainer = Trainer(model, Stream(), diverging([]), quick(steps=10, eval_every=2, lr_schedule="constant"),
                      evaluate=lambda model: {"loss": 1.0}, run_dir=tmp_path / "run")
    result = trainer.fit()
    assert (result.stopped, result.step) == ("diverged", 4)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    torch.manual_seed(0)
    four_steps = Regression()
    Trainer(four_steps, Stream(), spying_loss([]), quick(steps=4, lr_schedule="constant")).fit()
    assert_same_weights(weights(model), weights(four_steps))  # the fifth step was not taken
    assert RunDir(tmp_path / "run").load()[0] == 4 and result.last_eval == {"loss": 1.0}


def test_time_budget_stops_the_run():
    result = Trainer(Regression(), Stream(), spying_loss([]), quick(steps=10**6, max_minutes=0.02)).fit()
    assert result.stopped == "time" and 0 < result.step < 10**6


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path, number):
    """SIGTERM (`timeout`, `kill`, a scheduler ending the job) used to kill the run, losing the steps since
    its last checkpoint; now it stops as Ctrl-C does."""
    before = signal.getsignal(number)

    def signal_at_step_3(event):
        if event["kind"] == "step" and event["step"] == 3:
            os.kill(os.getpid(), number)

    task = tiny_task(write_play(tmp_path / "play.txt"))
    result = trainer_for(task, tmp_path / "run", on_event=signal_at_step_3).fit()
    assert (result.stopped, result.step) == ("interrupted", 3)
    assert RunDir(tmp_path / "run").load()[0] == 3
    assert signal.getsignal(number) is before  # the handler is put back


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"TrainConfig: optimizer must be one of .*; got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"TrainConfig: teacher_forcing must be a number in \[0, 1\]; got 2"):
        TrainConfig(teacher_forcing=2)
    with pytest.raises(TypeError, match=r"TrainConfig: lr must be a number > 0; got '3e-3'"):
        TrainConfig(lr="3e-3")
    with pytest.raises(ValueError, match=r"LanguageConfig: cell must be a cell that reads its state"):
        LanguageConfig(cell="feedback")


def test_threads_apply_while_training_only():
    before = torch.get_num_threads()
    seen = []
    Trainer(Regression(), Stream(), spying_loss([]), TrainConfig(steps=2, threads=1),
            on_event=lambda e: seen.append(torch.get_num_threads())).fit()
    assert set(seen) == {1} and torch.get_num_threads() == before


# --- averaged weights (--ema-decay) -----------------------------------------------------------


def test_ema_is_the_normalised_moving_average_of_the_weights_and_what_is_evaluated_and_kept(tmp_path):
    decay, seen = 0.8, []
    task = tiny_task(write_play(tmp_path / "play.txt"))
    record = lambda event: seen.append(weights(task.model)) if event["kind"] == "step" else None
    trainer = trainer_for(task, tmp_path / "run", on_event=record, steps=6, eval_every=6, ema_decay=decay)
    trainer.fit()
    assert len(seen) == 6
    n = len(seen)
    averaged = trainer.averaged_state_dict()
    for key, value in averaged.items():
        if not value.is_floating_point():
            continue
        expected = sum((1 - decay) * decay ** (n - 1 - t) * w[key] for t, w in enumerate(seen)) / (1 - decay ** n)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert_same_weights(weights(task.model), seen[-1])  # the model keeps its own weights
    assert not torch.equal(averaged["readout.1.weight"], seen[-1]["readout.1.weight"])
    run = RunDir(tmp_path / "run")
    # one evaluation: its weights, the average, are the best
    assert_same_weights(run.load_weights(run.best_file), averaged)
    evaluated = [r["loss"] for r in run.read_metrics() if r["kind"] == "eval"]
    task.model.load_state_dict(averaged)
    task.model.eval()
    with torch.no_grad():
        assert evaluated == [pytest.approx(task.evaluate(task.model)["loss"])]


def test_ema_resumed_run_equals_an_uninterrupted_one(tmp_path):
    text = write_play(tmp_path / "play.txt")
    whole = trainer_for(tiny_task(text), tmp_path / "whole", ema_decay=0.9)
    whole.fit()

    def stop_halfway(event):
        if event["kind"] == "step" and event["step"] == 10:
            first.request_stop()

    first = trainer_for(tiny_task(text), tmp_path / "split", on_event=stop_halfway, ema_decay=0.9)
    assert first.fit().step == 10
    second = trainer_for(tiny_task(text), tmp_path / "split", ema_decay=0.9)
    assert second.resume() == 10
    second.fit()
    assert_same_weights(whole.averaged_state_dict(), second.averaged_state_dict())
    assert_same_weights(weights(whole.model), weights(second.model))
    losses = lambda run: [r["loss"] for r in RunDir(run).read_metrics() if r["kind"] == "eval"]
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    with pytest.raises(CheckpointError, match="ema_decay"):  # a run without the average cannot resume with one
        trainer_for(tiny_task(text), tmp_path / "whole", steps=30).resume()


def test_ema_decay_must_lie_between_0_and_1():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="ema_decay"):
            TrainConfig(ema_decay=bad)


# --- parameter groups (discriminative learning rates, layers frozen at first) -----------------


def test_parameter_groups_scale_the_learning_rate_and_freeze_a_group_for_its_first_steps():
    model = Regression()
    start = weights(model)
    groups = [{"params": model.core.parameters(), "lr_scale": 0.25, "frozen_steps": 2},
              {"params": model.readout.parameters()}]
    rates, moved = [], []

    def record(event):
        if event["kind"] == "step":
            rates.append([g["lr"] for g in trainer.optimizer.param_groups])
            moved.append(not torch.equal(model.core.layers[0].cell.weight_hh, start["core.layers.0.cell.weight_hh"]))

    trainer = Trainer(model, Stream(), spying_loss([]), quick(steps=4, lr=0.1, optimizer="adamw",
                                                              weight_decay=0.3), on_event=record,
                      parameter_groups=groups)
    trainer.fit()
    schedule = [trainer.config.learning_rate(s) for s in range(4)]
    assert [r[1] for r in rates] == pytest.approx(schedule)  # the readout: the schedule itself
    assert [r[0] for r in rates] == pytest.approx([0, 0, 0.25 * schedule[2], 0.25 * schedule[3]])
    assert moved == [False, False, True, True]  # frozen, weight decay included, for its first 2 steps
    assert not torch.equal(model.readout.weight, start["readout.weight"])


def test_parameter_groups_resumed_run_equals_an_uninterrupted_one(tmp_path):
    text = write_play(tmp_path / "play.txt")

    def trainer(run_dir, on_event=None):
        task = tiny_task(text)
        readout = list(task.model.readout.parameters())
        rest = [p for p in task.model.parameters() if all(p is not q for q in readout)]
        config = quick(steps=20, eval_every=5, checkpoint_every=7, log_every=2)
        return Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate, run_dir=run_dir,
                       run_config=run_config(task), on_event=on_event,
                       parameter_groups=[{"params": rest, "lr_scale": 0.5, "frozen_steps": 12}, {"params": readout}])

    whole = trainer(tmp_path / "whole")
    whole.fit()

    def stop_halfway(event):
        if event["kind"] == "step" and event["step"] == 10:
            first.request_stop()

    first = trainer(tmp_path / "split", stop_halfway)
    assert first.fit().step == 10
    second = trainer(tmp_path / "split")
    assert second.resume() == 10
    second.fit()
    assert_same_weights(weights(whole.model), weights(second.model))
    assert [g["lr_scale"] for g in second.optimizer.param_groups] == [0.5, 1.0]


def test_parameter_groups_must_cover_each_trainable_parameter_once():
    model = Regression()
    core, readout = list(model.core.parameters()), list(model.readout.parameters())
    config = quick(steps=1)
    with pytest.raises(ValueError, match="each trainable parameter of the model once; got 2 missing"):
        Trainer(model, Stream(), spying_loss([]), config, parameter_groups=[{"params": core}])
    with pytest.raises(ValueError, match="0 missing, 0 not the model's trainable parameters, 2 twice"):
        Trainer(model, Stream(), spying_loss([]), config,
                parameter_groups=[{"params": core + readout}, {"params": readout}])
    with pytest.raises(ValueError, match=r"parameter_groups\[1\]\['lr_scale'\] must be a number >= 0; got -1"):
        Trainer(model, Stream(), spying_loss([]), config,
                parameter_groups=[{"params": core}, {"params": readout, "lr_scale": -1}])
    with pytest.raises(ValueError, match=r"\['frozen_steps'\] must be an int >= 0; got 1.5"):
        Trainer(model, Stream(), spying_loss([]), config, parameter_groups=[{"params": core + readout,
                                                                             "frozen_steps": 1.5}])
    with pytest.raises(ValueError, match="must have 'params' and optionally"):
        Trainer(model, Stream(), spying_loss([]), config, parameter_groups=[{"params": core + readout, "lr": 1}])
    with pytest.raises(TypeError, match="parameter_groups must be a list of dicts; got dict"):
        Trainer(model, Stream(), spying_loss([]), config, parameter_groups={"params": core})


def _regression_parts():
    torch.manual_seed(0)
    model = nn.Sequential()  # any module: the loss function below does the work
    model.lstm = Stacked.of(LSTMCell, 3, 4, 1)

    def loss_fn(m, batch, state, teacher_forcing):
        ys, state = m.lstm(batch.inputs, state)
        return (ys - batch.targets).pow(2).mean(), state, batch.targets.numel()

    def batches(n):
        for _ in range(n):
            yield Batch(torch.randn(2, 5, 3), torch.randn(2, 5, 4))
    return model, loss_fn, batches


@pytest.mark.parametrize("case, error, message", [
    ("ends", ValueError, r"Trainer: batches ended after 2 batches of steps=5; a batch source must yield one batch "
                         r"per step"),
    ("tuples", TypeError, r"Trainer: batches must yield rnnlab.data.Batch; got tuple"),
    ("list", TypeError, r"Trainer: batches must be an iterator of rnnlab.data.Batch .*; got list"),
    ("loss pair", TypeError, r"Trainer: loss_fn must return \(loss: a scalar tensor, state, count\); got tuple of 2"),
    ("loss per element", TypeError, r"loss_fn must return \(loss: a scalar tensor, state, count\); got tuple of 3 "
                                    r"\[tensor \(2, 5, 4\)"),
    ("evaluate None", TypeError, r"Trainer: evaluate must return a dict with 'loss'; got NoneType"),
    ("run_dir", TypeError, r"Trainer: batches must have state_dict\(\) and load_state_dict\(\) to be checkpointed "
                           r"in run_dir .*; got generator"),
])
def test_a_batch_source_or_loss_function_of_the_wrong_kind_is_one_line_naming_it(case, error, message, tmp_path):
    """A source that ended escaped fit() as a bare StopIteration (a RuntimeError inside a generator);
    a tuple, a list, a loss pair or a loss per element failed deep inside, naming nothing; a source
    that cannot be checkpointed failed at the first checkpoint, after training."""
    model, loss_fn, batches = _regression_parts()
    source, evaluate, run_dir = batches(2), None, None
    if case == "tuples":
        source = iter([(torch.randn(2, 5, 3), torch.randn(2, 5, 4))] * 5)
    elif case == "list":
        source = list(batches(5))
    elif case == "loss pair":
        loss_fn = (lambda f: lambda *a: f(*a)[:2])(loss_fn)
    elif case == "loss per element":
        loss_fn = lambda m, batch, state, tf: ((m.lstm(batch.inputs)[0] - batch.targets).pow(2), None, 1)
    elif case == "evaluate None":
        evaluate = lambda m: None
    elif case == "run_dir":
        run_dir = tmp_path / "run"
    with pytest.raises(error, match=message) as caught:
        Trainer(model, source, loss_fn, quick(steps=5, eval_every=1), evaluate=evaluate, run_dir=run_dir).fit()
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    result = Trainer(model, batches(2), _regression_parts()[1], quick(steps=2, eval_every=100),
                     evaluate=lambda m: {"loss": 1.0}).fit()
    assert (result.step, result.stopped, result.last_eval) == (2, "steps", {"loss": 1.0})
