"""Control: the recurrent state as memory of a partially observed world (the lecture's "state
representation in reinforcement learning").

CartPole-v1 (gymnasium) with its velocities hidden (rnnlab.data.cartpole): the agent sees the
cart's position and the pole's angle, not how fast either moves, so a policy that reacts to the
current observation alone cannot tell a pole swinging up from one falling. A recurrent state can:
two positions in a row give the velocity.

Three actor-critic agents, the same but for their core, train side by side on the same budget
(the same number of rollouts of whole episodes from the same starting positions, the same
updates) with PPO (Schulman et al., 2017):

- recurrent:  a ladder cell (LSTM by default) on position and angle, its state the memory;
- memoryless: a feed-forward core (two tanh layers) on the same position and angle;
- full:       the same feed-forward core on all four state variables (the reference: what memory
              could at best recover).

Each core's features feed an actor (logits of the two pushes) and a critic (the value). PPO fits
the Trainer as it is: the batch source (rnnlab.data.rollouts.Rollouts) plays whole episodes with
the current policies and serves them as minibatches, one per step; `loss` is PPO's clipped
surrogate plus the value and entropy terms, summed over the agents (their parameters are
disjoint, so each learns from its own term alone). Long episodes are cut by the Trainer's
truncated BPTT (`--truncate-every`), the state carried between the windows. Because the rollout
being served and its position are part of the batch source's state, and every random draw comes
from (seed, rollout), checkpoints resume exactly.

The metric is the mean return (steps balanced, at most 500) of each agent's greedy policy over 100
seeded test episodes, beside a random policy's; the validation during training plays other seeded
episodes, and its mean over the three agents picks the best weights (no agent favoured). The
report writes `learning-curve.png`: validation return against environment steps, one line per agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cells import LADDER
from ..config import MAX_EPISODES, MAX_LAYERS, ConfigError, knob, validate
from ..data.batches import Batch
from ..data.cartpole import MAX_RETURN, STATE_NAMES, VISIBLE, make_cartpole
from ..data.rollouts import Rollouts, play
from ..init import Init
from ..plots import pyplot, save_figure
from ..runners import IMPLEMENTATION_NAMES, Stacked
from ..training import TrainConfig
from .base import Task

__all__ = ["ControlConfig", "ControlTask", "ActorCritic", "FeedForward", "ControlAgents", "AGENTS",
           "plot_learning_curves"]

# agent -> (what it sees, one line); the order of the batch's agent axis
AGENTS = {"recurrent": (True, "recurrent core, velocities hidden"),
          "memoryless": (True, "feed-forward core, velocities hidden"),
          "full": (False, "feed-forward core, sees everything")}
ACTIONS = 2  # push the cart left or right
CELLS = tuple(c for c in LADDER if c != "feedback")
# Seeds of the evaluation episodes, apart from the training rollouts' (derived from the run's seed).
VALIDATION_SEED, TEST_SEED = 1_000_000_007, 2_000_000_011
# What the observations are divided by: the failure thresholds for position (2.4) and angle
# (12 degrees), typical magnitudes for the velocities; inputs of order 1 whatever the variable.
SCALE = torch.tensor([2.4, 1.0, 12 * math.pi / 180, 1.0])


@dataclass(frozen=True)
class ControlConfig:
    """The agents and PPO's settings."""

    cell: str = knob("lstm", "cell of the recurrent agent", CELLS)
    hidden: int = knob(64, "state size H of the recurrent core, and width of the feed-forward cores", low=1)
    layers: int = knob(1, "stacked layers of the recurrent core", low=1, high=MAX_LAYERS)
    episodes: int = knob(16, "episodes each agent plays per rollout (games stepped together)", low=1, high=MAX_EPISODES)
    epochs: int = knob(4, "times each rollout is learnt from", low=1)
    minibatches: int = knob(2, "minibatches (groups of whole episodes) per epoch; one training step each", low=1)
    gamma: float = knob(0.99, "discount", above=0, high=1)
    gae_lambda: float = knob(0.95, "lambda of generalised advantage estimation", above=0, high=1)
    clip: float = knob(0.2, "PPO's clipping of the probability ratio", above=0, below=1)
    value_coef: float = knob(0.5, "weight of the value loss", low=0)
    entropy_coef: float = knob(0.01, "weight of the entropy bonus", low=0)
    eval_episodes: int = knob(32, "seeded validation episodes per agent at every evaluation", low=1, high=MAX_EPISODES)
    test_episodes: int = knob(100, "seeded test episodes per agent in the report", low=1, high=MAX_EPISODES)
    implementation: str = knob("auto", "runner implementation of the recurrent core", IMPLEMENTATION_NAMES)

    def __post_init__(self):
        validate(self)
        if self.minibatches > self.episodes:
            raise ConfigError("ControlConfig", "minibatches", f"at most episodes ({self.episodes}): a minibatch holds "
                              "whole episodes", self.minibatches)


