"""CartPole-v1 from gymnasium, whole or with its velocities hidden: the partially observed world of
the control task (tasks/control.py).

CartPole's state is (cart position, cart velocity, pole angle, pole angular velocity). Hiding the
two velocities leaves what a single snapshot shows, position and angle: a policy that reacts to
the current observation alone cannot tell a pole swinging up from one falling down, so it must
carry its own state (the lecture's "state representation in reinforcement learning").

gymnasium is optional (`pip install 'rnnlab[control]'`); it is imported when an environment is
made, and its absence is one clear error naming the install command.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MissingDependencyError", "require_gymnasium", "hide_velocities", "make_cartpole", "ENV_ID",
           "STATE_NAMES", "VISIBLE", "MAX_RETURN"]

ENV_ID = "CartPole-v1"
GYMNASIUM = "gymnasium==1.4.0"
STATE_NAMES = ("cart position", "cart velocity", "pole angle", "pole angular velocity")
VISIBLE = [0, 2]  # position and angle: what a snapshot shows
MAX_RETURN = 500.0  # CartPole-v1 ends (truncates) an episode after 500 steps, one reward each


class MissingDependencyError(ImportError, ValueError):
    """An optional package is not installed (a ValueError too, so the CLI prints it in one line)."""


def require_gymnasium():
    """The gymnasium module, or MissingDependencyError with the install command."""
    try:
        import gymnasium
    except ImportError:
        raise MissingDependencyError(f"the control task needs gymnasium; install it with: pip install "
                                     f"'{GYMNASIUM}' (or pip install 'rnnlab[control]')") from None
    return gymnasium


def hide_velocities(env: Any) -> Any:
    """A vectorised CartPole whose observations keep position and angle only: (N, 4) -> (N, 2)."""
    gym = require_gymnasium()
    from gymnasium.wrappers.vector import TransformObservation

    full = env.single_observation_space
    if not isinstance(full, gym.spaces.Box) or full.shape != (len(STATE_NAMES),):
        raise ValueError(f"hide_velocities: env must observe CartPole's {len(STATE_NAMES)} state variables; "
                         f"got observation space {full}")
    visible = gym.spaces.Box(full.low[VISIBLE], full.high[VISIBLE], dtype=np.float32)
    return TransformObservation(env, lambda observations: observations[:, VISIBLE],
                                single_observation_space=visible)


def make_cartpole(num_envs: int, hidden_velocities: bool) -> Any:
    """`num_envs` CartPole-v1 games stepped together (gymnasium's numpy-vectorised CartPole, which
    starts a finished game anew on the step after it ends), its velocities hidden if asked."""
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"make_cartpole: num_envs must be an int >= 1; got {num_envs!r}")
    gym = require_gymnasium()
    env = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point")
    return hide_velocities(env) if hidden_velocities else env
