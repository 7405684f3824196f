"""The adding and copy tasks: their baselines against the data, tiny runs through the CLI, exact
resume of the on-the-fly data, clear errors."""

import math

import pytest
import torch

from rnnlab.cli import main
from rnnlab.data.seeded import SeededBatches
from rnnlab.data.synthetic import copy_memory_batch
from rnnlab.tasks.memory import AddingConfig, AddingTask, CopyConfig, CopyTask, copy_baseline
from rnnlab.training import TrainConfig, Trainer

from resume_check import assert_resume_matches


def test_adding_baseline_is_always_predicting_one():
    task = AddingTask(AddingConfig(T=20, eval_size=4000))
    assert task.baseline == pytest.approx(1 / 6)
    mse = float((task.eval_targets - 1).square().mean())
    assert mse == pytest.approx(1 / 6, abs=0.01)
    assert task.evaluate(task.model)["baseline"] == pytest.approx(0.1667, abs=1e-4)


def test_copy_baseline_is_the_memoryless_strategy():
    assert copy_baseline(50) == pytest.approx(10 * math.log(8) / 70)
    T = 30
    xs, targets = copy_memory_batch(50, T, torch.Generator().manual_seed(0))
    # memoryless: a certain blank before the last 10 steps, a uniform guess among 8 symbols after
    logits = torch.full((50, T + 20, 9), -1e4)
    logits[:, :-10, 0] = 0.0
    logits[:, -10:, 1:] = 0.0
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), targets.reshape(-1))
    assert float(loss) == pytest.approx(copy_baseline(T), rel=1e-5)
    assert CopyTask(CopyConfig(T=T, eval_size=8)).baseline == copy_baseline(T)


def test_seeded_batches_resume_exactly():
    make = lambda g: torch.rand(3, generator=g)
    a = SeededBatches(make, seed=7)
    next(a)
    state = a.state_dict()
    rest = [next(a) for _ in range(3)]
    b = SeededBatches(make, seed=7)
    b.load_state_dict(state)
    assert all(torch.equal(x, next(b)) for x in rest) and b.served == 4
    with pytest.raises(ValueError, match="SeededBatches: seed must be an int >= 0"):
        SeededBatches(make, seed=-1)


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_tiny_run_through_the_cli(task, tmp_path, capsys):
    run = tmp_path / task
    flags = ["--T", "6", "--hidden", "8", "--batch-size", "4", "--eval-size", "16", "--steps", "4",
             "--eval-every", "2", "--threads", "1", "--out", str(run)]
    assert main(["train", task, *flags]) == 0
    out = capsys.readouterr().out
    assert ("MSE" in out and "held-out sequences" in out) if task == "adding" else ("memoryless baseline" in out)
    assert (run / "best.safetensors").is_file()


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    """Both tasks draw their data from SeededBatches; the copy task's resume is the same mechanism."""

    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = AddingTask(AddingConfig(T=8, hidden=6, eval_size=8, batch_size=4))
        train = TrainConfig(steps=steps, eval_every=2, checkpoint_every=2, lr=1e-2, lr_schedule="constant")
        return task, Trainer(task.model, task.batches(3), task.loss, train, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_clear_errors():
    with pytest.raises(ValueError, match="AddingConfig: T must be an int >= 2; got 1"):
        AddingConfig(T=1)
    with pytest.raises(ValueError, match="CopyConfig: cell must be one of"):
        CopyConfig(cell="feedback")
    with pytest.raises(ValueError, match="AddingConfig: hidden must be an int >= 1"):
        AddingConfig(hidden=0)


def test_copy_curriculum_grows_the_delay_from_1_to_T_and_resumes_exactly():
    task = CopyTask(CopyConfig(T=9, curriculum=4, batch_size=2, eval_size=8, mix=0))  # the naive curriculum
    batches = task.batches(0)
    assert [next(batches).inputs.shape[1] - 20 for _ in range(7)] == [1, 3, 5, 7, 9, 9, 9]
    resumed = task.batches(0)
    resumed.load_state_dict(task.batches(0).state_dict())
    first = task.batches(0)
    next(first)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(first).inputs, next(resumed).inputs) for _ in range(5))
    plain, seeded = CopyTask(CopyConfig(T=9, curriculum=0, mix=0, batch_size=2, eval_size=8)).batches(5), SeededBatches(
        lambda g: copy_memory_batch(2, 9, g), seed=5)
    assert torch.equal(next(plain).inputs, next(seeded)[0])  # no curriculum: the batches of before
    with pytest.raises(ValueError, match="CopyConfig: curriculum must be an int >= 0; got -1"):
        CopyConfig(curriculum=-1)


def test_copy_mixed_curriculum_draws_delays_up_to_the_longest_and_resumes_exactly():
    config = CopyConfig(T=9, curriculum=4, batch_size=2, eval_size=8, mix=0.5)
    batches = CopyTask(config).batches(0)
    delays = [next(batches).inputs.shape[1] - 20 for _ in range(60)]
    longest = [1, 3, 5, 7] + [9] * 56
    assert all(1 <= d <= m for d, m in zip(delays, longest))
    assert delays.count(9) >= 10 and 3 <= len(set(delays[4:])) and delays != longest  # mixed, not only T
    first, resumed = CopyTask(config).batches(0), CopyTask(config).batches(0)
    [next(first) for _ in range(3)]
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(first).inputs, next(resumed).inputs) for _ in range(10))
    with pytest.raises(ValueError, match=r"CopyConfig: mix must be a number in \[0, 1\]; got 1.5"):
        CopyConfig(mix=1.5)