# --- the agents ---------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """A memoryless core with the runners' calling convention: each step sees its own input only,
    and there is no state (None)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.layers = nn.Sequential(nn.Linear(input_size, hidden_size), nn.Tanh(),
                                    nn.Linear(hidden_size, hidden_size), nn.Tanh())

    def initial_state(self, batch: int, device=None, dtype=None):
        return None

    def forward(self, xs, state=None):
        return self.layers(xs), None

    def step(self, x_t, state):
        return self.layers(x_t), None


class ActorCritic(nn.Module):
    """A core (a runner, or FeedForward) whose features feed an actor (logits of the actions) and
    a critic (the value), on observations of the given state variables."""

    def __init__(self, core: nn.Module, observed: list[int]):
        super().__init__()
        self.core, self.observed = core, list(observed)
        self.register_buffer("scale", SCALE[self.observed].clone(), persistent=False)
        self.actor, self.critic = nn.Linear(core.output_size, ACTIONS), nn.Linear(core.output_size, 1)
        with torch.no_grad():  # a near-uniform first policy (as in the PPO implementations' init)
            self.actor.weight.mul_(0.01)
            self.actor.bias.zero_()

    input_size = property(lambda self: len(self.observed))

    def initial_state(self, batch: int):
        return self.core.initial_state(batch, self.scale.device, self.scale.dtype)

    def forward(self, observations, state=None):
        """(logits (B, T, A), values (B, T), state) for observations (B, T, I)."""
        features, state = self.core(observations / self.scale, state)
        return self.actor(features), self.critic(features).squeeze(-1), state

    def step(self, observation, state):
        """(logits (B, A), value (B,), state) for one step's observation (B, I)."""
        features, state = self.core.step(observation / self.scale, state)
        return self.actor(features), self.critic(features).squeeze(-1), state


