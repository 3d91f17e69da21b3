"""Dynamics-gap variants of a task, and a measurement of how far apart two variants are.

A variant is a set of ``gymnasium.make`` keyword arguments, applied to the live
``MjModel`` when the env is created (the installed model files are never edited):

=======================  ===============================================================
``gravity_scale``        multiplies the gravity vector
``friction_scale``       multiplies every geom's sliding, torsional and rolling friction
``mass_scale``           multiplies every body's mass and rotational inertia
``damping_scale``        multiplies every joint's passive damping
``actuator_gain_scale``  multiplies actuator gains (a position servo's kp and kv alike)
``action_noise``         std of Gaussian noise added to each action in [-1, 1] units
``action_latency_steps`` the action applied at step t is the one chosen at t - k
=======================  ===============================================================

Bodies with gravity compensation (the project's arm) keep compensating the *nominal*
weight, as a real arm's controller would: under ``gravity_scale`` g and ``mass_scale``
m the arm feels (g m - 1) of its weight.

:func:`dynamics_gap` measures the mean one-step divergence of the physics state
(qpos, qvel) between two variants started from identical states with identical actions;
:func:`paired_gap` measures a simulator against recorded real data, in the units of the
data's own spread.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import mujoco
import numpy as np

# name -> (lowest, highest) accepted value; the defaults are the nominal model.
RANGES: dict[str, tuple[float, float]] = {
    "gravity_scale": (0.0, 10.0),
    "friction_scale": (0.0, 10.0),
    "mass_scale": (0.01, 100.0),
    "damping_scale": (0.0, 100.0),
    "actuator_gain_scale": (0.01, 100.0),
    "action_noise": (0.0, 2.0),
    "action_latency_steps": (0, 20),
}


@dataclass(frozen=True)
class DynamicsGap:
    """One variant's settings; the defaults leave the task unchanged."""

    gravity_scale: float = 1.0
    friction_scale: float = 1.0
    mass_scale: float = 1.0
    damping_scale: float = 1.0
    actuator_gain_scale: float = 1.0
    action_noise: float = 0.0
    action_latency_steps: int = 0

    @classmethod
    def from_kwargs(cls, env_id: str, kwargs: dict, other_names: tuple[str, ...] = ()) -> "DynamicsGap":
        """Check ``kwargs`` (names, types, ranges) and build the variant; refuse with the valid ones."""
        unknown = sorted(set(kwargs) - set(RANGES))
        if unknown:
            valid = ", ".join([*other_names, *describe_ranges()])
            raise ValueError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))} for {env_id}; valid ones are: {valid}.")
        values = {}
        for name, value in kwargs.items():
            low, high = RANGES[name]
            integer = name == "action_latency_steps"
            ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer, np.floating))
            if isinstance(value, bool) or not ok_type or not low <= value <= high:
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name} must be {kind} in [{low}, {high}] for {env_id}, got {value!r}.")
            values[name] = int(value) if integer else float(value)
        return cls(**values)

    @property
    def is_nominal(self) -> bool:
        return self == DynamicsGap()

    def as_kwargs(self) -> dict:
        """Only the settings that differ from the nominal model."""
        nominal = DynamicsGap()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(nominal, f.name)}

    def apply_to_model(self, model: mujoco.MjModel) -> None:
        """Scale the live model's parameters in place (call once, on a freshly loaded model)."""
        model.opt.gravity[:] = model.opt.gravity * self.gravity_scale
        model.geom_friction[:] = model.geom_friction * self.friction_scale
        model.body_mass[:] = model.body_mass * self.mass_scale
        model.body_inertia[:] = model.body_inertia * self.mass_scale
        compensated = model.body_gravcomp > 0
        weight = self.gravity_scale * self.mass_scale
        model.body_gravcomp[compensated] = model.body_gravcomp[compensated] / weight if weight > 0 else 0.0
        model.dof_damping[:] = model.dof_damping * self.damping_scale
        # Gain and the position-dependent and velocity-dependent bias terms together, so a
        # servo (gain kp, bias -kp q - kv qdot) keeps its set point; motors have zero bias.
        model.actuator_gainprm[:, 0] = model.actuator_gainprm[:, 0] * self.actuator_gain_scale
        model.actuator_biasprm[:, 1:3] = model.actuator_biasprm[:, 1:3] * self.actuator_gain_scale
        data = mujoco.MjData(model)
        mujoco.mj_setConst(model, data)  # derived constants (subtree masses, inverse weights)


def parse_assignments(items: list[str], flag: str) -> dict:
    """``["gravity_scale=2.0", ...]`` from a command line as keyword arguments (numbers;
    ``action_latency_steps`` an integer); names and ranges are checked when the env is made."""
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value) if name.strip() == "action_latency_steps" else float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"{flag} entries must look like name=value with a number (e.g. gravity_scale=2.0), "
                             f"found {item!r}.")
    return out


def describe_ranges() -> list[str]:
    return [f"{name} in [{low}, {high}]" for name, (low, high) in RANGES.items()]


