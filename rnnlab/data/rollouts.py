"""Reinforcement learning's batch source: whole episodes played by the current policies, served as
PPO's minibatches (tasks/control.py).

Each *rollout*, every agent plays `episodes` whole episodes of its own copy of the environment,
all games reset from one seed per rollout (so the agents face the same starting positions) and
actions sampled from one seeded generator per agent and rollout: a rollout is a function of the
seed, the rollout's index and the weights, which is what makes a resumed run replay exactly. The
rollout is then served `epochs` times, cut into `minibatches` groups of episodes in an order drawn
from (seed, rollout, epoch); each group is one `Batch`, one step of the Trainer. When the last is
served, the next rollout is played with the policies as they are then.

A policy is any module with `initial_state(batch)` and `step(observation (B, I), state) ->
(logits (B, A), value (B,), state)`. Batch layout, for agents a = 0..A-1 with inputs I_a:

    inputs  (B, T, sum I_a)   the agents' observations side by side, zero after an episode's end
    targets (B, T, A, 5)      per agent and step: action, log-probability of the action when it
                              was played, advantage (GAE, normalised over the rollout), return
                              (the value target), and 1 while the episode runs / 0 after its end

Row b of a batch holds episode b of every agent (padded to the longest), so the batch is cut in
time like any sequence batch (truncated BPTT). Rewards are multiplied by `reward_scale` (the
control task's 1 - gamma keeps the values in [0, 1] whatever the horizon); an episode cut by the
time limit is bootstrapped with the value after its last step, one that ended by failing is not.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .batches import Batch

__all__ = ["Rollouts", "play", "discounted_advantages", "TARGET_FIELDS"]

TARGET_FIELDS = ("action", "log_prob", "advantage", "return", "valid")


@torch.no_grad()
def play(policy, env, seed: int, generator: torch.Generator | None, max_steps: int = 100_000):
    """One whole episode in each of the env's games, from reset(seed). Actions are sampled with
    `generator`, or the most likely (greedy) when it is None. Returns a dict of (N, T) tensors:
    observations (N, T, I), actions, log_probs, values, rewards, valid, and per game: lengths (N,),
    truncated (N,) (ended by the time limit) and bootstrap (N,) (the value after the last step)."""
    observation, _ = env.reset(seed=seed)
    N = env.num_envs
    device = next(itertools.chain(policy.parameters(), policy.buffers()), torch.empty(0)).device
    state = policy.initial_state(N)
    running = np.ones(N, dtype=bool)
    lengths, truncated_at_end = np.zeros(N, dtype=np.int64), np.zeros(N, dtype=bool)
    bootstrap = torch.zeros(N)
    record: dict[str, list] = {k: [] for k in ("observations", "actions", "log_probs", "values", "rewards", "valid")}
    for t in range(max_steps):
        x = torch.as_tensor(observation, dtype=torch.float32, device=device)
        logits, value, state = policy.step(x, state)
        log_p = torch.log_softmax(logits.float().cpu(), dim=-1)  # (N, A)
        if generator is None:
            action = log_p.argmax(-1)
        else:
            action = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)
        valid = torch.from_numpy(running.copy())
        observation, reward, terminated, truncated, _ = env.step(action.numpy())
        record["observations"].append(x.cpu() * valid[:, None])
        record["actions"].append(action * valid)
        record["log_probs"].append(log_p.gather(-1, action[:, None]).squeeze(-1) * valid)
        record["values"].append(value.float().cpu() * valid)
        record["rewards"].append(torch.as_tensor(reward, dtype=torch.float32) * valid)
        record["valid"].append(valid.float())
        ended = running & (terminated | truncated)
        lengths[ended] = t + 1
        cut = running & truncated & ~terminated
        if cut.any():  # the time limit: the game goes on, so its value is the value after the last step
            x = torch.as_tensor(observation, dtype=torch.float32, device=device)
            _, after, _ = policy.step(x, state)
            bootstrap[torch.from_numpy(cut)] = after.float().cpu()[torch.from_numpy(cut)]
            truncated_at_end |= cut
        running &= ~ended
        if not running.any():
            break
    else:
        raise ValueError(f"play: every game must end within max_steps={max_steps}; some did not")
    episode = {k: torch.stack(v, dim=1) for k, v in record.items()}  # (N, T, ...)
    episode.update(lengths=torch.from_numpy(lengths), truncated=torch.from_numpy(truncated_at_end),
                   bootstrap=bootstrap)
    return episode


def discounted_advantages(rewards: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                          bootstrap: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over padded episodes (N, T):
    (advantages, returns = advantages + values), zero after each episode's end. bootstrap (N,) is
    the value after an episode's last step (0 for one that failed)."""
    N, T = rewards.shape
    advantages = torch.zeros(N, T)
    running = torch.zeros(N)
    for t in reversed(range(T)):
        is_last = valid[:, t] * (1 - (valid[:, t + 1] if t + 1 < T else torch.zeros(N)))
        next_value = torch.where(is_last > 0, bootstrap, values[:, t + 1] if t + 1 < T else bootstrap)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running * (1 - is_last)) * valid[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * valid


class Rollouts:
    """The Trainer's batch source for PPO: see the module docstring.

    Args:
        policies: name -> policy module (played in this order; the batch's agent axis follows it).
        envs: name -> vectorised environment with `episodes` games (made by the caller).
        epochs, minibatches: how often each rollout is served, and in how many groups of episodes.
        gamma, lam: discount and GAE's lambda.
        reward_scale: rewards are multiplied by this (the task uses 1 - gamma).
        seed: the seed of every rollout's resets, actions and minibatch order.
    """

    def __init__(self, policies: dict, envs: dict, epochs: int, minibatches: int, gamma: float, lam: float,
                 reward_scale: float = 1.0, seed: int = 0):
        if set(policies) != set(envs):
            raise ValueError(f"Rollouts: policies and envs must name the same agents; got {sorted(policies)} "
                             f"and {sorted(envs)}")
        episodes = {env.num_envs for env in envs.values()}
        if len(episodes) != 1:
            raise ValueError(f"Rollouts: every env must run the same number of games; got {sorted(episodes)}")
        self.episodes = episodes.pop()
        for name, value in (("epochs", epochs), ("minibatches", minibatches)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Rollouts: {name} must be an int >= 1; got {value!r}")
        if minibatches > self.episodes:
            raise ValueError(f"Rollouts: minibatches must be at most the episodes per rollout ({self.episodes}); "
                             f"got {minibatches}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Rollouts: seed must be an int >= 0; got {seed!r}")
        self.policies, self.envs = policies, envs
        self.names = list(policies)
        self.epochs, self.minibatches, self.gamma, self.lam = epochs, minibatches, gamma, lam
        self.reward_scale, self.seed = reward_scale, seed
        self.rollout, self.served = -1, 0  # the rollout being served, and batches served of it
        self.current: dict[str, torch.Tensor] | None = None  # its inputs and targets
        self.env_steps = {name: 0 for name in self.names}
        self.episodes_played = 0
        self.last_returns = {name: float("nan") for name in self.names}  # mean return of the last rollout

    def _seed(self, *keys: int) -> int:
        value = self.seed
        for key in keys:
            value = (value * 1_000_003 + key) % (2 ** 31 - 1)
        return value

    def _play_rollout(self) -> None:
        self.rollout += 1
        inputs, targets = [], []
        played = {}
        for index, name in enumerate(self.names):
            generator = torch.Generator().manual_seed(self._seed(self.rollout, index + 1))
            policy = self.policies[name]
            was_training = policy.training
            policy.eval()
            try:
                played[name] = play(policy, self.envs[name], self._seed(self.rollout), generator)
            finally:
                policy.train(was_training)
        T = max(p["valid"].shape[1] for p in played.values())
        for name in self.names:
            p = played[name]
            rewards = p["rewards"] * self.reward_scale
            advantages, returns = discounted_advantages(rewards, p["values"], p["valid"], p["bootstrap"],
                                                        self.gamma, self.lam)
            valid = p["valid"]
            count = valid.sum()
            mean = advantages.sum() / count
            std = (((advantages - mean) * valid).square().sum() / count).sqrt()
            advantages = (advantages - mean) / (std + 1e-8) * valid
            fields = torch.stack([p["actions"].float(), p["log_probs"], advantages, returns, valid], dim=-1)
            pad = T - valid.shape[1]
            inputs.append(torch.nn.functional.pad(p["observations"], (0, 0, 0, pad)))
            targets.append(torch.nn.functional.pad(fields, (0, 0, 0, pad)))
            self.env_steps[name] += int(p["lengths"].sum())
            self.last_returns[name] = float(p["rewards"].sum(1).mean())
        self.episodes_played += self.episodes
        self.current = {"inputs": torch.cat(inputs, dim=-1), "targets": torch.stack(targets, dim=2)}
        self.served = 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self.current is None or self.served >= self.epochs * self.minibatches:
            self._play_rollout()
        epoch, group = divmod(self.served, self.minibatches)
        generator = torch.Generator().manual_seed(self._seed(self.rollout, 0, epoch))
        order = torch.randperm(self.episodes, generator=generator)
        rows = order.tensor_split(self.minibatches)[group]
        self.served += 1
        targets = self.current["targets"][rows]
        steps = int(targets[..., -1].amax(dim=2).sum(dim=1).max())  # the longest episode of the group
        return Batch(self.current["inputs"][rows, :steps], targets[:, :steps])

    def state_dict(self) -> dict:
        return {"rollout": self.rollout, "served": self.served, "current": self.current,
                "env_steps": dict(self.env_steps), "episodes_played": self.episodes_played,
                "last_returns": dict(self.last_returns)}

    def load_state_dict(self, state: dict) -> None:
        self.rollout, self.served = int(state["rollout"]), int(state["served"])
        self.current = state["current"]
        self.env_steps = {name: int(state["env_steps"][name]) for name in self.names}
        self.episodes_played = int(state["episodes_played"])
        self.last_returns = {name: float(state["last_returns"][name]) for name in self.names}