class ControlAgents(nn.Module):
    """The three agents side by side (disjoint parameters), and PPO's coefficients."""

    def __init__(self, config: ControlConfig):
        super().__init__()
        visible, everything = list(VISIBLE), list(range(len(STATE_NAMES)))
        recurrent = Stacked.of(LADDER[config.cell], len(visible), config.hidden, config.layers,
                               implementation=config.implementation, init=Init.keras())
        self.agents = nn.ModuleDict({
            "recurrent": ActorCritic(recurrent, visible),
            "memoryless": ActorCritic(FeedForward(len(visible), config.hidden), visible),
            "full": ActorCritic(FeedForward(len(everything), config.hidden), everything)})
        self.clip, self.value_coef, self.entropy_coef = config.clip, config.value_coef, config.entropy_coef

    def ppo_loss(self, batch: Batch, state) -> tuple[torch.Tensor, tuple, int]:
        """Sum over the agents of each one's PPO loss, a mean over its valid steps; the state is
        one entry per agent (None for the feed-forward ones). Each agent runs up to its own longest
        episode in the batch; one whose episodes all ended before this window contributes nothing
        (its parameters get no gradient, so Adam leaves them be)."""
        state = state if state is not None else (None,) * len(self.agents)
        total, count, new_state, start = batch.inputs.new_zeros(()), 0, [], 0
        for index, agent in enumerate(self.agents.values()):
            observations = batch.inputs[..., start:start + agent.input_size]
            start += agent.input_size
            action, old_log_prob, advantage, target, valid = batch.targets[:, :, index].unbind(-1)
            n = int(valid.sum())
            if n == 0:
                new_state.append(None)
                continue
            steps = int(valid.sum(1).max())  # the agent's longest episode here (rows are padded after their end)
            observations, action, old_log_prob, advantage, target, valid = (
                x[:, :steps] for x in (observations, action, old_log_prob, advantage, target, valid))
            logits, values, agent_state = agent(observations, state[index])
            new_state.append(agent_state)
            log_p = torch.log_softmax(logits, dim=-1)
            log_prob = log_p.gather(-1, action.long()[..., None]).squeeze(-1)
            ratio = torch.exp(log_prob - old_log_prob)
            surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage)
            entropy = -(log_p.exp() * log_p).sum(-1)
            per_step = -surrogate + self.value_coef * (values - target).square() - self.entropy_coef * entropy
            total = total + (per_step * valid).sum() / n
            count += n
        return total, tuple(new_state), count


def evaluate_returns(agent: ActorCritic, episodes: int, seed: int, greedy: bool = True) -> torch.Tensor:
    """Returns (episodes,) of the agent on seeded episodes (greedy actions, or sampled from `seed`)."""
    env = make_cartpole(episodes, hidden_velocities=len(agent.observed) < len(STATE_NAMES))
    generator = None if greedy else torch.Generator().manual_seed(seed)
    was_training = agent.training
    agent.eval()
    try:
        return play(agent, env, seed, generator)["rewards"].sum(1)
    finally:
        agent.train(was_training)


class RandomPolicy(nn.Module):
    """Pushes left or right with equal probability: the floor every agent must beat."""

    def __init__(self):
        super().__init__()
        self.observed = list(range(len(STATE_NAMES)))

    def initial_state(self, batch: int):
        return None

    def step(self, observation, state):
        return observation.new_zeros(observation.shape[0], ACTIONS), observation.new_zeros(observation.shape[0]), None


# --- the task -----------------------------------------------------------------------------------


