"""Joint names, limits and forward kinematics of the project's arm.

This module is the arm's description for everything outside the simulator too: the
ROS 2 bridge reads joint names, position and velocity limits from here and computes
the end-effector pose with :class:`ArmKinematics` (MuJoCo's kinematics on a scratch
``MjData``, so it never touches a running simulation).
"""
from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

MODEL_DIR = Path(__file__).resolve().parent
ARM_XML = MODEL_DIR / "arm.xml"

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow", "forearm_roll", "wrist_pitch", "tool_roll")
GRIPPER_JOINTS = ("finger_left", "finger_right")
GRIPPER_ACTUATOR = "gripper"
# rad/s, the servo limits of a small collaborative arm (big joints slower than the wrist)
VELOCITY_LIMITS = np.array([2.0, 2.0, 2.5, 3.0, 3.0, 3.0])
GRIPPER_OPENING_MAX = 0.08  # m between the fingertips, fully open
# Grip site at (0.4, 0, 0.2) with the tool pointing down and the fingers closing along world y.
HOME = np.array([0.0, 0.2611, 1.7946, 0.0, 1.0859, 0.0])
EE_SITE = "grip"


def load_model(path: str | Path = ARM_XML) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(path))


class ArmKinematics:
    """Forward kinematics and Jacobians of the grip site from joint angles."""

    def __init__(self, model: mujoco.MjModel | None = None):
        self.model = model if model is not None else load_model()
        self.data = mujoco.MjData(self.model)  # scratch data
        joint = [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in JOINT_NAMES]
        self.qpos_index = np.array([self.model.jnt_qposadr[j] for j in joint])
        self.dof_index = np.array([self.model.jnt_dofadr[j] for j in joint])
        self.lower = self.model.jnt_range[joint, 0].copy()
        self.upper = self.model.jnt_range[joint, 1].copy()
        self.site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, EE_SITE)

    def _set(self, joint_angles: np.ndarray) -> None:
        q = np.asarray(joint_angles, np.float64)
        if q.shape != (len(JOINT_NAMES),):
            raise ValueError(f"expected {len(JOINT_NAMES)} joint angles ({', '.join(JOINT_NAMES)}), got shape {q.shape}.")
        self.data.qpos[self.qpos_index] = q
        mujoco.mj_kinematics(self.model, self.data)

    def forward(self, joint_angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site position (3,) and rotation matrix (3, 3) in the world (= base) frame."""
        self._set(joint_angles)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def jacobian(self, joint_angles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position, rotation matrix and the 6x6 geometric Jacobian [linear; angular]."""
        self._set(joint_angles)
        mujoco.mj_comPos(self.model, self.data)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self.site)
        jac = np.vstack([jacp[:, self.dof_index], jacr[:, self.dof_index]])
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy(), jac