def test_copy_chrono_init_spreads_the_forget_biases_over_the_sequence():
    torch.manual_seed(0)
    task = CopyTask(CopyConfig(T=30, hidden=64, eval_size=8, chrono=True))
    cell = next(m for m in task.model.modules() if getattr(m, "gates", None) == ("i", "f", "r", "o"))
    H = 64
    bias = cell.bias_ih.detach()
    forget, inputs = bias[H:2 * H], bias[:H]
    assert float(forget.min()) >= 0 and float(forget.max()) <= math.log(49) + 1e-6 and float(forget.std()) > 0.3
    assert torch.equal(inputs, -forget) and not cell.bias_hh[:2 * H].any()
    assert torch.equal(bias[2 * H:], torch.zeros(2 * H))  # the other gates keep Keras's zeros
    torch.manual_seed(0)
    plain = CopyTask(CopyConfig(T=30, hidden=64, eval_size=8, chrono=False))
    assert float(next(m for m in plain.model.modules() if hasattr(m, "gates")).bias_ih[H:2 * H].detach().mean()) == 1.0
    gru = CopyTask(CopyConfig(T=30, hidden=8, eval_size=8, chrono=True, cell="gru"))
    cell = next(m for m in gru.model.modules() if hasattr(m, "gates"))
    update = cell.bias_ih.detach()[8:16]  # gate order r, z, n: the update gate z keeps the state
    assert gru.chrono and float(update.min()) >= 0 and float(update.std()) > 0 and not cell.bias_hh[8:16].any()
    vanilla = CopyTask(CopyConfig(T=30, hidden=8, eval_size=8, chrono=True, cell="vanilla"))
    assert not vanilla.chrono and "chrono" not in vanilla.describe() and "chrono" in task.describe()


def test_copy_defaults_are_the_reliable_setting():
    """docs/RESULTS.md, "copy, reliably (issue 10)": H = 128, the chrono initialisation and a mixed
    curriculum over 2,000 steps, lr 5e-3 over at most 15,000 steps, stopping at 99.5%."""
    config, train = CopyConfig(), CopyTask.train_defaults
    assert (config.T, config.hidden, config.curriculum, config.mix, config.chrono, config.stop_at) == (
        50, 128, 2000, 0.5, True, 0.995)
    assert (train.steps, train.lr, train.eval_every, train.clip_norm) == (15000, 5e-3, 500, 1.0)


def test_copy_final_metrics_include_the_fresh_test_sequences():
    task = CopyTask(CopyConfig(T=3, hidden=4, eval_size=8))
    metrics = task.final_metrics(task.model)
    assert list(metrics) == ["validation loss", "validation accuracy", "test loss", "test accuracy"]
    assert 0 <= metrics["test accuracy"] <= 1 and metrics["test loss"] > 0 and task.model.training


def test_copy_stops_once_the_held_out_symbols_are_copied(tmp_path, capsys):
    task = CopyTask(CopyConfig(T=4, eval_size=8, stop_at=0.99))
    assert task.solved({"loss": 0.1, "accuracy": 0.99}) and not task.solved({"loss": 0.1, "accuracy": 0.98})
    assert not CopyTask(CopyConfig(T=4, eval_size=8, stop_at=None)).solved({"loss": 0.0, "accuracy": 1.0})
    with pytest.raises(ValueError, match=r"CopyConfig: stop_at must be None or a number in \(0, 1\]; got 1.5"):
        CopyConfig(stop_at=1.5)
    # a goal met at the first evaluation (1/8 of the symbols: chance) stops the run there
    run = tmp_path / "copy"
    flags = ["--T", "3", "--hidden", "8", "--batch-size", "4", "--eval-size", "16", "--steps", "50",
             "--eval-every", "2", "--stop-at", "0.01", "--curriculum", "0", "--out", str(run)]
    assert main(["train", "copy", *flags]) == 0
    out = capsys.readouterr().out
    assert "stopped (solved) at step 2" in out and "16 fresh test sequences" in out


def test_the_adding_report_says_higher_when_the_model_is_worse_than_the_baseline(monkeypatch):
    """An MSE of 0.2277 against the baseline's 0.167 read "0.7x lower"."""
    task = AddingTask(AddingConfig(T=4, eval_size=2, hidden=2))
    for mse, words in ((0.2277, "0.2277 on 2 held-out sequences (baseline: always 1, MSE 0.167; 1.4x higher: worse "
                                "than the baseline)"), (0.0167, "(baseline: always 1, MSE 0.167; 10.0x lower)")):
        monkeypatch.setattr(task, "evaluate", lambda model, full=False, mse=mse: {"loss": mse})
        (line,) = task.report(task.model, None)
        assert words in line, line
