"""The arm tasks as gymnasium envs (``sims/ArmReach-v0``, ``sims/ArmPush-v0``, ``sims/ArmPickPlace-v0``).

Actions (7 numbers in [-1, 1]): six joint-velocity commands as fractions of each
joint's velocity limit, turned into a position-servo target ``q + a * v_max * dt``
(clipped to the joint range), and the gripper opening (-1 closed, +1 open). This is
what the ROS 2 bridge sends as forward position commands.

Observations: the arm's part (joint angles and velocities, gripper opening, grip-site
position and the first two columns of its rotation matrix), then the task's part.
``env.unwrapped.obs_slices`` names every part, so experts and tests never use raw
indices. An episode never terminates; it is truncated at the task's time limit.

``info["sim_state"]``: ``physics`` (MuJoCo's full integration state), ``goal``,
``elapsed_steps`` and, with ``action_latency_steps``, ``action_queue``;
:meth:`ArmEnv.set_sim_state` restores all of it.
"""
from __future__ import annotations

import mujoco
import numpy as np
from gymnasium import Env, spaces

from sims.arm import kinematics
from sims.arm.pick_place import PickPlaceTask
from sims.arm.push import PushTask
from sims.arm.reach import ReachTask
from sims.gaps import ActionChannel, DynamicsGap

TASKS = {"reach": ReachTask, "push": PushTask, "pick_place": PickPlaceTask}
_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
_OWN_KWARGS = ("reward", "control_rate", "time_limit", "render_mode", "width", "height", "camera")


class ArmPhysics:
    """Named accessors on the arm model's ``MjModel`` / ``MjData``."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model, self.data = model, data
        self.kin = kinematics.ArmKinematics(model)
        self.qpos_index, self.dof_index = self.kin.qpos_index, self.kin.dof_index
        fingers = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in kinematics.GRIPPER_JOINTS]
        self.finger_qpos = np.array([model.jnt_qposadr[j] for j in fingers])
        self.finger_dof = np.array([model.jnt_dofadr[j] for j in fingers])
        self.arm_actuators = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in kinematics.JOINT_NAMES])
        self.gripper_actuator = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, kinematics.GRIPPER_ACTUATOR)
        self.grip_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, kinematics.EE_SITE)
        self.goal_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self.object_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "object")
        if self.object_body >= 0:
            joint = model.body_jntadr[self.object_body]
            self.object_qpos, self.object_dof = model.jnt_qposadr[joint], model.jnt_dofadr[joint]

    # -- reading (views into the live data: copy before keeping them across steps) ------
    def joint_angles(self) -> np.ndarray:
        return self.data.qpos[self.qpos_index]

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self.dof_index]

    def gripper_opening(self) -> float:
        """Distance between the fingers' inner faces (m)."""
        q = self.data.qpos
        return float(q[self.finger_qpos[0]] + q[self.finger_qpos[1]])

    def grip_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.grip_site]

    def grip_xmat(self) -> np.ndarray:
        return self.data.site_xmat[self.grip_site].reshape(3, 3)

    def object_pos(self) -> np.ndarray:
        return self.data.xpos[self.object_body]

    def object_xmat(self) -> np.ndarray:
        return self.data.xmat[self.object_body].reshape(3, 3)

    def goal_pos(self) -> np.ndarray:
        return self.model.site_pos[self.goal_site]

    # -- writing (episode set-up) ---------------------------------------------------
    def set_arm(self, joint_angles: np.ndarray, gripper_opening: float) -> None:
        self.data.qpos[self.qpos_index] = joint_angles
        self.data.qpos[self.finger_qpos] = gripper_opening / 2
        self.data.ctrl[self.arm_actuators] = joint_angles
        self.data.ctrl[self.gripper_actuator] = gripper_opening / 2

    def set_object(self, pos: np.ndarray, yaw: float) -> None:
        adr = self.object_qpos
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self.data.qvel[self.object_dof:self.object_dof + 6] = 0.0

    def set_goal(self, pos: np.ndarray) -> None:
        self.model.site_pos[self.goal_site] = pos


