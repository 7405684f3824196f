"""Data-parallel training (rnnlab/distributed.py): two processes on this machine, gloo over the
loopback on a free port, started by hand with torchrun's environment or by torchrun itself."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnlab import distributed
from rnnlab.data.batches import Batch, ExampleBatches

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


# gloo would otherwise find its address through the host name, which a container may not resolve
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(rank: int, world_size: int, port: int, **extra) -> dict:
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "RNNLAB_NO_EXTENSION": "1", "RNNLAB_DIST_TIMEOUT": "60", **LOOPBACK, **extra}


def start(command: list[str], world_size: int, cwd: Path, **extra) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(command, env=environment(rank, world_size, port, **extra), cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in range(world_size)]


def finish(processes, timeout: float = 120) -> list[tuple[int, str, str]]:
    results = []
    try:
        for p in processes:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return str(path)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, text_file):
    """What each of 2 processes recorded in distributed_worker's scenarios."""
    out = tmp_path_factory.mktemp("ranks")
    results = finish(start([sys.executable, str(HERE / "distributed_worker.py"), str(out), text_file], 2, out))
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text_file):
    """The same trainings in this process, without torchrun, with the same global batch."""
    torch.set_num_threads(1)
    _, language, _ = distributed_worker.language(None, text_file, 4)
    return {"language": language, "classify": distributed_worker.classify(None, 5)}


@pytest.mark.parametrize("scenario", ["language", "classify"])
def test_ranks_hold_identical_parameters_after_every_step(two_ranks, scenario):
    first, second = two_ranks[0][scenario], two_ranks[1][scenario]
    assert len(first) == len(second) == (4 if scenario == "language" else 5)
    for step, (a, b) in enumerate(zip(first, second), 1):
        assert torch.equal(a, b), f"{scenario}: the ranks differ after step {step}"


@pytest.mark.parametrize("scenario", ["language", "classify"])
def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(two_ranks, one_process, scenario):
    alone = one_process[scenario]
    assert len(alone) == len(two_ranks[0][scenario])
    for step, (a, b) in enumerate(zip(alone, two_ranks[0][scenario]), 1):
        assert not torch.equal(a, alone[0]) or step == 1  # the weights move
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{scenario} step {step}: max diff {(a - b).abs().max()}"


def test_a_loss_not_finite_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    """Rank 1's loss alone is NaN at the third step: both ranks stop before it ('diverged', step 2, no
    hang), with the same finite weights."""
    (stopped, step, first), (stopped_1, step_1, second) = two_ranks[0]["diverged"], two_ranks[1]["diverged"]
    assert (stopped, step) == (stopped_1, step_1) == ("diverged", 2)
    assert torch.equal(first, second) and torch.isfinite(first).all()


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(two_ranks):
    """Rank 1 alone gets SIGTERM after step 2 (a scheduler ending the job): both ranks stop there,
    'interrupted', and rank 0 wrote the checkpoint of step 2 (`terminated` in the worker)."""
    assert two_ranks[0]["terminated"] == two_ranks[1]["terminated"] == ("interrupted", 2)
    assert two_ranks[0]["terminated_checkpoint"] == 2


def test_each_rank_draws_from_its_own_seed(two_ranks):
    seeds = [ranks["seeds"][0] for ranks in two_ranks]
    assert seeds[0] == 0 and seeds[1] != seeds[0]


def test_resume_with_the_same_world_size_continues_exactly(two_ranks):
    for rank in two_ranks:
        for name, a in rank["straight"].items():
            assert torch.equal(a, rank["resumed"][name]), name


def test_shards_split_the_global_batch_and_borrow_a_weightless_row_when_empty():
    inputs, targets = torch.arange(5 * 2).view(5, 2, 1).float(), torch.arange(5)
    shards = [distributed.ShardedBatches(ExampleBatches(inputs, targets, 3, seed=0), rank, 2) for rank in range(2)]
    first = [next(s) for s in shards]  # 3 rows: 1 + 2
    assert [len(b.targets) for b in first] == [1, 2]
    assert sorted(torch.cat([b.targets for b in first]).tolist()) == sorted(next(ExampleBatches(
        inputs, targets, 3, seed=0)).targets.tolist())
    last = [next(s) for s in shards]  # 2 rows: 1 + 1
    assert [len(b.targets) for b in last] == [1, 1] and not any(s.borrowed for s in shards)
    one = distributed.ShardedBatches(iter([Batch(inputs[:1], targets[:1])]), 0, 2)
    assert len(next(one).targets) == 1 and one.borrowed
    # a richer batch (a source and a target sequence, say): every tensor of rows is cut alike
    pair = Batch((inputs, {"lengths": targets + 1}), targets)
    cut = next(distributed.ShardedBatches(iter([pair]), 1, 2))
    assert torch.equal(cut.inputs[0], inputs[2:]) and torch.equal(cut.inputs[1]["lengths"], targets[2:] + 1)


