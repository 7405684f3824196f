"""Tests of rnnlab.complexity and rnnlab.data.synthetic (the instruments: test_instruments.py; gradient flow:
test_gradient_flow.py).

The measured exponents come from one small sweep shared by the tests (module fixture): memory and
FLOP counts are exact on any machine, so only wall time (never asserted) is noisy."""

import json

import pytest
import torch

from rnnlab import VanillaCell
from rnnlab.cli import main
from rnnlab.complexity import (
    ComplexityConfig,
    expected_flops,
    measure,
    plot_results,
    serial_steps,
    sweep_from_text,
)
from rnnlab.data.synthetic import adding_batch, copy_memory_batch

SWEEP = (16, 32, 64, 128)


@pytest.fixture(scope="module")
def sweep():
    # B=8 so that the per-step memory outweighs the constant part (gradients of the weights) already
    # at small T; the profiler's cost is per op, not per byte.
    config = ComplexityConfig(hidden=16, input=8, batch=8, T=SWEEP, window=4, repeats=1,
                              regimes=("inference", "bptt", "checkpointed", "teacher_forced", "truncated"))
    return {r.name: r for r in measure(config).regimes}


# --- the slope fitter --------------------------------------------------------------------------

# --- the lecture's table, measured -------------------------------------------------------------

def test_inference_memory_is_constant(sweep):
    e = sweep["inference"].exponents
    assert e["saved_bytes"] < 0.2 and e["peak_bytes"] < 0.2
    assert all(p.saved_bytes == 0 for p in sweep["inference"].points)  # no_grad: nothing is saved


def test_bptt_memory_is_linear(sweep):
    e = sweep["bptt"].exponents
    assert 0.8 < e["saved_bytes"] < 1.2
    assert 0.8 < e["peak_bytes"] < 1.2


def test_checkpointed_memory_grows_as_sqrt_t(sweep):
    assert 0.3 < sweep["checkpointed"].exponents["saved_bytes"] < 0.7


def test_truncated_memory_is_bounded_by_the_window(sweep):
    assert sweep["truncated"].exponents["saved_bytes"] < 0.2


def test_teacher_forced_serial_steps_are_constant(sweep):
    points = sweep["teacher_forced"].points
    assert len({p.serial_steps for p in points}) == 1
    assert points[0].serial_steps == 2 * 3  # one parallel forward and backward of a 3-op chain
    assert sweep["teacher_forced"].exponents["serial_steps"] == 0.0
    assert 0.9 < sweep["bptt"].exponents["serial_steps"] < 1.1


def test_compute_is_linear_and_matches_flops_per_step(sweep):
    # The prediction from flops_per_step is exact (see FLOPS_CONVENTION): tolerance 0.1 %.
    for regime in sweep.values():
        assert 0.95 < regime.exponents["flops"] < 1.05, regime.name
        for p in regime.points:
            assert p.flops == pytest.approx(p.flops_expected, rel=1e-3), (regime.name, p.steps)
            # and the rough rule (x1 forward, x3 training) holds within the input gradients it ignores
            assert 0.6 <= p.flops / p.flops_rule <= 1.0, (regime.name, p.steps)


def test_expected_flops_by_hand():
    cell = VanillaCell(3, 5)  # F = 2 * 5 * (3 + 5) = 80 per sequence per step
    assert cell.flops_per_step(1) == 80
    assert expected_flops("inference", cell, 1, 10, 4) == 800
    # forward 800 + weight grads 800 + V s input grads 2*5*5 at steps 2..10
    assert expected_flops("bptt", cell, 1, 10, 4) == 800 + 800 + 50 * 9
    assert expected_flops("truncated", cell, 1, 10, 4) == 800 + 800 + 50 * (10 - 3)
    assert expected_flops("checkpointed", cell, 1, 10, 4) == 3 * 800 + 50 * 10


# --- serial steps ------------------------------------------------------------------------------