class ActionChannel:
    """What happens to an action between the policy and the actuators: Gaussian noise
    (drawn from the env's seeded generator) and a delay of ``latency`` control steps.
    The delay line starts each episode filled with the neutral action (zeros)."""

    def __init__(self, action_dim: int, noise: float = 0.0, latency: int = 0):
        self.noise = noise
        self.queue = np.zeros((latency, action_dim))

    def reset(self) -> None:
        self.queue[:] = 0.0

    def __call__(self, action: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.noise > 0:
            action = np.clip(action + rng.normal(0.0, self.noise, action.shape), -1.0, 1.0)
        if len(self.queue):
            delayed = self.queue[0].copy()
            self.queue[:-1] = self.queue[1:]
            self.queue[-1] = action
            return delayed
        return action

    def state(self) -> np.ndarray:
        return self.queue.ravel().copy()

    def set_state(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, np.float64)
        if flat.size != self.queue.size:
            raise ValueError(f"sim_state['action_queue'] must hold {self.queue.size} values (latency x action size), got {flat.size}.")
        self.queue[:] = flat.reshape(self.queue.shape)


def dynamics_gap(env_id: str, variant: dict, reference: dict | None = None, states: int = 200,
                 policy: str = "random", seed: int = 0) -> float:
    """Mean one-step divergence of (qpos, qvel) between two variants of ``env_id``.

    The ``reference`` variant (nominal by default) is rolled out with ``policy``
    ('random' or 'scripted'); at each of ``states`` visited states the ``variant`` env is
    set to the identical state, both take the same action, and the Euclidean distance of
    the resulting (qpos, qvel) vectors is averaged.
    """
    import sims
    from sims.experts import RandomPolicy, make_expert

    if policy not in ("random", "scripted"):
        raise ValueError(f"policy must be 'random' or 'scripted', got {policy!r}.")
    env_a, env_b = sims.make(env_id, **(reference or {})), sims.make(env_id, **variant)
    try:
        act_dim = int(np.prod(env_a.action_space.shape))
        act = RandomPolicy(act_dim, seed=seed) if policy == "random" else make_expert(env_id, env_a)
        env_b.reset(seed=seed)
        obs, info = env_a.reset(seed=seed)
        gaps, episode = [], 0
        for _ in range(states):
            env_b.unwrapped.set_sim_state(info["sim_state"])
            action = act(obs)
            obs, _, terminated, truncated, info = env_a.step(action)
            env_b.step(action)
            gaps.append(np.linalg.norm(env_a.unwrapped.physics_state() - env_b.unwrapped.physics_state()))
            if terminated or truncated:
                episode += 1
                obs, info = env_a.reset(seed=seed + episode)
        return float(np.mean(gaps))
    finally:
        env_a.close()
        env_b.close()



def replay(env_id: str, variant: dict, states: dict, actions: np.ndarray, seed: int = 0) -> np.ndarray:
    """The next observation of ``sims.make(env_id, **variant)`` from each recorded state
    (``states``: per-step sim_state arrays) under each action, as float64 [N, obs]."""
    import sims

    env = sims.make(env_id, **variant)
    try:
        env.reset(seed=seed)  # seeds the simulator's own noise (action_noise)
        out = []
        for i in range(len(actions)):
            env.unwrapped.set_sim_state({k: np.asarray(v[i]) for k, v in states.items()})
            out.append(np.asarray(env.step(actions[i])[0], np.float64))
    finally:
        env.close()
    return np.stack(out)


def paired_gap(real_env: str, sim_env: dict, dataset: dict, transitions: int = 1000, seed: int = 0) -> dict:
    """How far a simulator's one-step dynamics are from recorded real data.

    ``dataset`` holds arrays of the real transitions: ``obs``, ``action``, ``next_obs``
    and ``sim_state`` (a dict of per-step arrays, as ``info["sim_state"]`` gives them),
    optionally ``env_id`` (``agent.store.cache.sim_state_transitions`` reads them from a
    store). For ``transitions`` rows drawn from it, the simulator ``sims.make(real_env,
    **sim_env)`` is restored to the row's state, replays its action, and its next
    observation is compared with the recorded one per dimension, in units of the data's
    observation std (plus 1e-3, the learners' normalizer's floor). ``gap`` is the mean over
    rows of the root mean square over dimensions: 0 when the simulator reproduces the data.
    """
    if dataset.get("env_id", real_env) != real_env:
        raise ValueError(f"paired_gap: the dataset was collected in {dataset['env_id']}, not {real_env}; "
                         f"pass the env the data came from.")
    states = dataset.get("sim_state") or {}
    if not states:
        raise ValueError("paired_gap: the dataset has no sim_state to restore the simulator from; "
                         "collect it with save_sim_state (agent collect's default).")
    obs, action, next_obs = (np.asarray(dataset[k]) for k in ("obs", "action", "next_obs"))
    if len(obs) == 0:
        raise ValueError("paired_gap: the dataset has no transitions.")
    rows = np.sort(np.random.default_rng(seed).choice(len(obs), size=min(transitions, len(obs)), replace=False))
    sim_next = replay(real_env, sim_env, {k: np.asarray(v)[rows] for k, v in states.items()}, action[rows], seed)
    diffs = (sim_next - next_obs[rows]) / (obs.std(0) + 1e-3)
    return {"gap": float(np.sqrt((diffs**2).mean(1)).mean()), "per_dim": np.abs(diffs).mean(0).tolist(),
            "transitions": int(len(rows)), "sim": dict(sim_env)}
