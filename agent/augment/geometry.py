"""Exact symmetries of the tasks, applied to observations, actions and simulator states.

Every transform here is a :class:`PlanarMap`: an optional mirror across the arm's
symmetry plane (world y -> -y, the xz plane through the base), then a rotation by
``angle`` about the base's vertical axis, plus shifts of the goal and (for the arm's
cube) of the object. Why these keep the dynamics valid:

* The arm's model is mirror-symmetric about its xz plane and its base joint turns about
  the world z axis, so mirroring or rotating a whole state (arm, cube, goal) gives a
  state whose physics is the mirrored or rotated physics (the table is large and flat,
  friction cones are elliptic, hence isotropic). For a joint with axis a, mirroring
  maps the rotation ``R(a, q)`` to ``M R(a, q) M = R(M a, -q)``: angles about y stay,
  angles about z (pan, forearm roll, tool roll) change sign, and so do their actions.
* The goal is a marker without physics, so moving it changes rewards, never dynamics.
* A cube that rests untouched for the whole segment may be moved on the table.

A map that would leave the region where the symmetry holds (pan past its joint
limit, cube or gripper off the table, a mirror while the gripper is not resting wide
open: it is driven through one finger) is refused with a reason, never applied.
Rewards and success of the transformed steps are recomputed by the task's own
functions (``task.evaluate`` of the arm tasks, ``get_reward`` of dm_control's
reacher) on a view that reads the transformed observation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from agent.augment.segment import Segment

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
_MIRROR = np.diag([1.0, -1.0, 1.0])


@dataclass
class PlanarMap:
    """p -> Rz(angle) M^reflect p for the scene, plus goal and cube shifts (world frame, m)."""

    reflect: bool = False
    angle: float = 0.0
    goal_shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    object_shift: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return rot @ _MIRROR if self.reflect else rot

    def moves_object(self) -> bool:
        return bool(np.any(self.object_shift != 0))


def state_layout(model) -> dict[str, slice]:
    """Where each component sits in MuJoCo's integration-state vector."""
    out, start, bit = {}, 0, 1
    names = {mujoco.mjtState.mjSTATE_TIME: "time", mujoco.mjtState.mjSTATE_QPOS: "qpos",
             mujoco.mjtState.mjSTATE_QVEL: "qvel", mujoco.mjtState.mjSTATE_ACT: "act",
             mujoco.mjtState.mjSTATE_WARMSTART: "warmstart", mujoco.mjtState.mjSTATE_CTRL: "ctrl"}
    while bit <= int(_STATE_SPEC):
        if bit & int(_STATE_SPEC):
            size = mujoco.mj_stateSize(model, bit)
            name = names.get(mujoco.mjtState(bit), f"bit{bit}")
            out[name] = slice(start, start + size)
            start += size
        bit <<= 1
    return out


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton products of (..., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def _frame_columns(cols: np.ndarray, g: np.ndarray, reflect: bool) -> np.ndarray:
    """First two columns of a body's rotation (raveled row-major as (..., 6)) under the map:
    R -> G R M when mirrored (the body frame mirrors too), G R otherwise."""
    r = cols.reshape(*cols.shape[:-1], 3, 2)
    r = np.einsum("ij,...jk->...ik", g, r)
    if reflect:
        r = r * np.array([1.0, -1.0])
    return r.reshape(cols.shape)


class ArmGeometry:
    """The arm tasks (``sims/Arm*-v0``): obs parts by name from ``obs_slices``."""

    TABLE_LOW, TABLE_HIGH = np.array([-0.2, -0.55]), np.array([0.9, 0.55])  # the table top's extent (arm.xml)
    TABLE_MARGIN = 0.04
    PAN_MARGIN = 0.15   # rad kept from the pan limit, more than one step's motion
    OBJECT_CLEARANCE = 0.12  # m between grip site and a cube that may be moved
    # The gripper is driven through its left finger (the right one follows through a soft
    # coupling), which is not mirror-symmetric: mirrored states match the true mirror only
    # while the gripper rests wide open (measured: ~1e-3 rad/s joint-velocity error otherwise).
    OPEN_GRIPPER = 0.0795

    def __init__(self, env) -> None:
        u = env.unwrapped
        self.env_id = u.env_id
        self.slices: dict[str, slice] = dict(u.obs_slices)
        self.task = u.task
        self.sparse = bool(u.sparse)
        model, p = u.model, u.physics
        self.layout = state_layout(model)
        axes = model.jnt_axis[[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)
                               for n in ("shoulder_pan", "shoulder_lift", "elbow", "forearm_roll", "wrist_pitch", "tool_roll")]]
        # mirroring negates angles about axes in the mirror plane (not along y)
        self.joint_sign = np.where(np.abs(axes[:, 1]) > 0.5, 1.0, -1.0)
        self.qpos_index, self.dof_index = p.qpos_index, p.dof_index
        self.finger_qpos, self.finger_dof = p.finger_qpos, p.finger_dof
        self.arm_ctrl = p.arm_actuators
        self.has_object = p.object_body >= 0
        if self.has_object:
            self.object_qpos, self.object_dof = int(p.object_qpos), int(p.object_dof)
        self.pan_limit = float(u.physics.kin.upper[0])
        self.goal_dims = self.slices["goal_pos"].stop - self.slices["goal_pos"].start

    # -- observations ------------------------------------------------------------------
    def map_obs(self, obs: np.ndarray, m: PlanarMap) -> np.ndarray:
        g, s = m.matrix(), self.slices
        out = obs.copy()
        shift_obj = np.array([*m.object_shift, 0.0])
        out[:, s["joint_pos"]] = obs[:, s["joint_pos"]] * (self.joint_sign if m.reflect else 1.0)
        out[:, s["joint_pos"].start] += m.angle
        out[:, s["joint_vel"]] = obs[:, s["joint_vel"]] * (self.joint_sign if m.reflect else 1.0)
        out[:, s["grip_pos"]] = obs[:, s["grip_pos"]] @ g.T
        out[:, s["grip_rot"]] = _frame_columns(obs[:, s["grip_rot"]], g, m.reflect)
        goal = obs[:, s["goal_pos"]]
        if self.goal_dims == 2:
            goal = np.concatenate([goal, np.zeros((len(goal), 1))], axis=1)
        out[:, s["goal_pos"]] = (goal @ g.T + m.goal_shift)[:, :self.goal_dims]
        vectors = {"grip_to_goal": m.goal_shift, "object_pos": shift_obj, "grip_to_object": shift_obj,
                   "object_to_goal": m.goal_shift - shift_obj}
        for name, shift in vectors.items():
            if name in s:
                out[:, s[name]] = obs[:, s[name]] @ g.T + shift
        if "object_rot" in s:
            out[:, s["object_rot"]] = _frame_columns(obs[:, s["object_rot"]], g, m.reflect)
        return out

    def map_action(self, action: np.ndarray, m: PlanarMap) -> np.ndarray:
        if not m.reflect:
            return action
        out = action.copy()
        out[:, :6] *= self.joint_sign
        return out

    # -- simulator state ---------------------------------------------------------------
    def map_sim_state(self, sim: dict[str, np.ndarray], m: PlanarMap) -> dict[str, np.ndarray]:
        g, L = m.matrix(), self.layout
        out = dict(sim)
        if "goal" in sim:
            out["goal"] = sim["goal"] @ g.T + m.goal_shift
        if "physics" not in sim:
            return out
        phys = sim["physics"].copy()
        qpos, qvel, warm, ctrl = (phys[:, L[k]] for k in ("qpos", "qvel", "warmstart", "ctrl"))  # views
        sign = self.joint_sign if m.reflect else np.ones(6)
        qpos[:, self.qpos_index] *= sign
        qpos[:, self.qpos_index[0]] += m.angle
        for vel in (qvel, warm):
            vel[:, self.dof_index] *= sign
        ctrl[:, self.arm_ctrl] *= sign
        ctrl[:, self.arm_ctrl[0]] += m.angle
        if m.reflect:  # the fingers swap sides
            qpos[:, self.finger_qpos] = qpos[:, self.finger_qpos[::-1]]
            for vel in (qvel, warm):
                vel[:, self.finger_dof] = vel[:, self.finger_dof[::-1]]
        if self.has_object:
            a, d = self.object_qpos, self.object_dof
            qpos[:, a:a + 3] = qpos[:, a:a + 3] @ g.T + np.array([*m.object_shift, 0.0])
            quat = qpos[:, a + 3:a + 7]
            if m.reflect:
                quat = quat * np.array([1.0, -1.0, 1.0, -1.0])
            turn = np.array([np.cos(m.angle / 2), 0.0, 0.0, np.sin(m.angle / 2)])
            qpos[:, a + 3:a + 7] = _quat_mul(np.broadcast_to(turn, quat.shape), quat)
            for vel in (qvel, warm):
                vel[:, d:d + 3] = vel[:, d:d + 3] @ g.T            # linear velocity, world frame
                if m.reflect:                                       # angular velocity, body frame
                    vel[:, d + 3:d + 6] *= np.array([-1.0, 1.0, -1.0])
        out["physics"] = phys
        return out

    # -- where the symmetry holds ---------------------------------------------------------
    def refuse(self, seg: Segment, m: PlanarMap) -> str:
        """Why ``m`` cannot be applied to ``seg`` exactly ('' when it can)."""
        s = self.slices
        pan = seg.obs[:, s["joint_pos"].start]
        new_pan = (-pan if m.reflect else pan) + m.angle
        limit = self.pan_limit - self.PAN_MARGIN
        if np.abs(pan).max() > limit or np.abs(new_pan).max() > limit:
            return "pan_limit"
        g = m.matrix()
        points = [seg.obs[:, s["grip_pos"]] @ g.T]
        if "object_pos" in s:
            points.append(seg.obs[:, s["object_pos"]] @ g.T + np.array([*m.object_shift, 0.0]))
        xy = np.concatenate(points)[:, :2]
        if np.any(xy < self.TABLE_LOW + self.TABLE_MARGIN) or np.any(xy > self.TABLE_HIGH - self.TABLE_MARGIN):
            return "off_table"
        if m.reflect:
            opening = np.concatenate([seg.obs, seg.next_obs])[:, s["gripper_opening"]]
            if opening.min() < self.OPEN_GRIPPER:
                return "gripper_active"
        if m.moves_object():
            if not self.has_object:
                return "no_object"
            obj = seg.obs[:, s["object_pos"]]
            moved = np.abs(np.concatenate([obj, seg.next_obs[:, s["object_pos"]]]) - obj[0]).max()
            near = min(np.linalg.norm(seg.obs[:, s["grip_to_object"]], axis=1).min(),
                       np.linalg.norm(seg.obs[:, s["grip_to_object"]] + np.array([*m.object_shift, 0.0]), axis=1).min())
            if moved > 1e-3 or near < self.OBJECT_CLEARANCE:
                return "object_in_use"
        return ""

    # -- rewards -------------------------------------------------------------------------
    def achieved_goal(self, obs: np.ndarray) -> np.ndarray:
        """What the goal is compared with: the cube's position, or the grip site's for reach."""
        return obs[:, self.slices["object_pos" if self.has_object else "grip_pos"]]

    def goal(self, obs: np.ndarray) -> np.ndarray:
        """The 3-D goal read from observations."""
        s = self.slices
        if "object_to_goal" in s:
            return obs[:, s["object_pos"]] + obs[:, s["object_to_goal"]]
        return obs[:, s["goal_pos"]]

    def rewards(self, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        view = _ArmObsView(self.slices)
        goals = self.goal(next_obs)
        reward, success = np.empty(len(next_obs)), np.empty(len(next_obs), bool)
        for t in range(len(next_obs)):
            view.row, view.goal = next_obs[t], goals[t]
            reward[t], success[t] = self.task.evaluate(view)
        return (success.astype(np.float64) if self.sparse else reward), success


class _ArmObsView:
    """What an arm task's ``evaluate`` reads from physics, read from one observation."""

    def __init__(self, slices: dict[str, slice]) -> None:
        self.slices = slices
        self.row = np.zeros(0)
        self.goal = np.zeros(3)

    def grip_pos(self) -> np.ndarray:
        return self.row[self.slices["grip_pos"]]

    def object_pos(self) -> np.ndarray:
        return self.row[self.slices["object_pos"]]

    def goal_pos(self) -> np.ndarray:
        return self.goal


class ReacherGeometry:
    """dm_control's reacher (``dmc/reacher-*``): a planar two-link arm about the z axis
    at the origin, and a target in the plane. Mirroring negates both joints and both
    torques; rotating turns the shoulder and the target."""

    TARGET_RADIUS = 0.21  # farther than this the finger cannot reach the target

    def __init__(self, env) -> None:
        u = env.unwrapped
        self.env_id = u.env_id
        keys, sizes = u._obs_keys, [int(np.prod(v.shape)) for v in u._env.observation_spec().values()]
        starts = np.cumsum([0, *sizes])
        self.slices = {k: slice(int(a), int(b)) for k, a, b in zip(keys, starts[:-1], starts[1:])}
        self.physics = u.physics
        self.task = u._env.task
        self.layout = state_layout(u.physics.model.ptr)
        if u._task_rows is None:
            u.reset(seed=0)
        self.task_fields = [(f, rows.size) for f, rows in u._task_rows]
        self.has_object = False
        self.goal_dims = 2

    def map_obs(self, obs: np.ndarray, m: PlanarMap) -> np.ndarray:
        g, s = m.matrix()[:2, :2], self.slices
        sign = -1.0 if m.reflect else 1.0
        out = obs.copy()
        out[:, s["position"]] = obs[:, s["position"]] * sign
        out[:, s["position"].start] += m.angle
        out[:, s["velocity"]] = obs[:, s["velocity"]] * sign
        out[:, s["to_target"]] = obs[:, s["to_target"]] @ g.T + m.goal_shift[:2]
        return out

    def map_action(self, action: np.ndarray, m: PlanarMap) -> np.ndarray:
        return -action if m.reflect else action

    def map_sim_state(self, sim: dict[str, np.ndarray], m: PlanarMap) -> dict[str, np.ndarray]:
        g, L = m.matrix(), self.layout
        sign = -1.0 if m.reflect else 1.0
        out = dict(sim)
        if "physics" in sim:
            phys = sim["physics"].copy()
            for key in ("qpos", "qvel", "warmstart", "ctrl"):
                phys[:, L[key]] *= sign
            phys[:, L["qpos"].start] += m.angle  # the shoulder
            out["physics"] = phys
        if "task" in sim and sim["task"].shape[1] == 3:  # the target geom's position
            out["task"] = sim["task"] @ g.T + np.array([*m.goal_shift[:2], 0.0])
        return out

    def refuse(self, seg: Segment, m: PlanarMap) -> str:
        if m.moves_object():
            return "no_object"
        if "task" in seg.sim_state and seg.sim_state["task"].shape[1] != 3:
            return "unknown_task_state"
        if np.any(m.goal_shift):
            target = self.goal(seg.obs[:1]) @ m.matrix()[:2, :2].T + m.goal_shift[:2]
            if np.linalg.norm(target) > self.TARGET_RADIUS:
                return "off_arena"
        return ""

    def _finger(self, obs: np.ndarray) -> np.ndarray:
        """Finger position in the plane from the joint angles (link lengths of reacher.xml)."""
        q = obs[:, self.slices["position"]]
        return np.stack([0.12 * np.cos(q[:, 0]) + 0.12 * np.cos(q[:, 0] + q[:, 1]),
                         0.12 * np.sin(q[:, 0]) + 0.12 * np.sin(q[:, 0] + q[:, 1])], axis=1)

    def achieved_goal(self, obs: np.ndarray) -> np.ndarray:
        return self._finger(obs)

    def goal(self, obs: np.ndarray) -> np.ndarray:
        return self._finger(obs) + obs[:, self.slices["to_target"]]

    def rewards(self, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        view = _ReacherObsView(self.physics)
        radii = float(self.physics.named.model.geom_size[["target", "finger"], 0].sum())
        reward, success = np.empty(len(next_obs)), np.empty(len(next_obs), bool)
        for t in range(len(next_obs)):
            view.to_target = next_obs[t, self.slices["to_target"]]
            reward[t] = float(self.task.get_reward(view))
            success[t] = view.finger_to_target_dist() <= radii
        return reward, success


class _ReacherObsView:
    """What reacher's ``get_reward`` reads from physics, from one observation."""

    def __init__(self, physics) -> None:
        self.named = physics.named
        self.to_target = np.zeros(2)

    def finger_to_target(self) -> np.ndarray:
        return self.to_target

    def finger_to_target_dist(self) -> float:
        return float(np.linalg.norm(self.to_target))


Geometry = ArmGeometry | ReacherGeometry


def geometry_for(env) -> Geometry:
    """The symmetry description of ``env``'s task, or a ValueError naming the supported ones."""
    env_id = env.unwrapped.env_id if hasattr(env.unwrapped, "env_id") else str(env.spec.id)
    if env_id.startswith("sims/Arm"):
        return ArmGeometry(env)
    if env_id.startswith("dmc/reacher-"):
        return ReacherGeometry(env)
    raise ValueError(f"no augmentation geometry for {env_id}; supported: sims/ArmReach-v0, sims/ArmPush-v0, "
                     f"sims/ArmPickPlace-v0, dmc/reacher-easy-v0, dmc/reacher-hard-v0.")


def apply_map(geom: Geometry, seg: Segment, m: PlanarMap, name: str, params: dict) -> tuple[Segment | None, str]:
    """``seg`` under ``m`` with rewards and success recomputed, or (None, reason)."""
    reason = geom.refuse(seg, m)
    if reason:
        return None, reason
    both = geom.map_obs(np.concatenate([seg.obs, seg.next_obs]), m)  # one call: half the per-call overhead
    obs, next_obs = both[:len(seg)], both[len(seg):]
    reward, success = geom.rewards(next_obs)
    return seg.with_arrays(obs=obs, next_obs=next_obs, action=geom.map_action(seg.action, m),
                           reward=reward, success=success, sim_state=geom.map_sim_state(seg.sim_state, m),
                           steps=[*seg.steps, {"name": name, "params": params}]), ""