def test_serial_steps_by_regime():
    assert serial_steps("inference", 100, 3) == 300
    assert serial_steps("bptt", 100, 3) == 600
    assert serial_steps("teacher_forced", 100, 3) == serial_steps("teacher_forced", 10_000, 3) == 6
    assert serial_steps("scan", 1024, 3) < serial_steps("scan", 2048, 3) < serial_steps("bptt", 2048, 3) / 30
    # the doubling scan: 12 levels at T = 4096, 2 ops each, forward and backward
    assert serial_steps("scan", 4096, 3) == 2 * (3 + 2 * 12)
    assert serial_steps("scan", 4097, 3) == 2 * (3 + 2 * 13) and serial_steps("scan", 1, 3) == 2 * 3
    with pytest.raises(ValueError, match="regime"):
        serial_steps("magic", 10, 3)


# --- the accounting ----------------------------------------------------------------------------

def test_sweep_from_text():
    assert sweep_from_text("16..128") == (16, 32, 64, 128)
    assert sweep_from_text("8,24,100") == (8, 24, 100)
    with pytest.raises(ValueError, match="T must be FIRST..LAST"):
        sweep_from_text("16..x")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ComplexityConfig: T must be at least two increasing"):
        ComplexityConfig(T=(64,))
    with pytest.raises(ValueError, match="ComplexityConfig: cell must be one of"):
        ComplexityConfig(cell="transformer")
    with pytest.raises(ValueError, match="ComplexityConfig: hidden must be an int >= 1; got 0"):
        ComplexityConfig(hidden=0)


@pytest.mark.parametrize("argv, flag", [(["complexity", "--T", "64"], "--T"),
                                        (["complexity", "--hidden", "0"], "--hidden"),
                                        (["complexity", "--T", "16..x"], "--T"),
                                        (["gradients", "--cells", "feedback"], "--cells"),
                                        (["gradients", "--lr", "-1"], "--lr"),
                                        (["ladder", "adding", "--steps", "0"], "--steps")])
def test_cli_flag_errors_are_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rnnlab {argv[0]}: error:") and flag in err[0]


# --- synthetic data ----------------------------------------------------------------------------

def test_adding_batch():
    xs, targets = adding_batch(64, 20, torch.Generator().manual_seed(1))
    assert xs.shape == (64, 20, 2) and targets.shape == (64, 1)
    markers = xs[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert torch.equal(markers[:, :10].sum(1), torch.ones(64))  # one marker in each half
    assert torch.allclose((xs[..., 0] * markers).sum(1, keepdim=True), targets)
    again, _ = adding_batch(64, 20, torch.Generator().manual_seed(1))
    assert torch.equal(xs, again)
    with pytest.raises(ValueError, match="adding_batch: steps"):
        adding_batch(4, 1)


def test_copy_memory_batch():
    xs, targets = copy_memory_batch(5, 30, torch.Generator().manual_seed(0))
    assert xs.shape == targets.shape == (5, 50) and xs.dtype == torch.long
    assert torch.equal(targets[:, -10:], xs[:, :10])
    assert bool(((xs[:, :10] >= 1) & (xs[:, :10] <= 8)).all())
    assert bool((xs[:, 39] == 9).all())  # the marker, one step before the copy starts
    assert int((targets[:, :40] != 0).sum()) == 0 and int((xs[:, 40:] != 0).sum()) == 0


# --- gradient flow -----------------------------------------------------------------------------

# --- the commands ------------------------------------------------------------------------------

def test_cli_complexity_writes_json_and_plots(tmp_path, capsys):
    path = tmp_path / "c.json"
    assert main(["complexity", "--T", "4,8", "--hidden", "4", "--input", "2", "--batch", "1", "--repeats", "1",
                 "--json", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "Training, BPTT" in out and "parallel scan" in out
    data = json.loads(path.read_text())
    assert {r["name"] for r in data["regimes"]} >= {"inference", "bptt", "teacher_forced", "checkpointed"}
    assert len(list((tmp_path / "run").glob("*.png"))) == 5



def test_a_quantity_zero_for_every_regime_plots_without_a_warning(tmp_path):
    """--regimes inference: no bytes are saved for a backward pass, so that plot has nothing to draw;
    matplotlib's 'No artists with labels found to put in legend' reached the user as a warning."""
    import warnings

    result = measure(ComplexityConfig(hidden=4, input=2, batch=2, T=(2, 4), window=2, repeats=1,
                                      regimes=("inference",)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = plot_results(result, tmp_path)
    assert len(written) == 5 and all(path.stat().st_size > 1000 for path in written)