class ControlTask(Task):
    """CartPole with hidden velocities: a recurrent agent against a memoryless one and one that sees all."""

    name = "control"
    description = ("reinforcement learning: CartPole with the velocities hidden, recurrent vs memoryless vs "
                   "full-observation PPO agents, mean return of 100 episodes (gymnasium)")
    Config = ControlConfig
    # Sized for one thread (docs/RESULTS.md): about 4 minutes of CPU time; max_minutes leaves room for
    # a busy machine. A step is one minibatch of whole episodes. No gradient clipping: the three
    # agents share one optimiser, and a global norm would couple them (Adam's per-parameter steps
    # keep them independent otherwise).
    train_defaults = TrainConfig(steps=2400, max_minutes=60.0, lr=1e-3, eval_every=40, checkpoint_every=200,
                                 log_every=10, clip_norm=None, truncate_every=100, threads=1)
    unit = "transition"  # one agent step learnt from (counted once per epoch of its rollout)

    def __init__(self, config: ControlConfig):
        self.config = config
        self.model = ControlAgents(config)
        self.source: Rollouts | None = None  # the batch source of this training session, for its counters

    def batches(self, seed: int) -> Rollouts:
        c = self.config
        envs = {name: make_cartpole(c.episodes, hidden) for name, (hidden, _) in AGENTS.items()}
        self.source = Rollouts(dict(self.model.agents.items()), envs, c.epochs, c.minibatches, c.gamma,
                               c.gae_lambda, reward_scale=1 - c.gamma if c.gamma < 1 else 1.0, seed=seed)
        return self.source

    @staticmethod
    def loss(model, batch: Batch, state, teacher_forcing: float):
        """PPO's loss of every agent, summed (the Trainer's loss_fn; teacher forcing does not apply)."""
        return model.ppo_loss(batch, state)

    @torch.no_grad()
    def evaluate(self, model, full: bool = False) -> dict[str, float]:
        """Mean return of each agent's greedy policy on the seeded validation episodes (and the
        environment steps trained on so far); 'loss' is minus their mean over the agents."""
        episodes = self.config.test_episodes if full else self.config.eval_episodes
        seed = TEST_SEED if full else VALIDATION_SEED
        returns = {name: float(evaluate_returns(agent, episodes, seed).mean()) for name, agent in model.agents.items()}
        metrics = {"loss": -sum(returns.values()) / len(returns)}
        metrics.update({f"{name}_return": value for name, value in returns.items()})
        if self.source is not None:
            metrics.update({f"{name}_env_steps": steps for name, steps in self.source.env_steps.items()})
        return metrics

    def describe(self) -> str:
        c = self.config
        sizes = ", ".join(f"{name} {sum(p.numel() for p in agent.parameters()):,}"
                          for name, agent in self.model.agents.items())
        return (f"CartPole-v1, velocities hidden from the recurrent ({c.cell} x{c.layers}, hidden {c.hidden}) and "
                f"memoryless agents, shown to the full one; parameters: {sizes}; PPO on {c.episodes} whole "
                f"episodes per rollout, {c.epochs} epochs of {c.minibatches} minibatches")

    def report(self, model, run_dir) -> list[str]:
        n = self.config.test_episodes
        lines = [f"mean return over {n} seeded test episodes (greedy actions; the maximum is {MAX_RETURN:.0f}, "
                 f"the target 195):"]
        for name, agent in model.agents.items():
            returns = evaluate_returns(agent, n, TEST_SEED)
            lines.append(f"  {name:<10} {returns.mean():6.1f}  (std {returns.std():5.1f}, min {returns.min():3.0f}, "
                         f"episodes at {MAX_RETURN:.0f}: {int((returns == MAX_RETURN).sum())})  {AGENTS[name][1]}")
        random_returns = play(RandomPolicy(), make_cartpole(n, False), TEST_SEED,
                              torch.Generator().manual_seed(TEST_SEED))["rewards"].sum(1)
        lines.append(f"  {'random':<10} {random_returns.mean():6.1f}  (a random policy, for scale)")
        from ..checkpoints import RunDir

        records = [r for r in RunDir(run_dir).read_metrics() if r.get("kind") == "eval"]
        path = plot_learning_curves(records, Path(run_dir) / "learning-curve.png", self.config.eval_episodes)
        if path is not None:
            lines.append(f"learning curves: {path}")
        return lines


def plot_learning_curves(records: list[dict], path: str | Path, episodes: int) -> Path | None:
    """Validation return against environment steps, one line per agent, from the eval records."""
    curves = {}
    for name in AGENTS:
        points = [(r[f"{name}_env_steps"], r[f"{name}_return"]) for r in records
                  if f"{name}_env_steps" in r and f"{name}_return" in r]
        if points:
            curves[name] = points
    if not curves:
        return None
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(7, 4.8))
    for name, points in curves.items():
        steps, returns = zip(*points)
        axes.plot(steps, returns, "o-", markersize=3, label=f"{name}: {AGENTS[name][1]}")
    axes.axhline(195, color="grey", linestyle="--", linewidth=1, label="195 (the target)")
    axes.set_xscale("log")  # the agents play at different rates: a better one's episodes last longer
    axes.set_xlabel("environment steps played by the agent (log scale)")
    axes.set_ylabel(f"mean return, {episodes} validation episodes")
    axes.set_ylim(0, MAX_RETURN * 1.05)
    axes.set_title("CartPole-v1: memory of a partially observed world")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below: never over a line
    return save_figure(figure, path)
