"""Scripted experts and the random policy.

An expert is built for one env instance with :func:`make_expert` and maps the
current observation to an action in [-1, 1]. Experts may read the simulator state
(they are privileged), but the reacher expert below is a function of the observation
alone, so a policy that sees only observations can imitate it exactly.
"""
from __future__ import annotations

from typing import Callable

import mujoco
import numpy as np

Policy = Callable[[np.ndarray], np.ndarray]


class RandomPolicy:
    """Uniform actions in [-1, 1], from its own seeded generator."""

    def __init__(self, action_dim: int, seed: int = 0):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


class ReacherExpert:
    """Damped-least-squares reach controller for ``dmc/reacher-*``.

    The desired joint velocity moves the finger along the error ``e`` to the target:
    ``dq = J^T (J J^T + lambda^2 I)^-1 (k_p e)``, and the torque command is a PD law
    on it, ``u = k_v (dq - qvel)``, clipped to [-1, 1]. J is the finger's planar
    Jacobian computed from the joint angles in the observation.
    """

    def __init__(self, env, k_p: float = 20.0, k_v: float = 3.0, damping: float = 0.02):
        unwrapped = env.unwrapped
        self.model = unwrapped.physics.model.ptr
        self.data = mujoco.MjData(self.model)  # scratch data: never touches the env's
        self.finger = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "finger")
        self.k_p, self.k_v, self.damping = k_p, k_v, damping

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        qpos, to_target, qvel = obs[0:2], obs[2:4], obs[4:6]
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        jacp = np.zeros((3, self.model.nv))
        mujoco.mj_jacBody(self.model, self.data, jacp, None, self.finger)
        jac = jacp[:2]
        lam2 = self.damping**2
        dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(2), self.k_p * np.asarray(to_target, np.float64))
        return np.clip(self.k_v * (dq - qvel), -1.0, 1.0).astype(np.float32)


_EXPERTS = {
    "dmc/reacher-easy-v0": ReacherExpert,
    "dmc/reacher-hard-v0": ReacherExpert,
}


def has_expert(env_id: str) -> bool:
    return env_id in _EXPERTS


def make_expert(env_id: str, env) -> Policy:
    """The scripted expert for ``env_id``, bound to ``env``."""
    if env_id not in _EXPERTS:
        raise ValueError(
            f"no scripted expert for {env_id!r}; experts exist for: {', '.join(sorted(_EXPERTS))}."
        )
    return _EXPERTS[env_id](env)


class NoisyPolicy:
    """Mix a base policy with noise: with probability ``epsilon`` a uniform random
    action, otherwise the base action plus Gaussian noise of std ``noise``, clipped."""

    def __init__(self, base: Policy, action_dim: int, noise: float = 0.0, epsilon: float = 0.0, seed: int = 0):
        if noise < 0 or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"noise must be >= 0 and epsilon in [0, 1]; got noise={noise}, epsilon={epsilon}.")
        self.base, self.action_dim = base, action_dim
        self.noise, self.epsilon = noise, epsilon
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        action = np.asarray(self.base(obs), np.float64)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, self.action_dim)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
