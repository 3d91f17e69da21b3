"""Scripted experts for the arm tasks: smooth functions of the observation.

All three share :class:`GripController`, a damped-least-squares (DLS) velocity
controller on the grip site. The desired grip velocity is proportional to the position
error, ``v = k_pos (p* - p)`` (capped at ``max_speed``), and the desired angular velocity
turns the tool to point down with the fingers closing along a chosen horizontal
direction. Joint velocities follow from the 6x6 Jacobian J computed from the joint
angles in the observation,

    dq = J^T (J J^T + lambda^2 I)^-1 [v; w],

and the action is dq divided by the joint velocity limits (scaled down as a whole if
any entry leaves [-1, 1]). The arm tracks a velocity command within about one control
step, so the closed loop moves a fraction ``k_pos * dt = 0.3`` of the remaining error per
step: well inside the discrete-time stability limit (2), with no overshoot, so the
commands change smoothly from step to step and a learned policy can imitate them.

Task logic (approach above, descend, close, carry) is a function of the observation
too, with blends instead of hard switches where the experts move.
"""
from __future__ import annotations

import numpy as np

from sims.arm import kinematics

CLOSE, OPEN = -1.0, 1.0
DOWN = np.array([0.0, 0.0, -1.0])


class GripController:
    """Joint-velocity actions that move the grip site toward a target pose."""

    def __init__(self, env, k_pos: float = 6.0, k_rot: float = 5.0, max_speed: float = 0.5, damping: float = 0.03):
        unwrapped = env.unwrapped
        self.slices = unwrapped.obs_slices
        self.kin = kinematics.ArmKinematics()
        self.k_pos, self.k_rot, self.max_speed, self.damping = k_pos, k_rot, max_speed, damping

    def part(self, obs: np.ndarray, name: str) -> np.ndarray:
        return np.asarray(obs[self.slices[name]], np.float64)

    def nominal_closing_angle(self, joint_angles: np.ndarray) -> float:
        """Fingers closing across the arm's radial direction (the home pose's posture)."""
        return float(joint_angles[0] + np.pi / 2)

    def action(self, obs: np.ndarray, target: np.ndarray, closing_angle: float, gripper: float) -> np.ndarray:
        q = self.part(obs, "joint_pos")
        pos, rot, jac = self.kin.jacobian(q)
        v = self.k_pos * (target - pos)
        speed = np.linalg.norm(v)
        if speed > self.max_speed:
            v *= self.max_speed / speed
        closing = np.array([np.cos(closing_angle), np.sin(closing_angle), 0.0])
        desired = np.column_stack([np.cross(closing, DOWN), closing, DOWN])
        w = self.k_rot * 0.5 * sum(np.cross(rot[:, i], desired[:, i]) for i in range(3))
        twist = np.concatenate([v, w])
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(6), twist)
        joint_action = dq / kinematics.VELOCITY_LIMITS
        peak = np.abs(joint_action).max()
        if peak > 1.0:
            joint_action /= peak
        return np.append(joint_action, gripper).astype(np.float32)


def nearest_equivalent(angle: float, reference: float, period: float) -> float:
    """``angle + k * period`` closest to ``reference`` (the gripper looks the same turned by period)."""
    return float(reference + (angle - reference + period / 2) % period - period / 2)


def cube_closing_angle(controller: GripController, obs: np.ndarray) -> float:
    """The face normal of the cube (every 90 degrees) nearest the nominal closing direction."""
    nominal = controller.nominal_closing_angle(controller.part(obs, "joint_pos"))
    x_axis = controller.part(obs, "object_rot")[0::2]  # first column of the cube's rotation
    return nearest_equivalent(np.arctan2(x_axis[1], x_axis[0]), nominal, np.pi / 2)


class ReachExpert:
    """Move the grip site straight to the goal, tool down, gripper open."""

    def __init__(self, env):
        self.ctrl = GripController(env)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        c = self.ctrl
        return c.action(obs, c.part(obs, "goal_pos"), c.nominal_closing_angle(c.part(obs, "joint_pos")), OPEN)


class PushExpert:
    """Come down behind the cube (on the far side from the goal), then push it along the
    cube-to-goal line with closed fingers, stopping where the cube sits on the goal.
    The hover height above the table shrinks smoothly as the grip nears the point behind
    the cube, so the arm goes over the cube, never through it."""

    STANDOFF = 0.05      # grip-to-cube distance (m) at the start of a push
    CONTACT = 0.033      # grip-to-cube centre distance while pushing
    PUSH_HEIGHT = 0.024  # grip height: fingertips 1 cm above the table, pushing below the cube centre
    HOVER = 0.08
    SETTLED = 0.02       # cube-to-goal distance below which the push direction is frozen

    def __init__(self, env):
        self.ctrl = GripController(env)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        c = self.ctrl
        grip, obj = c.part(obs, "grip_pos"), c.part(obs, "object_pos")
        goal = obj + c.part(obs, "object_to_goal")
        to_goal = (goal - obj)[:2]
        if np.linalg.norm(to_goal) < self.SETTLED:
            # On the goal: keep pushing along the current grip-to-cube line, which stays
            # well defined, so the approach point does not jump about.
            to_goal = (obj - grip)[:2]
        u = to_goal / max(np.linalg.norm(to_goal), 1e-6)
        behind = obj[:2] - self.STANDOFF * u
        miss = np.linalg.norm(grip[:2] - behind)
        along = float((grip[:2] - obj[:2]) @ u)  # negative when the grip is behind the cube
        lateral = abs(float((grip[:2] - obj[:2]) @ [-u[1], u[0]]))
        low = grip[2] < self.PUSH_HEIGHT + 0.008
        if low and (miss < 0.015 or (along < -0.03 and lateral < 0.012)):
            xy = goal[:2] - self.CONTACT * u  # pushing: the grip stops where the cube is on the goal
            height = self.PUSH_HEIGHT
        else:
            xy = behind
            height = self.PUSH_HEIGHT + self.HOVER * np.clip((miss - 0.015) / 0.03, 0.0, 1.0)
        target = np.array([xy[0], xy[1], height])
        nominal = c.nominal_closing_angle(c.part(obs, "joint_pos"))
        return c.action(obs, target, nearest_equivalent(np.arctan2(u[1], u[0]), nominal, np.pi / 2), CLOSE)


class PickPlaceExpert:
    """Hover above the cube with the fingers open and aligned to its faces, descend as the
    grip centres over it, close, and carry it to the goal once the fingers hold it."""

    HOVER = 0.1

    def __init__(self, env):
        self.ctrl = GripController(env)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        c = self.ctrl
        grip, obj, goal = c.part(obs, "grip_pos"), c.part(obs, "object_pos"), c.part(obs, "goal_pos")
        opening = float(c.part(obs, "gripper_opening")[0])
        offset = obj - grip
        xy_miss = np.linalg.norm(offset[:2])
        angle = cube_closing_angle(c, obs)
        held = xy_miss < 0.02 and abs(offset[2]) < 0.02 and 0.03 < opening < 0.05
        if held:
            return c.action(obs, goal - offset, angle, CLOSE)
        if xy_miss < 0.012 and abs(offset[2]) < 0.012:
            return c.action(obs, obj, angle, CLOSE)  # around the cube: close in place
        height = obj[2] + self.HOVER * np.clip((xy_miss - 0.004) / 0.03, 0.0, 1.0)
        return c.action(obs, np.array([obj[0], obj[1], height]), angle, OPEN)
