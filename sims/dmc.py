"""dm_control suite tasks as gymnasium envs (``dmc/<domain>-<task>-v0``).

Observations are the suite's observation dict flattened in its own key order into
one float32 vector; actions are scaled from [-1, 1] to the actuators' control range.
An episode that the suite ends with discount 0 is ``terminated``; one it ends at its
time limit (discount 1) is ``truncated``.

``info["sim_state"]`` restores the physics exactly through :meth:`DMCEnv.set_sim_state`:
``physics`` is MuJoCo's full integration state (time, qpos, qvel, act, warm start,
controls, applied forces, mocap), ``task`` holds the model entries that the task
randomizes at episode start (the reacher's target position, for example),
``task_seed`` the seed the task drew its episode from (restoring a state of another
episode re-runs the task's episode set-up with it, which also restores what ``task``
does not hold: a heightfield's terrain, actuator gains, the task's own attributes),
and ``action_queue`` the pending actions when ``action_latency_steps`` is set.

Dynamics-gap keyword arguments (``gravity_scale``, ``mass_scale``, ...; see
:mod:`sims.gaps`) are applied to the live model when the env is created.
"""
from __future__ import annotations

import logging

import mujoco
import numpy as np
from dm_control import suite
from gymnasium import Env, spaces

from sims.gaps import ActionChannel, DynamicsGap
from sims.reference import success_fn

