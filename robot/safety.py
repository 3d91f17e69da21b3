"""The bridge's safety layer: what may be sent to the arm, checked on the agent's side.

Every joint-position command passes :meth:`SafetyLayer.filter` before it is published:

* a non-finite target is refused: the command holds the current position (counted);
* each joint is clipped to its position limits from the MuJoCo model, the gripper to
  its finger travel;
* each joint's change from the measured position is clipped to ``max_step`` (the
  velocity limit times the control period);
* optionally the grip site is kept inside a workspace box: forward kinematics of the
  command (``sims.arm.kinematics``), and a step leaving the box is shortened along its
  direction to the last point inside (bisection);
* nothing at all is sent while the e-stop is latched or the joint-state watchdog has
  expired (``filter`` returns ``None``).

Human intervention: :meth:`SafetyLayer.select` puts an operator's action in place of the
policy's (never while the e-stop is latched). Every check and every clip is counted in
``counts``, so a run's status and its transitions say how often the layer stepped in.

A command vector is the forward position controller's: the six arm joints in
``kinematics.JOINT_NAMES`` order, then the gripper finger position (m).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from sims.arm import kinematics

COMMAND_JOINTS = (*kinematics.JOINT_NAMES, kinematics.GRIPPER_JOINTS[0])
"""The joints a forward position command addresses, in order: the arm, then the gripper
finger driven by the gripper actuator (its partner follows through the coupling)."""
# Bisection steps when shortening a step that leaves the workspace (2**-12 of a step).
_WORKSPACE_BISECTIONS = 12


class Watchdog:
    """Expires when nothing was fed for ``timeout_s`` (monotonic seconds)."""

    def __init__(self, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"the watchdog timeout must be a positive number of seconds, found {timeout_s!r}.")
        self.timeout_s = float(timeout_s)
        self.last_fed: float | None = None
        self.trips = 0
        self._tripped = False

    def feed(self, when: float | None = None) -> None:
        self.last_fed = time.monotonic() if when is None else when
        self._tripped = False

    def expired(self, now: float | None = None) -> bool:
        """True when never fed or fed longer than the timeout ago; counts each new expiry once."""
        now = time.monotonic() if now is None else now
        expired = self.last_fed is None or now - self.last_fed > self.timeout_s
        if expired and not self._tripped and self.last_fed is not None:
            self.trips += 1
        self._tripped = expired and self.last_fed is not None
        return expired


class SafetyLayer:
    """Clips, refuses and counts joint-position commands (module docstring)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, max_step: np.ndarray, *, state_timeout: float = 0.5,
                 workspace_low: np.ndarray | None = None, workspace_high: np.ndarray | None = None,
                 kin: kinematics.ArmKinematics | None = None):
        self.lower, self.upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        self.max_step = np.asarray(max_step, np.float64)
        n = len(COMMAND_JOINTS)
        for name, value in (("lower", self.lower), ("upper", self.upper), ("max_step", self.max_step)):
            if value.shape != (n,):
                raise ValueError(f"safety {name} must have one entry per command joint ({n}), found shape {value.shape}.")
        if not np.all(self.lower < self.upper) or not np.all(self.max_step > 0):
            raise ValueError("safety limits need lower < upper and max_step > 0 for every joint, "
                             f"found lower={self.lower.tolist()}, upper={self.upper.tolist()}, max_step={self.max_step.tolist()}.")
        self.workspace: tuple[np.ndarray, np.ndarray] | None = None
        if (workspace_low is None) != (workspace_high is None):
            raise ValueError("a workspace box needs both workspace_low and workspace_high (x, y, z in m).")
        if workspace_low is not None and workspace_high is not None:
            low, high = np.asarray(workspace_low, np.float64), np.asarray(workspace_high, np.float64)
            if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
                raise ValueError(f"the workspace box must be two (x, y, z) corners with low < high, "
                                 f"found low={low.tolist()}, high={high.tolist()}.")
            self.workspace = (low, high)
        self.kin = kin or kinematics.ArmKinematics()
        self.watchdog = Watchdog(state_timeout)
        self.estop = False
        self.counts: Counter[str] = Counter()

    @classmethod
    def for_arm(cls, control_dt: float, *, state_timeout: float = 0.5, workspace: tuple | list | None = None,
                model=None) -> "SafetyLayer":
        """Limits of the project's arm: joint ranges of the MuJoCo model, velocity limits
        times ``control_dt`` per tick, the gripper free to move its whole travel in one
        tick (as in simulation); ``workspace`` is ``(low_xyz, high_xyz)`` or None."""
        kin = kinematics.ArmKinematics(model if model is not None else kinematics.load_model())
        import mujoco

        finger = mujoco.mj_name2id(kin.model, mujoco.mjtObj.mjOBJ_JOINT, kinematics.GRIPPER_JOINTS[0])
        f_low, f_high = kin.model.jnt_range[finger]
        lower = np.append(kin.lower, f_low)
        upper = np.append(kin.upper, f_high)
        max_step = np.append(kinematics.VELOCITY_LIMITS * control_dt, f_high - f_low)
        low, high = (None, None) if workspace is None else workspace
        return cls(lower, upper, max_step, state_timeout=state_timeout, workspace_low=low, workspace_high=high, kin=kin)

    # -- operator -----------------------------------------------------------------------
    def set_estop(self, engaged: bool) -> None:
        if engaged and not self.estop:
            self.counts["estops"] += 1
        self.estop = bool(engaged)

    def select(self, policy_action: np.ndarray, operator_action: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """The action to execute and whether an operator's replaced the policy's. An
        operator action is ignored while the e-stop is latched (and counted)."""
        if operator_action is None:
            return np.asarray(policy_action, np.float64), False
        if self.estop:
            self.counts["operator_ignored_estop"] += 1
            return np.asarray(policy_action, np.float64), False
        self.counts["interventions"] += 1
        return np.asarray(operator_action, np.float64), True

    # -- commands -----------------------------------------------------------------------
    def may_command(self, now: float | None = None) -> str:
        """'' when commands may be sent, else why not ('estop' or 'watchdog')."""
        if self.estop:
            return "estop"
        if self.watchdog.expired(now):
            return "watchdog"
        return ""

    def filter(self, target: np.ndarray, current: np.ndarray, now: float | None = None) -> tuple[np.ndarray | None, dict]:
        """The command to send for ``target`` given the measured ``current`` positions (both
        in ``COMMAND_JOINTS`` order), or None when nothing may be sent; ``info`` lists
        what was clipped or refused."""
        n = len(COMMAND_JOINTS)
        target = np.asarray(target, np.float64)
        current = np.asarray(current, np.float64)
        if target.shape != (n,) or current.shape != (n,):
            raise ValueError(f"safety filter expects a target and current positions of {n} joints ({', '.join(COMMAND_JOINTS)}), "
                             f"found shapes {target.shape} and {current.shape}.")
        self.counts["checked"] += 1
        blocked = self.may_command(now)
        if not blocked and not np.all(np.isfinite(current)):
            blocked = "non_finite_state"
        if blocked:
            self.counts[f"blocked_{blocked}"] += 1
            return None, {"blocked": blocked, "clipped": []}
        clipped: list[str] = []
        if not np.all(np.isfinite(target)):
            self.counts["non_finite"] += 1
            target = current.copy()
            clipped.append("non_finite")
        command = np.clip(target, self.lower, self.upper)
        if np.any(np.abs(command - target) > 1e-12):
            self.counts["clipped_limits"] += 1
            clipped.append("limits")
        stepped = np.clip(command, current - self.max_step, current + self.max_step)
        # the step clip may not push a joint that starts outside its limits further out
        stepped = np.where((current < self.lower) | (current > self.upper), np.clip(stepped, self.lower, self.upper), stepped)
        if np.any(np.abs(stepped - command) > 1e-9):
            self.counts["clipped_step"] += 1
            clipped.append("step")
        command = stepped
        if self.workspace is not None and not self._inside(command[:6]):
            command = self._shorten_into_workspace(current, command)
            self.counts["clipped_workspace"] += 1
            clipped.append("workspace")
        if clipped:
            self.counts["clipped"] += 1
        self.counts["sent"] += 1
        return command, {"blocked": "", "clipped": clipped}

    def _grip_position(self, joints: np.ndarray) -> np.ndarray:
        return self.kin.forward(joints)[0]

    def _inside(self, joints: np.ndarray) -> bool:
        assert self.workspace is not None
        pos = self._grip_position(joints)
        return bool(np.all(pos >= self.workspace[0]) and np.all(pos <= self.workspace[1]))

    def _distance_outside(self, joints: np.ndarray) -> float:
        assert self.workspace is not None
        pos = self._grip_position(joints)
        return float(np.linalg.norm(np.maximum(self.workspace[0] - pos, 0) + np.maximum(pos - self.workspace[1], 0)))

    def _shorten_into_workspace(self, current: np.ndarray, command: np.ndarray) -> np.ndarray:
        """The longest fraction of the step current -> command whose grip site stays in the
        box; from outside the box a step is kept only if it brings the grip closer."""
        start, step = current[:6], command[:6] - current[:6]
        out = command.copy()
        if not self._inside(start):
            if self._distance_outside(command[:6]) >= self._distance_outside(start):
                out[:6] = start
            return out
        low, high = 0.0, 1.0  # inside at low, outside at high
        for _ in range(_WORKSPACE_BISECTIONS):
            mid = (low + high) / 2
            if self._inside(start + mid * step):
                low = mid
            else:
                high = mid
        out[:6] = start + low * step
        return out
