"""One process of tests/test_distributed.py: tiny trainings under torchrun's environment (RANK,
WORLD_SIZE, ... set by the test), or in the test's own process as the single-process reference.

    python tests/distributed_worker.py OUT_DIR TEXT_FILE

writes OUT_DIR/rank<r>.pt: the flattened parameters after every step of each scenario, the seed of
each rank's training stream, and the final weights of the resume check.
"""

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from rnnlab import distributed
from rnnlab.cells import LADDER
from rnnlab.checkpoints import RunDir
from rnnlab.data.batches import ExampleBatches
from rnnlab.models import SequenceToVector
from rnnlab.runners import Stacked
from rnnlab.tasks import LanguageConfig, LanguageTask
from rnnlab.tasks.classification import classification_loss
from rnnlab.training import TrainConfig, Trainer, seed_everything


def make_trainer(group, model, batches, loss, config, **options):
    if group is None:
        return Trainer(model, batches, loss, config, **options)
    return distributed.DistributedTrainer(group, model, batches, loss, config, **options)


def recorder(history: list):
    """on_event: the flattened parameters after every step (and the seed the stream started from)."""

    def on_event(event):
        if event["kind"] == "step":
            history.append(torch.cat([p.detach().flatten() for p in on_event.model.parameters()]).clone())
            on_event.seeds.append(torch.initial_seed())

    on_event.seeds = []
    return on_event


def language(group, text: str, steps: int, run_dir=None, dropout: float = 0.0, resume: bool = False):
    """The stateful truncated-BPTT stream: global batch 4 rows (2 per rank of 2)."""
    seed_everything(0)
    task = LanguageTask(LanguageConfig(text=text, hidden=16, embedding=8, batch_size=4, seq_len=8, dropout=dropout,
                                       eval_tokens=100))
    config = TrainConfig(steps=steps, lr=1e-2, lr_schedule="constant", eval_every=2, checkpoint_every=2, log_every=1)
    history = []
    on_event = recorder(history)
    on_event.model = task.model
    trainer = make_trainer(group, task.model, task.batches(0), task.loss, config, evaluate=task.evaluate,
                           run_dir=run_dir, on_event=on_event)
    if resume:
        trainer.resume()
    trainer.fit()
    return task.model, history, on_event.seeds


def classify(group, steps: int):
    """Padded examples of uneven lengths, 9 of them in batches of 4, 4 and 1: the last batch leaves
    one rank of 2 with nothing of its own."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(9, 6, 3, generator=generator)
    lengths = torch.randint(2, 7, (9,), generator=generator)
    targets = torch.randint(0, 3, (9,), generator=generator)
    seed_everything(0)
    model = SequenceToVector(Stacked.of(LADDER["gru"], 3, 8, 1), nn.Linear(8, 3), pool="last")
    history = []
    on_event = recorder(history)
    on_event.model = model
    config = TrainConfig(steps=steps, lr=1e-2, lr_schedule="constant", log_every=1)
    trainer = make_trainer(group, model, ExampleBatches(inputs, targets, 4, seed=0, lengths=lengths),
                           classification_loss, config, on_event=on_event)
    trainer.fit()
    return history


def diverge(group, steps: int):
    """classify's training, but rank 1's loss (alone: the loss) is NaN at the third step: every rank
    stops there ('diverged'), none waiting for the others' gradients. (stopped, step, the parameters)."""
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(8, 6, 3, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    seed_everything(0)
    model = SequenceToVector(Stacked.of(LADDER["gru"], 3, 8, 1), nn.Linear(8, 3), pool="last")
    calls = []

    def loss(model, batch, state, teacher_forcing):
        value, state, n = classification_loss(model, batch, state, teacher_forcing)
        calls.append(None)
        poisoned = len(calls) == 3 and (group is None or group.rank == 1)
        return (value * float("nan") if poisoned else value), state, n

    config = TrainConfig(steps=steps, lr=1e-2, lr_schedule="constant", log_every=1)
    result = make_trainer(group, model, ExampleBatches(inputs, targets, 4, seed=0), loss, config).fit()
    return result.stopped, result.step, torch.cat([p.detach().flatten() for p in model.parameters()])


def terminate(group, text: str, run_dir: Path):
    """language's training; rank 1 (alone: the process) gets SIGTERM after its second step: every rank
    stops ('interrupted') at the same step, and the checkpoint holds it. (stopped, step)."""
    seed_everything(0)
    task = LanguageTask(LanguageConfig(text=text, hidden=16, embedding=8, batch_size=4, seq_len=8, eval_tokens=100))
    config = TrainConfig(steps=6, lr=1e-2, lr_schedule="constant", checkpoint_every=100, log_every=1)

    def on_event(event):
        if event["kind"] == "step" and event["step"] == 2 and (group is None or group.rank == 1):
            os.kill(os.getpid(), signal.SIGTERM)

    result = make_trainer(group, task.model, task.batches(0), task.loss, config, run_dir=run_dir,
                          on_event=on_event).fit()
    return result.stopped, result.step


def main(out: Path, text: str) -> None:
    group = distributed.join("cpu")
    try:
        torch.set_num_threads(1)
        _, language_steps, seeds = language(group, text, 4)
        classify_steps = classify(group, 5)
        diverged = diverge(group, 5)
        terminated = terminate(group, text, out / "terminated")
        checkpoint = RunDir(out / "terminated").load()[0] if group.rank == 0 else None  # rank 0 writes the run
        # Resume check: 6 steps straight against 2 steps, a stop and a resume (dropout on: the
        # generators of every rank must come back too).
        straight, _, _ = language(group, text, 6, out / "straight", dropout=0.3)
        language(group, text, 2, out / "stopped", dropout=0.3)
        resumed, _, _ = language(group, text, 6, out / "stopped", dropout=0.3, resume=True)
        torch.save({"language": language_steps, "classify": classify_steps, "seeds": seeds, "diverged": diverged,
                    "terminated": terminated, "terminated_checkpoint": checkpoint,
                    "straight": straight.state_dict(), "resumed": resumed.state_dict()},
                   out / f"rank{group.rank}.pt")
    finally:
        distributed.leave(group)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