# Model fields that suite tasks randomize in ``initialize_episode``.
_TASK_MODEL_FIELDS = ("geom_pos", "geom_size", "geom_quat", "site_pos", "site_size", "body_pos", "body_quat")
_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class _QuietSuiteAssets(logging.Filter):
    """dm_control's own cheetah/walker assets use an MJCF attribute MuJoCo 3.17 deprecates;
    the warning is about dm_control's files, not the user's, so it is not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "settotalmass" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietSuiteAssets())


class DMCEnv(Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, domain: str, task: str, render_mode: str | None = None,
                 camera_id: int = 0, width: int = 480, height: int = 480, **gap):
        self.env_id = f"dmc/{domain}-{task}-v0"
        self.domain, self.task = domain, task
        self.gap = DynamicsGap.from_kwargs(self.env_id, gap, ("render_mode", "camera_id", "width", "height"))
        self._env = suite.load(domain, task, task_kwargs={"random": 0})
        self.gap.apply_to_model(self._env.physics.model.ptr)
        self._obs_keys = list(self._env.observation_spec().keys())
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        aspec = self._env.action_spec()
        self._act_low = np.asarray(aspec.minimum, np.float64)
        self._act_high = np.asarray(aspec.maximum, np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, aspec.shape, np.float32)
        self.channel = ActionChannel(int(np.prod(aspec.shape)), self.gap.action_noise, self.gap.action_latency_steps)
        self.control_rate = 1.0 / self._env.control_timestep()
        self.metadata = dict(self.metadata, render_fps=int(round(self.control_rate)))
        self.render_mode = render_mode
        self._camera_id, self._width, self._height = camera_id, width, height
        model = self._env.physics.model
        self._pristine = {f: getattr(model, f).copy() for f in _TASK_MODEL_FIELDS}
        self._task_rows: list[tuple[str, np.ndarray]] | None = None
        self._task_seed = -1  # the seed of the episode the model holds now
        self._success = success_fn(self.env_id)
        self.defines_success = self._success is not None

    # -- named accessors -------------------------------------------------------------
    @property
    def physics(self):
        return self._env.physics

    def _flat_obs(self, observation) -> np.ndarray:
        return np.concatenate(
            [np.asarray(observation[k], np.float64).ravel() for k in self._obs_keys]
        ).astype(np.float32)

    def _info(self) -> dict:
        return {"success": bool(self._success(self.physics)) if self._success else False,
                "sim_state": self.get_sim_state()}

    # -- gymnasium API ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # The task draws its episode from its own RandomState; one seed per episode, drawn
        # from gymnasium's seeded generator, fixes the episode and lets set_sim_state redo it.
        ts = self._start_task_episode(int(self.np_random.integers(2**31)))
        self.channel.reset()
        if self._task_rows is None:
            self._task_rows = self._find_randomized_rows()
        return self._flat_obs(ts.observation), self._info()

    def step(self, action):
        action = np.asarray(action, np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.env_id} expects actions of shape {self.action_space.shape}, got {action.shape}.")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.env_id} got a non-finite action {action.tolist()}.")
        action = self.channel(np.clip(action, -1.0, 1.0), self.np_random)
        scaled = self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)
        ts = self._env.step(scaled)
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(ts.last() and not terminated)
        reward = float(ts.reward or 0.0)
        return self._flat_obs(ts.observation), reward, terminated, truncated, self._info()

    def render(self):
        return self.physics.render(self._height, self._width, camera_id=self._camera_id)

    def close(self):
        self._env.close()

    # -- exact state save / restore --------------------------------------------------
    def _start_task_episode(self, task_seed: int):
        self._env.task._random = np.random.RandomState(task_seed)
        self._task_seed = task_seed
        return self._env.reset()

    def _find_randomized_rows(self) -> list[tuple[str, np.ndarray]]:
        model = self.physics.model
        rows = []
        for field in _TASK_MODEL_FIELDS:
            changed = np.flatnonzero(np.any(getattr(model, field) != self._pristine[field], axis=-1))
            if changed.size:
                rows.append((field, changed))
        return rows

    def get_sim_state(self) -> dict[str, np.ndarray]:
        model, data = self.physics.model, self.physics.data
        state = np.empty(mujoco.mj_stateSize(model.ptr, _STATE_SPEC), np.float64)
        mujoco.mj_getState(model.ptr, data.ptr, state, _STATE_SPEC)
        task = [getattr(model, f)[rows].ravel() for f, rows in (self._task_rows or [])]
        out = {"physics": state, "task": np.concatenate(task) if task else np.zeros(0),
               "task_seed": np.array([float(self._task_seed)])}
        if self.gap.action_latency_steps:
            out["action_queue"] = self.channel.state()
        return out

    def physics_state(self) -> np.ndarray:
        """(qpos, qvel): what :func:`sims.gaps.dynamics_gap` compares."""
        data = self.physics.data
        return np.concatenate([data.qpos, data.qvel])

    def set_sim_state(self, sim_state: dict[str, np.ndarray]) -> np.ndarray:
        """Restore a state from ``info["sim_state"]``; returns the observation there."""
        model, data = self.physics.model, self.physics.data
        physics = np.asarray(sim_state["physics"], np.float64)
        expected = mujoco.mj_stateSize(model.ptr, _STATE_SPEC)
        if physics.shape != (expected,):
            raise ValueError(f"{self.env_id} sim_state['physics'] must have shape ({expected},), got {physics.shape}.")
        if self._task_rows is None:
            self.reset()
        if "task_seed" in sim_state:  # states saved before this key restore the task rows alone
            task_seed = int(np.asarray(sim_state["task_seed"], np.float64).ravel()[0])
            if task_seed >= 0 and task_seed != self._task_seed:
                self._start_task_episode(task_seed)  # redraws the episode's model and task attributes
        offset, task = 0, np.asarray(sim_state.get("task", np.zeros(0)), np.float64)
        for field, rows in self._task_rows:
            block = getattr(model, field)[rows]
            block[...] = task[offset:offset + block.size].reshape(block.shape)
            getattr(model, field)[rows] = block
            offset += block.size
        mujoco.mj_setState(model.ptr, data.ptr, physics, _STATE_SPEC)
        if "action_queue" in sim_state:
            self.channel.set_state(sim_state["action_queue"])
        else:  # a state saved without latency: nothing pending
            self.channel.reset()
        self.physics.forward()
        # dm_control counts control steps for its time limit; keep it consistent.
        self._env._step_count = int(round(self.physics.data.time / self._env.control_timestep()))
        self._env._reset_next_step = False
        return self._flat_obs(self._env.task.get_observation(self.physics))