def test_rank_seeds_differ_and_rank_zero_keeps_the_run_seed():
    assert distributed.rank_seed(7, 0) == 7
    assert len({distributed.rank_seed(7, r) for r in range(4)} | {distributed.rank_seed(8, 0)}) == 5


def test_join_names_what_torchrun_should_have_set(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.*missing"):
        distributed.join("cpu")


def tensors(state) -> list[torch.Tensor]:
    return [state] if isinstance(state, torch.Tensor) else [t for s in state for t in tensors(s)]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "rnnlab", "train", "language", *args]


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_dead_or_stuck_rank_stops_the_other_with_an_error_not_a_hang(tmp_path, text_file, how):
    """killed: the peer's connection closes at once; stopped (SIGSTOP): the timeout ends the wait."""
    processes = start(cli("--text", text_file, "--hidden", "16", "--batch-size", "4", "--seq-len", "8",
                          "--steps", "1000000", "--eval-every", "1000000", "--log-every", "1", "--threads", "1",
                          "--out", str(tmp_path / "run")), 2, tmp_path, RNNLAB_DIST_TIMEOUT="20")
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180  # two processes importing torch on a loaded 2-core machine
    while not metrics.exists() and time.monotonic() < deadline and processes[0].poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), "training never started"
    processes[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    try:
        code, _, err = finish(processes[:1], timeout=80)[0]
    finally:
        processes[1].kill()
        finish(processes[1:])
    assert code == 1 and time.monotonic() - started < 60
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rnnlab: error: rank 0 of 2: another process of the group died"), err[-2000:]
    if how == "stopped":
        assert "Timed out" in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, line", [
    (["--lr", "-1"], "rnnlab train: error: --lr must be a number > 0; got -1.0"),  # a config field
    (["--samples", "-1"], "rnnlab: error: --samples must be >= 0; got -1"),  # a flag the CLI checks
    (["--nosuch", "3"], "rnnlab train: error: unrecognized arguments: --nosuch (see rnnlab train --help)"),
    (["--implementation", "scan"], "rnnlab: error: Recurrent: implementation='scan' cannot run LSTMCell here"),
])
def test_an_error_in_the_flags_is_said_once_by_rank_0_and_every_rank_exits_2(tmp_path, text_file, flags, line):
    """Every rank reads the same command line: each printed the same error, once per process."""
    processes = start(cli("--text", text_file, "--hidden", "8", "--steps", "1", *flags, "--out", str(tmp_path / "r")),
                      2, tmp_path)
    (code0, _, err0), (code1, _, err1) = finish(processes)
    assert (code0, code1) == (2, 2), err0[-2000:] + err1[-2000:]
    assert err0.strip().startswith(line) and err0.strip().count("\n") == 0, err0[-2000:]
    assert err1 == "", err1[-2000:]
    assert not (tmp_path / "r").exists()


def test_a_config_error_under_torchrun_itself_is_printed_once(tmp_path, text_file):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    env = {**os.environ, "RNNLAB_NO_EXTENSION": "1", "RNNLAB_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", **LOOPBACK}
    done = subprocess.run(torchrun + ["-m", "rnnlab", "train", "language", "--text", text_file, "--lr", "-1"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("rnnlab train: error: --lr must be a number > 0; got -1.0") == 1, done.stderr[-3000:]
    assert not (tmp_path / "runs").exists()


def test_torchrun_trains_and_only_a_run_of_as_many_processes_resumes(tmp_path, text_file, capsys, monkeypatch):
    run = tmp_path / "run"
    flags = ["--text", text_file, "--hidden", "16", "--batch-size", "4", "--seq-len", "8", "--eval-tokens", "100",
             "--threads", "1", "--samples", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    env = {**os.environ, "RNNLAB_NO_EXTENSION": "1", "RNNLAB_DIST_TIMEOUT": "60", **LOOPBACK}
    done = subprocess.run(torchrun + ["-m", "rnnlab", "train", "language", *flags, "--steps", "3", "--out", str(run)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training language on 2 processes (gloo)") == 1  # rank 0 alone reports
    manifest = json.loads((run / "checkpoint.json").read_text())
    state = torch.load(run / manifest["files"]["trainer"]["name"], weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    for rank in state["ranks"]:  # each carries the state of its own 2 of the 4 rows
        assert {t.shape[0] for t in tensors(rank["carried"])} == {2}
    from rnnlab.cli import main

    for name in ("WORLD_SIZE", "RANK"):  # one process, without torchrun
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("rnnlab: error:")
    assert "written by 2 processes" in err and "torchrun --nproc-per-node 2" in err
