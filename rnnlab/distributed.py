"""Data-parallel training on PyTorch's own engine: `torchrun` starts the processes,
`DistributedDataParallel` keeps their weights equal, and this module fits the Trainer to it.

    torchrun --nproc-per-node 2 -m rnnlab train language --threads 1

Each process (rank) draws the same global batch from the task's batch source, with the same seed,
and trains on its own contiguous share of the rows: rank r of W takes rows [r*B//W, (r+1)*B//W).
So the global batch is split, not repeated; every rank takes one share of every batch, so the
ranks run equal numbers of steps whatever the data; and the rows of the language model's stateful
stream are fixed per rank, each carrying its own rows' state from batch to batch. Each share's
gradient is weighted by its part of the batch's predictions, so W processes take the same steps
as one process with the same global batch (up to float rounding), uneven shares included. A rank
whose share is empty (a last batch smaller than W) trains on a borrowed row with weight 0, so it
still joins every gradient exchange.

Rank 0 alone logs, shows progress, evaluates, samples and writes the run directory. A checkpoint
holds every rank's carried state and random generators ("ranks"), gathered by rank 0; a resume
reads it on rank 0 and sends each rank its part, so it continues exactly with the same world size
and refuses another. Dropout and scheduled sampling draw from a seed of their own on each rank.

The backend follows the device: gloo on CPU, nccl on CUDA (each process on the GPU of its
LOCAL_RANK), with small control messages (stop decisions, counts, checkpoints) on a gloo group.
Every collective has a timeout (RNNLAB_DIST_TIMEOUT seconds, default 600), so a process whose peer
died or hangs stops with an error instead of waiting for ever.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoints import CheckpointError, check_weights
from .data.batches import Batch
from .training import Trainer, resolve_device, seed_everything

__all__ = ["Group", "launched", "join", "leave", "is_reporter", "launch_flags", "rank_seed", "timeout_s", "batch_rows",
           "ShardedBatches", "DistributedTrainer", "PeerFailure", "SharedError", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 600.0
# The environment torchrun gives each process (and a hand-made launch must give too).
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerFailure(RuntimeError):
    """Another process of the group died, or stopped answering within the timeout."""


class SharedError(ValueError):
    """An error every rank raises alike (a resume that does not fit): rank 0 reports it."""


@dataclass(frozen=True)
class Group:
    """This process's place in the torchrun group. control: the (CPU, gloo) group of the small
    messages; the default group carries the gradients."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    control: Any


def launched() -> bool:
    """Whether this process was started by torchrun (or by hand with its environment)."""
    return "WORLD_SIZE" in os.environ


def _environment() -> dict[str, int]:
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise ValueError(f"distributed: a process started by torchrun must have {', '.join(ENVIRONMENT)} set; "
                         f"{', '.join(missing)} missing (start with: torchrun --nproc-per-node N -m rnnlab train ...)")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            values[name] = int(os.environ[name])
        except ValueError:
            raise ValueError(f"distributed: {name} must be an int; got {os.environ[name]!r}") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise ValueError(f"distributed: RANK must be in [0, WORLD_SIZE) and LOCAL_RANK >= 0; "
                         f"got RANK={values['RANK']}, WORLD_SIZE={values['WORLD_SIZE']}, "
                         f"LOCAL_RANK={values['LOCAL_RANK']}")
    return values


def timeout_s() -> float:
    """Seconds any collective may wait for the other processes (RNNLAB_DIST_TIMEOUT)."""
    text = os.environ.get("RNNLAB_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"distributed: RNNLAB_DIST_TIMEOUT must be seconds > 0; got {text!r}")
    return value


def join(device: str) -> Group:
    """Join the torchrun group of this process: nccl for a CUDA device (this process on the GPU of
    its LOCAL_RANK), gloo otherwise; every collective bounded by the timeout."""
    env = _environment()
    resolved = resolve_device(device)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError(f"distributed: device {device!r} needs CUDA, which torch does not find here")
        if resolved.index is not None and env["WORLD_SIZE"] > 1:
            raise ValueError(f"distributed: device must be 'cuda' (each process takes the GPU of its LOCAL_RANK) "
                             f"under torchrun with several processes; got {device!r}")
        if env["LOCAL_RANK"] >= torch.cuda.device_count():
            raise ValueError(f"distributed: LOCAL_RANK must name one of the {torch.cuda.device_count()} GPUs; got "
                             f"{env['LOCAL_RANK']} (start at most as many processes per machine as it has GPUs)")
        torch.cuda.set_device(env["LOCAL_RANK"])  # "cuda" now means this process's GPU
    timeout = timedelta(seconds=timeout_s())
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, TimeoutError) as error:  # the rendezvous: peers missing, port taken, ...
            raise PeerFailure(f"distributed: rank {env['RANK']} could not join the group at "
                              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: "
                              f"{_first_line(error)}") from None
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    return Group(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], backend, control)


