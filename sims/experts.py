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

from sims.arm.experts import PickPlaceExpert, PushExpert, ReachExpert

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

    The desired joint velocity moves the finger along its error ``e`` to the target,
    ``dq = J^T (J J^T + lambda^2 I)^-1 (k_p e)``, capped at ``max_speed``. The torque
    that closes a fraction ``alpha`` of the velocity error in one control step follows
    from the joint-space inertia M: ``u = M (alpha / dt) (dq - qvel) / gear``, clipped
    to [-1, 1]. Because it inverts the one-step response instead of using a large
    velocity gain, the command is smooth rather than bang-bang, which makes it a
    demonstrator that a learned policy can imitate. J and M are computed from the
    joint angles in the observation, so the action is a function of the observation.
    """

    def __init__(self, env, k_p: float = 30.0, alpha: float = 0.5, damping: float = 0.05, max_speed: float = 8.0):
        unwrapped = env.unwrapped
        self.model = unwrapped.physics.model.ptr
        self.data = mujoco.MjData(self.model)  # scratch data: never touches the env's
        self.finger = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "finger")
        self.gear = self.model.actuator_gear[:, 0].copy()
        self.dt = 1.0 / unwrapped.control_rate
        self.k_p, self.alpha, self.damping, self.max_speed = k_p, alpha, damping, max_speed

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        qpos, to_target, qvel = obs[0:2], obs[2:4], np.asarray(obs[4:6], np.float64)
        model, data = self.model, self.data
        data.qpos[:] = qpos
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        mujoco.mj_crb(model, data)
        jacp = np.zeros((3, model.nv))
        mujoco.mj_jacBody(model, data, jacp, None, self.finger)
        jac = jacp[:2]
        inertia = np.zeros((model.nv, model.nv))
        mujoco.mj_fullM(model, data, inertia)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(2), self.k_p * np.asarray(to_target, np.float64))
        speed = np.abs(dq).max()
        if speed > self.max_speed:
            dq *= self.max_speed / speed
        torque = inertia @ (self.alpha / self.dt * (dq - qvel))
        return np.clip(torque / self.gear, -1.0, 1.0).astype(np.float32)


_EXPERTS = {
    "dmc/reacher-easy-v0": ReacherExpert,
    "dmc/reacher-hard-v0": ReacherExpert,
    "sims/ArmReach-v0": ReachExpert,
    "sims/ArmPush-v0": PushExpert,
    "sims/ArmPickPlace-v0": PickPlaceExpert,
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
