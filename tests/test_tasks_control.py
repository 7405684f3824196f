"""The control task: the wrapper hides exactly the velocities, advantages by hand, whole episodes
served as minibatches, a tiny run through the CLI, exact resume (environments included), errors."""

import sys

import numpy as np
import pytest
import torch

from rnnlab.cli import main
from rnnlab.data.cartpole import STATE_NAMES, VISIBLE, MissingDependencyError, make_cartpole, require_gymnasium
from rnnlab.data.rollouts import discounted_advantages, play
from rnnlab.tasks import TASKS
from rnnlab.tasks.control import AGENTS, ControlConfig, ControlTask
from rnnlab.training import TrainConfig, Trainer

from resume_check import assert_resume_matches

TINY = dict(hidden=8, episodes=4, epochs=2, minibatches=2, eval_episodes=4, test_episodes=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors, one step at a time: on a busy machine torch's thread pool only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_wrapper_hides_exactly_the_velocities():
    hidden, full = make_cartpole(5, hidden_velocities=True), make_cartpole(5, hidden_velocities=False)
    assert hidden.single_observation_space.shape == (2,) and full.single_observation_space.shape == (4,)
    assert [STATE_NAMES[i] for i in VISIBLE] == ["cart position", "pole angle"]
    assert np.array_equal(hidden.single_observation_space.high, full.single_observation_space.high[[0, 2]])
    observation, _ = hidden.reset(seed=3)
    whole, _ = full.reset(seed=3)
    actions = np.array([0, 1, 1, 0, 1])
    for _ in range(8):
        state = hidden.unwrapped.state.T.astype(np.float32)  # (N, 4): what the game really is
        assert np.array_equal(observation, state[:, [0, 2]])  # position and angle, as they are
        assert np.array_equal(whole, state)  # the same game, seen whole
        assert not np.allclose(state[:, [1, 3]], 0)  # the hidden velocities carry information
        observation, reward, *_ = hidden.step(actions)
        whole, *_ = full.step(actions)
        assert observation.shape == (5, 2)


def test_missing_gymnasium_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"install it with: pip install 'gymnasium==1\.4\.0'"):
        require_gymnasium()
    assert issubclass(MissingDependencyError, ValueError)  # the CLI prints it in one line


def test_advantages_by_hand():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    bootstrap = torch.tensor([2.0, 0.0])  # row 0 cut by the time limit: the game went on; row 1 failed
    advantages, returns = discounted_advantages(rewards, values, valid, bootstrap, gamma=1.0, lam=1.0)
    # gamma = lambda = 1: the advantage is the rest of the return (plus the bootstrap) minus the value
    assert torch.allclose(returns, torch.tensor([[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]]))
    assert torch.allclose(advantages, returns - values * valid)
    # lambda = 0: one-step temporal differences
    advantages, _ = discounted_advantages(rewards, values, valid, bootstrap, gamma=0.5, lam=0.0)
    assert torch.allclose(advantages, torch.tensor([[0.75, 0.75, 1.5], [0.75, 0.5, 0.0]]))


def test_greedy_play_is_repeatable_and_counts_the_steps():
    task = ControlTask(ControlConfig(**TINY))
    agent = task.model.agents["recurrent"]
    env = make_cartpole(6, hidden_velocities=True)
    a, b = play(agent, env, seed=5, generator=None), play(agent, env, seed=5, generator=None)
    assert torch.equal(a["rewards"], b["rewards"]) and torch.equal(a["actions"], b["actions"])
    assert torch.equal(a["valid"].sum(1).long(), a["lengths"]) and torch.equal(a["rewards"].sum(1).long(), a["lengths"])
    assert a["observations"].shape[2] == 2 and not a["truncated"].any()  # an untrained agent fails early


def test_rollouts_serve_every_episode_once_per_epoch():
    task = ControlTask(ControlConfig(**{**TINY, "episodes": 6, "minibatches": 3, "epochs": 2}))
    source = task.batches(0)
    batches = [next(source) for _ in range(6)]  # one rollout: 2 epochs of 3 minibatches
    assert source.rollout == 0 and source.served == 6
    inputs, targets = source.current["inputs"], source.current["targets"]
    assert inputs.shape[2] == 2 + 2 + 4 and targets.shape[2:] == (len(AGENTS), 5)
    for epoch in (batches[:3], batches[3:]):  # each episode once per epoch (rows told apart by their start)
        firsts = sorted(tuple(row.tolist()) for batch in epoch for row in batch.inputs[:, 0])
        assert firsts == sorted(tuple(row.tolist()) for row in inputs[:, 0])
    start = inputs[:, 0]  # every agent starts from the same positions
    assert torch.equal(start[:, 0:2], start[:, 2:4]) and torch.equal(start[:, 0:2], start[:, [4, 6]])
    valid = targets[..., 4]
    assert torch.equal(valid.sum(1).sum(0), torch.tensor([float(s) for s in source.env_steps.values()]))
    next(source)
    assert source.rollout == 1  # the seventh batch comes from a new rollout, played by the policies as they are


def test_tiny_run_through_the_cli(tmp_path, capsys):
    assert "control" in TASKS
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["train", "control", *flags, "--steps", "30", "--eval-every", "10", "--threads", "1",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "mean return over 4 seeded test episodes" in out and "random" in out
    for name in AGENTS:
        assert f"  {name} " in out
    assert (run / "learning-curve.png").stat().st_size > 0 and (run / "best.safetensors").is_file()
    assert main(["eval", str(run)]) == 0
    assert "recurrent" in capsys.readouterr().out


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    """Steps 1-3, a stop, steps 4-6: the rollout in flight and the games' seeds are in the checkpoint."""

    def trainer(steps, run_dir):
        torch.manual_seed(0)
        task = ControlTask(ControlConfig(**{**TINY, "epochs": 1}))  # rollouts of 2 steps: step 3 is mid-rollout
        train = TrainConfig(steps=steps, eval_every=2, checkpoint_every=3, lr=1e-2, lr_schedule="constant",
                            truncate_every=5, clip_norm=None, threads=1)
        return task, Trainer(task.model, task.batches(3), task.loss, train, evaluate=task.evaluate, run_dir=run_dir)

    assert_resume_matches(trainer, tmp_path)


def test_clear_errors(capsys):
    with pytest.raises(ValueError, match="ControlConfig: minibatches must be at most episodes"):
        ControlConfig(episodes=2, minibatches=4)
    with pytest.raises(ValueError, match="ControlConfig: cell must be one of"):
        ControlConfig(cell="feedback")
    with pytest.raises(ValueError, match=r"ControlConfig: clip must be a number in \(0, 1\)"):
        ControlConfig(clip=1.5)
    with pytest.raises(ValueError, match="make_cartpole: num_envs must be an int >= 1; got 0"):
        make_cartpole(0, True)
    assert main(["train", "control", "--episodes", "0", "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == "rnnlab train: error: --episodes must be an int in [1, 10000]; got 0"
    # a typo's count of episodes ran until memory ran out: each flag of episodes is bounded
    for flag in ("--episodes", "--eval-episodes", "--test-episodes"):
        assert main(["train", "control", flag, "999999999", "--steps", "1"]) == 2
        expected = f"rnnlab train: error: {flag} must be an int in [1, 10000]; got 999999999"
        assert capsys.readouterr().err.strip() == expected