class ArmEnv(Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str, reward: str = "dense", control_rate: float = 20.0, time_limit: int | None = None,
                 render_mode: str | None = None, width: int = 480, height: int = 480, camera: str = "front", **gap):
        if task not in TASKS:
            raise ValueError(f"unknown arm task {task!r}; tasks are: {', '.join(TASKS)}.")
        self.task = TASKS[task]()
        self.env_id = self.task.env_id
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward must be 'dense' or 'sparse' for {self.env_id}, got {reward!r}.")
        self.gap = DynamicsGap.from_kwargs(self.env_id, gap, _OWN_KWARGS)
        self.model = kinematics.load_model(kinematics.MODEL_DIR / self.task.xml)
        self.gap.apply_to_model(self.model)
        self.data = mujoco.MjData(self.model)
        self.physics = ArmPhysics(self.model, self.data)
        substeps = round(1.0 / (control_rate * self.model.opt.timestep)) if control_rate > 0 else 0
        if substeps < 1:
            raise ValueError(f"control_rate must be in (0, {1 / self.model.opt.timestep:g}] Hz for {self.env_id}, got {control_rate}.")
        self.substeps = substeps
        self.control_dt = substeps * self.model.opt.timestep
        self.control_rate = 1.0 / self.control_dt
        self._max_joint_step = kinematics.VELOCITY_LIMITS * self.control_dt
        self.time_limit = int(time_limit if time_limit is not None else round(self.task.duration * self.control_rate))
        if self.time_limit < 1:
            raise ValueError(f"time_limit must be at least 1 step for {self.env_id}, got {time_limit}.")
        self.sparse = reward == "sparse"
        self.defines_success = True
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.channel = ActionChannel(7, self.gap.action_noise, self.gap.action_latency_steps)
        self._steps = 0
        self.physics.set_arm(kinematics.HOME, kinematics.GRIPPER_OPENING_MAX)
        self.task.initialize_episode(self.physics, np.random.default_rng(0))
        mujoco.mj_forward(self.model, self.data)
        parts = self._observation_parts()
        self.obs_slices: dict[str, slice] = {}
        start = 0
        for name, value in parts.items():
            self.obs_slices[name] = slice(start, start + value.size)
            start += value.size
        self.observation_space = spaces.Box(-np.inf, np.inf, (start,), np.float32)
        self.render_mode = render_mode
        self.metadata = dict(self.metadata, render_fps=int(round(self.control_rate)))
        self._render_size, self._camera, self._renderer = (height, width), camera, None

    # -- observation, reward -----------------------------------------------------------
    def _observation_parts(self) -> dict[str, np.ndarray]:
        p = self.physics
        arm = {
            "joint_pos": p.joint_angles(), "joint_vel": p.joint_velocities(),
            "gripper_opening": np.array([p.gripper_opening()]),
            "grip_pos": p.grip_pos(), "grip_rot": p.grip_xmat()[:, :2].ravel(),
        }
        return {**arm, **self.task.get_observation(p)}

    def _observation(self) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in self._observation_parts().values()], dtype=np.float32)

    def _info(self) -> dict:
        return {"success": self.task.evaluate(self.physics)[1], "sim_state": self.get_sim_state()}

    # -- gymnasium API ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        rng = self.np_random
        joints = np.clip(kinematics.HOME + rng.uniform(-0.1, 0.1, 6), self.physics.kin.lower, self.physics.kin.upper)
        self.physics.set_arm(joints, kinematics.GRIPPER_OPENING_MAX)
        self.task.initialize_episode(self.physics, rng)
        mujoco.mj_forward(self.model, self.data)
        self.channel.reset()
        self._steps = 0
        return self._observation(), self._info()

    def step(self, action):
        action = np.asarray(action, np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.env_id} expects actions of shape {self.action_space.shape}, got {action.shape}.")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.env_id} got a non-finite action {action.tolist()}.")
        applied = self.channel(np.minimum(np.maximum(action, -1.0), 1.0), self.np_random)
        p = self.physics
        target = p.joint_angles() + applied[:6] * self._max_joint_step
        self.data.ctrl[p.arm_actuators] = np.minimum(np.maximum(target, p.kin.lower), p.kin.upper)
        self.data.ctrl[p.gripper_actuator] = (applied[6] + 1.0) * 0.25 * kinematics.GRIPPER_OPENING_MAX
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        mujoco.mj_kinematics(self.model, self.data)  # poses of the new qpos (mj_step leaves the previous ones)
        self._steps += 1
        reward, success = self.task.evaluate(p)
        reward = float(success) if self.sparse else reward
        truncated = self._steps >= self.time_limit
        info = {"success": bool(success), "sim_state": self.get_sim_state()}
        return self._observation(), reward, False, truncated, info

    def render(self):
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self._render_size)
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- exact state save / restore -------------------------------------------------------
    def physics_state(self) -> np.ndarray:
        """(qpos, qvel): what :func:`sims.gaps.dynamics_gap` compares."""
        return np.concatenate([self.data.qpos, self.data.qvel])

    def get_sim_state(self) -> dict[str, np.ndarray]:
        physics = np.empty(mujoco.mj_stateSize(self.model, _STATE_SPEC), np.float64)
        mujoco.mj_getState(self.model, self.data, physics, _STATE_SPEC)
        state = {"physics": physics, "goal": self.physics.goal_pos().copy(), "elapsed_steps": np.array([float(self._steps)])}
        if self.gap.action_latency_steps:
            state["action_queue"] = self.channel.state()
        return state

    def set_sim_state(self, sim_state: dict[str, np.ndarray]) -> np.ndarray:
        """Restore a state from ``info["sim_state"]``; returns the observation there."""
        physics = np.asarray(sim_state["physics"], np.float64)
        expected = mujoco.mj_stateSize(self.model, _STATE_SPEC)
        if physics.shape != (expected,):
            raise ValueError(f"{self.env_id} sim_state['physics'] must have shape ({expected},), got {physics.shape}.")
        mujoco.mj_setState(self.model, self.data, physics, _STATE_SPEC)
        self.physics.set_goal(np.asarray(sim_state["goal"], np.float64))
        self._steps = int(np.asarray(sim_state["elapsed_steps"]).ravel()[0])
        if "action_queue" in sim_state:
            self.channel.set_state(sim_state["action_queue"])
        else:  # a state saved without latency: nothing pending
            self.channel.reset()
        mujoco.mj_forward(self.model, self.data)
        return self._observation()