def leave(group: Group | None) -> None:
    if group is not None and dist.is_initialized():
        # The trainer (DDP's reducer and its gloo work among it) sits in reference cycles: collect it
        # while the group and the interpreter are alive. Left to the interpreter's exit, its C++ threads
        # met a finalising interpreter and the process aborted (SIGABRT) now and then.
        gc.collect()
        dist.destroy_process_group()


def is_reporter() -> bool:
    """Whether this process prints and writes: always outside torchrun, rank 0 within."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def launch_flags(group: Group) -> str:
    """torchrun's flags for a group of this size, for messages: --nproc-per-node N on one machine."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", group.world_size))
    if per_node == group.world_size:
        return f"--nproc-per-node {per_node}"
    return f"--nnodes {group.world_size // per_node} --nproc-per-node {per_node} ..."


def rank_seed(seed: int, rank: int) -> int:
    """The seed of dropout and sampling on `rank`: rank 0 keeps the run's seed (so one process
    under torchrun is the plain run), the others draw from seeds no run's own seed < 2**32 uses."""
    return seed if rank == 0 else (seed + (rank << 32)) % (1 << 63)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- the data ---------------------------------------------------------------------------------


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in a field: a tensor, or tuples, lists and dicts of them (a task's richer batch)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _cut(value, start: int, stop: int, rows: int):
    """value with rows [start, stop) of every tensor whose first dimension is the batch's rows."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, start, stop, rows) for v in value)
    if isinstance(value, dict):
        return {k: _cut(v, start, stop, rows) for k, v in value.items()}
    return value


def batch_rows(batch: Batch) -> int:
    """The rows of a batch: the first dimension of its (first) input tensor."""
    found = _tensors(batch.inputs)
    if not found or found[0].dim() == 0:
        raise ValueError(f"distributed: a batch's inputs must hold a tensor of rows first (B, ...); got "
                         f"{type(batch.inputs).__name__}")
    return found[0].shape[0]


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of a batch: of every tensor in its fields whose first dimension is the batch's."""
    rows = batch_rows(batch)
    return dataclasses.replace(batch, **{f.name: _cut(getattr(batch, f.name), start, stop, rows)
                                         for f in dataclasses.fields(batch)})


class ShardedBatches:
    """This rank's share of each global batch of `batches`; resumable through the global source's
    state, which is the same on every rank. `borrowed`: the current batch's share was empty and
    the batch is a stand-in row of weight 0."""

    def __init__(self, batches, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardedBatches: rank must be in [0, {world_size}); got {rank}")
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.borrowed = False

    def share(self, rows: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a batch of `rows` rows."""
        return rows * self.rank // self.world_size, rows * (self.rank + 1) // self.world_size

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = next(self.batches)
        start, stop = self.share(batch_rows(batch))
        self.borrowed = start == stop
        return _rows(batch, 0, 1) if self.borrowed else _rows(batch, start, stop)

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


# --- the trainer ------------------------------------------------------------------------------


class _LossOfModel(nn.Module):
    """The task's loss as one module, so that DistributedDataParallel sees each forward pass
    (loss functions call the model's parts, not only model(...))."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch, state, teacher_forcing: float):
        return self.loss_fn(self.model, batch, state, teacher_forcing)


def _scale_gradient(loss: torch.Tensor, factor: float) -> torch.Tensor:
    """loss with the same value and `factor` times its gradient."""
    if factor == 1.0:
        return loss
    return loss.detach() + factor * (loss - loss.detach())


STOP_REASONS = (None, "time", "interrupted")  # when ranks differ, the later one wins


class DistributedTrainer(Trainer):
    """The Trainer on one rank of a torchrun group; see the module docstring. Takes what the
    Trainer takes, the task's whole batch source included, and the Group from `join`.
    `state_dict`, `save_checkpoint`, `resume` and `fit` are collective: every rank calls them."""

    def __init__(self, group: Group, model: nn.Module, batches, loss_fn, config, *, evaluate=None, run_dir=None,
                 run_config=None, on_event=None, solved=None, parameter_groups=None):
        if not isinstance(group, Group):
            raise TypeError(f"DistributedTrainer: group must be a Group (from rnnlab.distributed.join); got "
                            f"{type(group).__name__}")
        self.group, self.world_size = group, group.world_size
        self.shards = ShardedBatches(batches, group.rank, group.world_size)
        super().__init__(model, self.shards, loss_fn, config, evaluate=evaluate,
                         run_dir=run_dir if group.rank == 0 else None, run_config=run_config, on_event=on_event,
                         solved=solved, parameter_groups=parameter_groups)
        self.checkpointing = run_dir is not None  # on every rank: saving a checkpoint is collective
        # Broadcasts rank 0's weights at once; averages the gradients in backward.
        self.replicated = DistributedDataParallel(_LossOfModel(self.model, loss_fn))
        self.loss_fn = self._shared_loss
        self._diverged_somewhere = False  # whether any rank's loss of the current window is NaN or inf

    # --- small collectives on the control group ---

    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=op, group=self.group.control)
        return tensor.tolist()

    def _broadcast(self, value):
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group.control)
        return box[0]

    # --- training ---

    def _shared_loss(self, model, batch: Batch, state, teacher_forcing: float):
        """The loss of this rank's share, its gradient weighted by the share's part of the
        global batch's predictions (DDP averages over ranks: hence the factor world_size)."""
        loss, state, count = self.replicated(batch, state, teacher_forcing)
        own = 0 if self.shards.borrowed else count
        # the same collective tells every rank whether any rank's loss is NaN or inf (`_finite`), so all
        # stop at the same window rather than one waiting for the others' gradients
        total, diverged = self._all_reduce([float(own), float(not math.isfinite(loss.item()))])
        self._diverged_somewhere = diverged > 0
        factor = self.world_size * own / total if total > 0 else 0.0
        return _scale_gradient(loss, factor), state, own

    def _finite(self, loss: float) -> bool:
        return not self._diverged_somewhere

    def _train_batch(self, batch: Batch) -> tuple[float, int]:
        """One step; the loss and count of the global batch, so rank 0 logs what all learned."""
        loss, count = super()._train_batch(batch)
        total_loss, total_count = self._all_reduce([loss * count, float(count)])
        return total_loss / max(total_count, 1.0), int(total_count)

    def _seed_stream(self) -> None:
        seed_everything(rank_seed(self.config.seed, self.group.rank))

    def _stop_reason(self, deadline):
        """Every rank stops at the same step: at the first where any rank has a reason."""
        own = STOP_REASONS.index(super()._stop_reason(deadline))
        (agreed,) = self._all_reduce([float(own)], dist.ReduceOp.MAX)
        return STOP_REASONS[int(agreed)]

    def _evaluate_and_check(self) -> bool:
        """Rank 0 evaluates (the others wait); all learn whether the goal is met or early stopping says stop."""
        stop = super()._evaluate_and_check() if self.group.rank == 0 else False
        self.last_eval_step = self.step
        return bool(self._broadcast(stop))

    def fit(self):
        try:
            return super().fit()
        except RuntimeError as error:
            raise self._as_peer_failure(error) from error

    def _as_peer_failure(self, error: RuntimeError) -> RuntimeError:
        """A failed collective says which rank lost its peers and why, in a line; other errors pass."""
        text = str(error)
        if isinstance(error, dist.DistError) or any(word in text for word in ("Gloo", "gloo", "NCCL", "Connection")):
            return PeerFailure(f"rank {self.group.rank} of {self.world_size}: another process of the group died or "
                               f"stopped answering within {timeout_s():g} s (RNNLAB_DIST_TIMEOUT): "
                               f"{_first_line(error)}")
        return error

    # --- checkpoints ---

    def _saves_checkpoints(self) -> bool:
        return self.checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Rank 0: the trainer state with every rank's own part under "ranks". Collective."""
        state = super().state_dict()
        ranks = [None] * self.world_size if self.group.rank == 0 else None
        dist.gather_object(self._rank_state(), ranks, dst=0, group=self.group.control)
        return {**state, "ranks": ranks}

    def save_checkpoint(self):
        if self.run is not None:
            return super().save_checkpoint()
        self.state_dict()  # the other ranks' part of the gather
        return None

    def resume(self) -> int:
        """Rank 0 reads the checkpoint and sends it; each rank takes the weights, the shared
        state and its own carried state and generators."""
        if not self.checkpointing:  # alike on every rank
            raise ValueError("DistributedTrainer.resume: run_dir must be given to resume; got None")
        payload = None
        if self.group.rank == 0:
            try:
                step, weights, state = self.run.load("cpu")
                check_weights(self.run.weights_file(step), weights, self.model)
                payload = (step, weights, state, str(self.run.trainer_file(step)))
            except ValueError as error:
                payload = str(error)
        payload = self._broadcast(payload)
        if isinstance(payload, str):
            raise SharedError(payload)
        step, weights, state, source = payload
        try:
            if state.get("world_size", 1) == self.world_size:
                state = {**state, **state["ranks"][self.group.rank]}
            return self._restore(step, {k: v.to(self.device) for k, v in weights.items()}, state, source)
        except (KeyError, IndexError, TypeError) as error:
            raise SharedError(f"{source} is not a checkpoint of {self.world_size} processes: it lacks rank "
                              f"{self.group.rank}'s state ({error!r})") from None
        except CheckpointError as error:
            raise SharedError(str(error)) from None
