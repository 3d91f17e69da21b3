"""The arm tasks as the bridge sees them: the robot's state rebuilt from topics.

:class:`TopicPhysics` offers the reading accessors of ``sims.arm.env.ArmPhysics`` (joint
angles and velocities, gripper opening, grip-site pose by forward kinematics, object
pose, goal), filled from ``/joint_states`` and ``/object_pose`` instead of a running
simulation. The sims task classes read it unchanged, so observation, reward and success
of ``robot/Arm<Task>-v0`` are computed by the same code as ``sims/Arm<Task>-v0``.

Both sides of the bridge derive an episode's start from its reset seed the way
``ArmEnv.reset`` does (:func:`episode_start`): the simulated driver places the object,
the env knows the goal and the arm's start pose, and a sims env reset with the same
seed starts from the same state.
"""
from __future__ import annotations

import mujoco
import numpy as np
from gymnasium.utils import seeding

from sims.arm import kinematics
from sims.arm.env import TASKS

# How an action in [-1, 1] becomes a gripper finger target (m), as sims.arm.env.ArmEnv.step.
FINGER_TARGET_PER_ACTION = 0.25 * kinematics.GRIPPER_OPENING_MAX
START_NOISE = 0.1  # rad: ArmEnv.reset's uniform noise around HOME


def make_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown arm task {name!r}; tasks are: {', '.join(TASKS)}.")
    return TASKS[name]()


def task_has_object(task) -> bool:
    """Whether the task's model holds the cube (reach has only a goal)."""
    model = kinematics.load_model(kinematics.MODEL_DIR / task.xml)
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "object") >= 0


def quat_to_mat(wxyz: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(wxyz, np.float64))
    return mat.reshape(3, 3)


class TopicPhysics:
    """``ArmPhysics``' reading accessors over the latest messages (module docstring)."""

    def __init__(self, kin: kinematics.ArmKinematics):
        self.kin = kin
        self.joints = kinematics.HOME.copy()
        self.velocities = np.zeros(6)
        self.opening = kinematics.GRIPPER_OPENING_MAX
        self._grip_pos, self._grip_mat = kin.forward(self.joints)
        self._object_pos = np.zeros(3)
        self._object_mat = np.eye(3)
        self._goal = np.zeros(3)
        self.requested_object: tuple[np.ndarray, float] | None = None

    # -- feeding -------------------------------------------------------------------
    def set_joint_state(self, joints: np.ndarray, velocities: np.ndarray, opening: float) -> None:
        self.joints, self.velocities, self.opening = np.asarray(joints, np.float64), np.asarray(velocities, np.float64), float(opening)
        self._grip_pos, self._grip_mat = self.kin.forward(self.joints)

    def set_object_pose(self, pos: np.ndarray, quat_wxyz: np.ndarray) -> None:
        self._object_pos = np.asarray(pos, np.float64)
        self._object_mat = quat_to_mat(quat_wxyz)

    # -- ArmPhysics reading API ------------------------------------------------------
    def joint_angles(self) -> np.ndarray:
        return self.joints

    def joint_velocities(self) -> np.ndarray:
        return self.velocities

    def gripper_opening(self) -> float:
        return self.opening

    def grip_pos(self) -> np.ndarray:
        return self._grip_pos

    def grip_xmat(self) -> np.ndarray:
        return self._grip_mat

    def object_pos(self) -> np.ndarray:
        return self._object_pos

    def object_xmat(self) -> np.ndarray:
        return self._object_mat

    def goal_pos(self) -> np.ndarray:
        return self._goal

    # -- what a task's initialize_episode writes -------------------------------------------
    def set_goal(self, pos: np.ndarray) -> None:
        self._goal = np.asarray(pos, np.float64).copy()

    def set_object(self, pos: np.ndarray, yaw: float) -> None:
        """Recorded, not applied: on a robot the object is placed by the reset request."""
        self.requested_object = (np.asarray(pos, np.float64).copy(), float(yaw))


def arm_observation(physics) -> dict[str, np.ndarray]:
    """The arm's part of an observation, in the order ``ArmEnv._observation_parts`` uses."""
    return {
        "joint_pos": physics.joint_angles(), "joint_vel": physics.joint_velocities(),
        "gripper_opening": np.array([physics.gripper_opening()]),
        "grip_pos": physics.grip_pos(), "grip_rot": physics.grip_xmat()[:, :2].ravel(),
    }


def observation_parts(physics, task) -> dict[str, np.ndarray]:
    return {**arm_observation(physics), **task.get_observation(physics)}


def episode_start(task, physics, seed: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Draw an episode's start from ``seed`` as ``ArmEnv.reset`` does: the arm's start
    joints (returned), then the task's object and goal (written into ``physics``)."""
    rng, _ = seeding.np_random(int(seed))
    joints = np.clip(kinematics.HOME + rng.uniform(-START_NOISE, START_NOISE, 6), lower, upper)
    task.initialize_episode(physics, rng)
    return joints


def action_to_target(action: np.ndarray, joints: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    """A sims action (clipped to [-1, 1]) as forward-position targets: joints ``q + a v_max dt``,
    gripper finger ``(a + 1) / 4 * opening_max``; non-finite entries stay non-finite."""
    action = np.asarray(action, np.float64)
    a = np.where(np.isfinite(action), np.clip(action, -1.0, 1.0), action)
    return np.append(joints + a[:6] * max_step, (a[6] + 1.0) * FINGER_TARGET_PER_ACTION)


def target_to_action(target: np.ndarray, joints: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    """The action in [-1, 1] that :func:`action_to_target` maps onto ``target`` (what the
    learner is told was executed)."""
    a = np.append((np.asarray(target[:6]) - joints) / max_step, target[6] / FINGER_TARGET_PER_ACTION - 1.0)
    return np.clip(a, -1.0, 1.0)
