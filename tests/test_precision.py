"""Mixed precision: every implementation and cell under torch.autocast (bf16 on CPU; fp16 and bf16 on
CUDA where there is one) agrees with its float32 result within bf16's tolerance, forward and
backward; `TrainConfig.precision` trains the language model in bf16 to float32's loss."""

import math

import pytest
import torch

import rnnlab as R
from rnnlab import kernels
from rnnlab.cells import LADDER
from rnnlab.tasks import LanguageConfig, LanguageTask
from rnnlab.training import TrainConfig, Trainer

from play_text import write_play

IMPLEMENTATIONS = ("auto", "reference", "fused", "native", "scan")
CASES = [(name, feedback, reads) for name in LADDER for feedback in (0, 3) for reads in (True, False)
         if name != "feedback" or (feedback and not reads)]


def close(low: torch.Tensor, full: torch.Tensor, tolerance: float = 0.03) -> bool:
    """Within bf16's tolerance: 8 bits of mantissa, a few roundings deep, relative to the scale."""
    low, full = low.detach().float(), full.detach()
    return float((low - full).abs().max()) <= tolerance * max(1.0, float(full.abs().max()))


def check_autocast(name, feedback, reads, device, dtype):
    torch.manual_seed(0)
    options = {} if name == "feedback" else {"reads_state": reads}
    cell = LADDER[name](8, 16, feedback, **options).to(device)
    tried = 0
    for implementation in IMPLEMENTATIONS:
        if implementation != "auto" and kernels.available(cell, implementation, feedback=bool(feedback), lengths=False,
                                                          masks=(None, None), training=True, device=device,
                                                          autocast=True) is not None:
            continue
        tried += 1
        cell.zero_grad(set_to_none=True)
        runner = R.Recurrent(cell, implementation)
        xs = torch.randn(4, 12, 8, device=device, requires_grad=True)
        y_prev = torch.randn(4, 12, feedback, device=device) if feedback else None
        full, _ = runner(xs, None, y_prev)
        full.square().mean().backward()
        grads = [xs.grad.clone()] + [p.grad.clone() for p in cell.parameters()]
        xs.grad = None
        cell.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            low, state = runner(xs, None, y_prev)
            loss = low.float().square().mean()
        loss.backward()
        assert torch.isfinite(low).all(), implementation
        # layer normalisation divides by the pre-activations' spread, which magnifies bf16's rounding of them
        scale = 2.0 if name == "layernorm-lstm" else 1.0
        assert close(low, full, 0.03 * scale), (implementation, float((low.float() - full).abs().max()))
        for g, p in zip(grads, [xs] + list(cell.parameters())):
            assert close(p.grad, g, 0.05 * scale), (implementation, float((p.grad - g).abs().max()),
                                                    float(g.abs().max()))
    assert tried >= 2


@pytest.mark.parametrize("name,feedback,reads", CASES,
                         ids=[f"{n}-fb{f}-{'reads' if r else 'linear'}" for n, f, r in CASES])
def test_every_implementation_under_bf16_autocast_agrees_with_float32(name, feedback, reads):
    check_autocast(name, feedback, reads, "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(LADDER))
def test_every_implementation_under_cuda_autocast_agrees_with_float32(name, dtype):
    for feedback in (0, 3):
        if name != "feedback" or feedback:
            check_autocast(name, feedback, name != "feedback", "cuda", dtype)


def test_auto_no_longer_fails_under_bf16_autocast_for_the_cells_of_the_issue():
    # the issue: GRU, vanilla and forget-gated cells failed with `auto` (fused on CPU) under autocast
    for cell in (R.GRUCell(5, 7), R.VanillaCell(5, 7), R.ForgetGatedCell(5, 7)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ys, _ = R.Stacked(R.Recurrent(cell), R.Recurrent(R.LSTMCell(7, 7)))(torch.randn(2, 6, 5))
        assert ys.shape == (2, 6, 7) and torch.isfinite(ys).all()


def test_native_lstm_under_cpu_autocast_runs_or_says_why():
    """torch's oneDNN LSTM has no bf16 on some CPUs (AVX2 without bf16 instructions): there `native`
    refuses with the reason, and `auto` runs the loop, instead of torch's opaque primitive error."""
    runner, xs = R.Recurrent(R.LSTMCell(5, 7), "native"), torch.randn(2, 6, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if kernels.cpu_autocast_lstm_runs(torch.bfloat16):
            assert runner(xs)[0].dtype == torch.bfloat16
        else:
            with pytest.raises(ValueError, match="torch's LSTM kernel has no bfloat16 for this CPU under autocast"):
                runner(xs)
        runner.implementation = "auto"
        assert torch.isfinite(runner(xs)[0]).all()


def train_loss(text, precision: str, steps: int = 30) -> tuple[float, float]:
    """(validation loss after `steps` steps, the uniform loss over the vocabulary)"""
    torch.manual_seed(0)
    task = LanguageTask(LanguageConfig(text=str(text), hidden=32, embedding=8, batch_size=8, seq_len=25,
                                       eval_tokens=2000))
    config = TrainConfig(steps=steps, lr=1e-2, eval_every=steps, checkpoint_every=steps, log_every=steps,
                         threads=1, precision=precision)
    result = Trainer(task.model, task.batches(0), task.loss, config, evaluate=task.evaluate).fit()
    return result.last_eval["loss"], math.log(len(task.vocabulary))


def test_language_model_trains_in_bf16_to_float32s_loss(tmp_path):
    text = write_play(tmp_path / "play.txt")
    full, uniform = train_loss(text, "32")
    low, _ = train_loss(text, "bf16")
    assert low < 0.9 * uniform  # it learned
    assert abs(low - full) <= 0.02 * full, (low, full)


def test_precision_must_be_known():
    with pytest.raises(ValueError, match=r"TrainConfig: precision must be one of \('32', 'bf16'\); got 'fp8'"):
        TrainConfig(precision="fp8")
