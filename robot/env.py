"""The arm tasks over ROS 2: ``robot/ArmReach-v0``, ``robot/ArmPush-v0``, ``robot/ArmPickPlace-v0``.

The same task as ``sims/Arm<Task>-v0`` (same action and observation layout, same reward
and success, computed agent-side by the sims task code over :class:`robot.tasks.TopicPhysics`),
played on whatever arm answers on the ROS 2 topics: the simulated driver
(``agent robot sim-driver``) or a physical arm under ros2_control.

``step(action)``: an operator's action (``/agent/intervention``, arrived within
``intervention_timeout``) replaces the policy's; the action becomes joint-position
targets as in simulation; the :class:`robot.safety.SafetyLayer` clips or refuses them;
the command goes out on the forward position controller's topic; the env then waits for
the first joint state after it, at most ``state_timeout`` (and not sooner than 3/4 of a
control period, less half the arm's publishing interval, after the previous
observation: the env keeps the control rate when the arm publishes faster, and locks
onto the arm's own ticks when it publishes at the control rate). ``info`` carries ``intervened``, ``executed_action``
(the action that maps onto what was actually sent: what the learner stores), ``safety``
(the layer's counts) and ``step_record`` (per-step values to store with the transition).

Episode ends besides the time limit (``truncated``, with ``info["estop"]`` or
``info["paused"]``): the e-stop (``/agent/estop``, latched) is set, or the watchdog saw
no joint state within ``state_timeout`` and the episode was paused; a paused env waits
up to ``pause_timeout`` for the arm to come back, then raises :class:`RobotUnavailable`
with one sentence naming the topic and the domain.

``reset(seed)``: a joint trajectory to the start pose ``ArmEnv.reset(seed)`` would use,
then a reset request with the seed (``/agent/reset_objects``, JSON ``{"seed": N}``) for
the cube and goal. A JSON status goes to ``/agent/status`` after every step and change.

There is one arm: ``single_instance`` tells the fine-tuning loop to evaluate on this
env instead of making a second one that would fight it for the arm.

Recording (``record_dir=RUN``): every episode's joint states, object poses and the
commands actually sent go to an MCAP rosbag ``RUN/recordings/episode_NNNNNN/``
(:mod:`robot.record`; ``record_typestore`` humble or jazzy), next to the run's store;
``ros2 bag`` and Foxglove open it. From the CLI: ``--env-kwargs record_dir=runs/x``.
"""
from __future__ import annotations

import collections
import json
import time
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from robot import msgs
from robot.driver import STATE_JOINTS, command_message
from robot.safety import COMMAND_JOINTS, SafetyLayer
from robot.tasks import (TopicPhysics, action_to_target, episode_start, make_task, observation_parts, target_to_action,
                         task_has_object)
from robot.transport import COMMAND, LATCHED, RELIABLE, SENSOR_DATA, Transport, make_transport, resolve_domain_id
from sims.arm import kinematics



class RobotUnavailable(ConnectionError):
    """The arm cannot be commanded: no joint states, or the e-stop stays latched."""


class RobotArmEnv(gymnasium.Env):
    metadata = {"render_modes": []}
    single_instance = True
    """One physical arm: evaluation must reuse this env, never make a second one."""

    def __init__(self, task: str, reward: str = "dense", rate: float = 20.0, time_limit: int | None = None,
                 domain_id: int | None = None, transport: str = "auto",
                 joint_states_topic: str = "/joint_states", command_topic: str = "/forward_position_controller/commands",
                 trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory",
                 object_pose_topic: str = "/object_pose", reset_topic: str = "/agent/reset_objects",
                 estop_topic: str = "/agent/estop", intervention_topic: str = "/agent/intervention",
                 status_topic: str = "/agent/status", state_timeout: float = 0.5, connect_timeout: float = 10.0,
                 pause_timeout: float = 30.0, intervention_timeout: float = 0.25, workspace: list | str | None = None,
                 reset_speed: float = 0.5, reset_tolerance: float = 0.02, record_dir: str = "",
                 record_typestore: str = "humble", node_name: str = "agent", namespace: str = "/"):
        self.task = make_task(task)
        self.env_id = "robot/" + self.task.env_id.split("/", 1)[1]
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward must be 'dense' or 'sparse' for {self.env_id}, got {reward!r}.")
        for name, value in (("rate", rate), ("state_timeout", state_timeout), ("connect_timeout", connect_timeout),
                            ("pause_timeout", pause_timeout), ("intervention_timeout", intervention_timeout),
                            ("reset_speed", reset_speed), ("reset_tolerance", reset_tolerance)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number for {self.env_id}, found {value!r}.")
        self.domain_id = resolve_domain_id(domain_id)
        self.transport_kind = transport
        self.node_name, self.namespace = node_name, namespace  # what ROS tools list this env's node as
        self.topics = {"joint_states": joint_states_topic, "command": command_topic, "trajectory": trajectory_topic,
                       "object_pose": object_pose_topic, "reset": reset_topic, "estop": estop_topic,
                       "intervention": intervention_topic, "status": status_topic}
        self.sparse = reward == "sparse"
        self.kin = kinematics.ArmKinematics(kinematics.load_model(kinematics.MODEL_DIR / self.task.xml))
        substeps = max(1, round(1.0 / (rate * self.kin.model.opt.timestep)))
        self.control_dt = substeps * self.kin.model.opt.timestep  # the driver's physics period at this rate
        self.control_rate = 1.0 / self.control_dt
        self.time_limit = int(time_limit if time_limit is not None else round(self.task.duration * self.control_rate))
        if self.time_limit < 1:
            raise ValueError(f"time_limit must be at least 1 step for {self.env_id}, got {time_limit}.")
        if isinstance(workspace, str):  # "x_low y_low z_low x_high y_high z_high" from a name=value flag
            try:
                workspace = [float(v) for v in workspace.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"workspace must be six comma-separated numbers, found {workspace!r}.") from None
        if workspace is not None and (len(workspace) != 6):
            raise ValueError(f"workspace must be six numbers [x_low, y_low, z_low, x_high, y_high, z_high], found {workspace!r}.")
        box = None if workspace is None else (np.asarray(workspace[:3], float), np.asarray(workspace[3:], float))
        self.safety = SafetyLayer.for_arm(self.control_dt, state_timeout=state_timeout, workspace=box, model=self.kin.model)
        self.max_step = self.safety.max_step[:6]
        self.state_timeout, self.connect_timeout, self.pause_timeout = state_timeout, connect_timeout, pause_timeout
        self.intervention_timeout, self.reset_speed, self.reset_tolerance = intervention_timeout, reset_speed, reset_tolerance
        self.has_object = task_has_object(self.task)
        self.defines_success = True
        self.physics = TopicPhysics(self.kin)
        self.task.initialize_episode(self.physics, np.random.default_rng(0))
        self.obs_slices: dict[str, slice] = {}
        start = 0
        for name, part in observation_parts(self.physics, self.task).items():
            self.obs_slices[name] = slice(start, start + int(np.size(part)))
            start += int(np.size(part))
        self.observation_space = spaces.Box(-np.inf, np.inf, (start,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._transport: Transport | None = None
        self._steps = 0
        self._episode = -1
        self._needs_reset = True
        self._state_ns = -1  # arrival (monotonic ns) of the joint state the physics holds
        self._obs_ns = -1  # arrival of the state the last observation came from
        self._obs_joints = kinematics.HOME.copy()
        self._measured = np.append(kinematics.HOME, kinematics.GRIPPER_OPENING_MAX / 2)
        self._pose_ns = -1
        self._operator: tuple[np.ndarray, int] | None = None
        self.periods: collections.deque[float] = collections.deque(maxlen=2000)
        self._publish_intervals: collections.deque[float] = collections.deque(maxlen=50)  # of /joint_states, s
        self._last_stamp_ns = -1
        self.missed_ticks = 0
        self.status: dict = {"state": "created", "message": ""}
        # recording: one MCAP bag per episode under <record_dir>/recordings/ (docs/ros2.md, Recording)
        self.record_dir, self.record_typestore = str(record_dir or ""), record_typestore
        if self.record_dir and record_typestore not in ("humble", "jazzy"):
            raise ValueError(f"record_typestore must be 'humble' or 'jazzy' for {self.env_id}, found {record_typestore!r}.")
        self._recorder: Any = None  # a robot.record.Recorder while an episode is recorded

    # -- connection --------------------------------------------------------------------
    def _where(self, topic: str) -> str:
        return f"{self.topics[topic]} (ROS domain {self.domain_id}, {self._transport.kind if self._transport else self.transport_kind} transport)"

    def _connect(self) -> None:
        if self._transport is not None:
            return
        t = self._transport = make_transport(self.transport_kind, self.domain_id, node_name=self.node_name,
                                             namespace=self.namespace)
        tp = self.topics
        self._state_sub = t.subscription(tp["joint_states"], msgs.JointState, SENSOR_DATA)
        self._pose_sub = t.subscription(tp["object_pose"], msgs.PoseStamped, SENSOR_DATA) if self.has_object else None
        self._estop_sub = t.subscription(tp["estop"], msgs.Bool, LATCHED)
        self._operator_sub = t.subscription(tp["intervention"], msgs.Float64MultiArray, RELIABLE)
        self._command_pub = t.publisher(tp["command"], msgs.Float64MultiArray, COMMAND)
        self._trajectory_pub = t.publisher(tp["trajectory"], msgs.JointTrajectory, RELIABLE)
        self._reset_pub = t.publisher(tp["reset"], msgs.String, RELIABLE)
        self._status_pub = t.publisher(tp["status"], msgs.String, RELIABLE)
        self._set_status("connecting", f"waiting for joint states on {self._where('joint_states')}")
        if not self._wait_state(-1, self.connect_timeout):
            raise RobotUnavailable(f"no joint states arrived on {self._where('joint_states')} within "
                                   f"{self.connect_timeout:g} s; start the arm's driver on that domain "
                                   f"(e.g. agent robot sim-driver --domain-id {self.domain_id}) or check the topic name.")

    def _set_status(self, state: str, message: str = "", **extra) -> None:
        self.status = {"state": state, "message": message, "env": self.env_id, "episode": self._episode,
                       "step": self._steps, "safety": dict(self.safety.counts), "missed_ticks": self.missed_ticks, **extra}
        if self._transport is not None and not self._transport.closed:
            self._status_pub.publish(msgs.String(data=json.dumps(self.status)))

    # -- messages in -------------------------------------------------------------------
    def _poll(self) -> None:
        """Take e-stop, operator and the newest state and pose into the env."""
        for msg in self._estop_sub.take():
            self.safety.set_estop(msg.data)
        # an operator action is as fresh as its arrival, not as the step that takes it
        for operator_msg, arrived in self._operator_sub.take_stamped():
            action = np.asarray(operator_msg.data, np.float64)
            if self.safety.estop:
                self.safety.counts["operator_ignored_estop"] += 1
            elif action.shape != (7,) or not np.all(np.isfinite(action)):
                self.safety.counts["operator_rejected"] += 1
                self._set_status(self.status["state"], f"ignored an operator action on {self.topics['intervention']}: "
                                 f"expected 7 finite numbers in [-1, 1], found {action.tolist()}")
            else:
                self._operator = (np.clip(action, -1.0, 1.0), arrived)
        latest = self._state_sub.latest()
        if latest is not None and latest[1] != self._state_ns:
            self._read_state(*latest)
        if self._pose_sub is not None:
            pose = self._pose_sub.latest()
            if pose is not None and pose[1] != self._pose_ns:
                self._record("object_pose", pose[0])
                p, o = pose[0].pose.position, pose[0].pose.orientation
                self.physics.set_object_pose(np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z]))
                self._pose_ns = pose[1]

    def _read_state(self, msg: msgs.JointState, arrived_ns: int) -> None:
        try:
            index = [msg.name.index(n) for n in STATE_JOINTS]
        except ValueError:
            raise ValueError(f"joint states on {self._where('joint_states')} must name {', '.join(STATE_JOINTS)}; "
                             f"found {', '.join(msg.name) or 'no names'}.") from None
        if msg.position.size != len(msg.name) or msg.velocity.size != len(msg.name):
            raise ValueError(f"joint states on {self._where('joint_states')} need one position and one velocity per name; "
                             f"found {len(msg.name)} names, {msg.position.size} positions, {msg.velocity.size} velocities.")
        pos, vel = msg.position[index], msg.velocity[index]
        self._record("joint_states", msg)
        self.physics.set_joint_state(pos[:6], vel[:6], float(pos[6] + pos[7]))
        self._measured = pos[:7].copy()
        self._state_ns = arrived_ns
        self.safety.watchdog.feed(arrived_ns / 1e9)

    def _wait_state(self, after_ns: int, timeout_s: float, not_before_ns: int = -1) -> bool:
        """Wait for a joint state that arrived after ``after_ns`` and not before
        ``not_before_ns`` (monotonic ns); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for msg in self._state_sub.take():  # empty the queue first, so that wait() sees only newer ones
                stamp = msg.header.stamp.to_ns()
                if self._last_stamp_ns > 0 and stamp > self._last_stamp_ns:
                    self._publish_intervals.append((stamp - self._last_stamp_ns) / 1e9)
                self._last_stamp_ns = max(stamp, self._last_stamp_ns)
            latest = self._state_sub.latest()
            if latest is not None and latest[1] > after_ns and latest[1] >= not_before_ns:
                self._poll()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            early = (not_before_ns - time.monotonic_ns()) / 1e9
            if latest is not None and latest[1] > after_ns and early > 0:
                remaining = min(remaining, early)  # a state came too soon: look again once it is time
            self._state_sub.wait(remaining)

    def _operator_action(self) -> np.ndarray | None:
        if self._operator is None or time.monotonic_ns() - self._operator[1] > self.intervention_timeout * 1e9:
            return None
        return self._operator[0]

    # -- pausing -----------------------------------------------------------------------
    def _pause_until_state(self, why: str) -> None:
        """Stop commanding; wait ``pause_timeout`` for joint states, else raise."""
        self._set_status("paused", f"{why}; commands stopped, waiting up to {self.pause_timeout:g} s for the arm")
        since = time.monotonic_ns()
        if not self._wait_state(since, self.pause_timeout):
            self._set_status("unreachable", f"no joint states on {self._where('joint_states')} for {self.pause_timeout:g} s")
            raise RobotUnavailable(f"no joint states arrived on {self._where('joint_states')} for "
                                   f"{self.pause_timeout + self.state_timeout:g} s; the arm's driver stopped or the network "
                                   f"is down, so the run stops here (restart the driver and resume the run).")

    def _wait_estop_released(self) -> None:
        self._poll()
        if not self.safety.estop:
            return
        self._set_status("estop", f"e-stop latched on {self.topics['estop']}; waiting up to {self.pause_timeout:g} s for its release")
        deadline = time.monotonic() + self.pause_timeout
        while self.safety.estop:
            if time.monotonic() > deadline:
                raise RobotUnavailable(f"the e-stop on {self.topics['estop']} (ROS domain {self.domain_id}) stayed latched for "
                                       f"{self.pause_timeout:g} s; publish false on it to release the arm, then resume the run.")
            self._estop_sub.wait(0.05)
            self._poll()

    # -- observation, reward -------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in observation_parts(self.physics, self.task).values()], dtype=np.float32)

    def _note_observation(self) -> None:
        if self._obs_ns > 0 and self._steps > 0:
            gap = (self._state_ns - self._obs_ns) / 1e9
            self.periods.append(gap)
            self.missed_ticks += max(0, int(round(gap / self.control_dt)) - 1)
        self._obs_ns = self._state_ns
        self._obs_joints = self.physics.joint_angles().copy()

    def _info(self, success: bool, **extra) -> dict:
        return {"success": bool(success), "safety": dict(self.safety.counts), "missed_ticks": self.missed_ticks, **extra}

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self._connect()
        self._wait_estop_released()
        self._episode += 1
        self._steps = 0
        self._start_recording()
        self._set_status("resetting", f"moving to the start pose of episode {self._episode} (seed {episode_seed})")
        start = episode_start(self.task, self.physics, episode_seed, self.kin.lower, self.kin.upper)
        self._move_to(start)
        sent = time.monotonic_ns()
        self._reset_pub.publish(msgs.String(data=json.dumps({"seed": episode_seed, "env": self.env_id})))
        if self._pose_sub is not None:  # a pose of the re-placed cube: two periods after the request is served
            self._wait_pose(sent + int(2 * self.control_dt * 1e9))
        if not self._wait_state(self._state_ns, self.state_timeout):
            self._pause_until_state(f"no joint state on {self._where('joint_states')} after the reset")
        self._note_observation()
        self._needs_reset = False
        _, success = self.task.evaluate(self.physics)
        self._set_status("running", f"episode {self._episode} started")
        return self._observation(), self._info(success, intervened=False, executed_action=np.zeros(7, np.float32),
                                               step_record={"intervened": np.zeros(1)})

    def _move_to(self, joints: np.ndarray) -> None:
        """A trajectory to ``joints`` with the gripper open, at ``reset_speed`` of the
        velocity limits; returns once the arm is there (or 2 s after it should be)."""
        self._poll()
        goal = np.append(joints, kinematics.GRIPPER_OPENING_MAX / 2)
        duration = max(0.5, float(np.max(np.abs(joints - self.physics.joint_angles()) / (self.reset_speed * kinematics.VELOCITY_LIMITS))))
        point = msgs.JointTrajectoryPoint(positions=goal, time_from_start=msgs.Duration.from_ns(int(duration * 1e9)))
        self._trajectory_pub.publish(msgs.JointTrajectory(header=msgs.Header(stamp=msgs.now()), joint_names=list(COMMAND_JOINTS),
                                                          points=[point]))
        deadline = time.monotonic() + duration + 2.0
        while True:
            if not self._wait_state(self._state_ns, self.state_timeout):
                self._pause_until_state(f"no joint state on {self._where('joint_states')} for {self.state_timeout:g} s during the reset")
                return self._move_to(joints)
            if self.safety.estop:
                self._wait_estop_released()
                return self._move_to(joints)
            there = np.max(np.abs(self.physics.joint_angles() - joints)) < self.reset_tolerance
            if (there and np.max(np.abs(self.physics.joint_velocities())) < 0.05) or time.monotonic() > deadline:
                return None

    def _wait_pose(self, not_before_ns: int) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while time.monotonic() < deadline:
            self._poll()
            if self._pose_ns >= not_before_ns:
                return
            assert self._pose_sub is not None
            self._pose_sub.wait(0.02)
            self._pose_sub.take()
        raise RobotUnavailable(f"no object pose arrived on {self._where('object_pose')} within {self.connect_timeout:g} s "
                               f"after the reset request; start the perception (or the simulated driver) for this task.")

    def step(self, action):
        if self._needs_reset:
            raise ValueError(f"{self.env_id}: call reset() before step() (at the start and after an episode ends).")
        policy_action = np.asarray(action, np.float64)
        if policy_action.shape != self.action_space.shape:
            raise ValueError(f"{self.env_id} expects actions of shape {self.action_space.shape}, got {policy_action.shape}.")
        self._poll()
        chosen, intervened = self.safety.select(policy_action, self._operator_action())
        target = action_to_target(chosen, self._obs_joints, self.max_step)
        command, check = self.safety.filter(target, self._measured, now=time.monotonic())
        extra: dict = {}
        if command is None:
            hold = np.append(self._obs_joints, self._measured[6])  # nothing sent: the arm stays, the gripper as it is
            executed = target_to_action(hold, self._obs_joints, self.max_step)
            if check["blocked"] == "estop":
                extra["estop"] = True
                self._set_status("estop", f"e-stop latched on {self.topics['estop']}: nothing sent, episode ended")
            else:
                extra["paused"] = True
                self._pause_until_state(f"no joint state on {self._where('joint_states')} for {self.state_timeout:g} s")
        else:
            sent = time.monotonic_ns()
            command_msg = command_message(command)
            self._command_pub.publish(command_msg)
            self._record("command", command_msg)
            executed = target_to_action(command, self._obs_joints, self.max_step)
            interval = float(np.median(self._publish_intervals)) if self._publish_intervals else self.control_dt
            gap = self.control_dt - 0.5 * min(interval, self.control_dt)
            fresh = self._wait_state(sent, self.state_timeout, self._obs_ns + int(gap * 1e9))
            if not fresh:
                extra["paused"] = True
                self.safety.watchdog.expired(time.monotonic())  # count the trip
                self._pause_until_state(f"no joint state on {self._where('joint_states')} for {self.state_timeout:g} s")
        self._steps += 1
        self._note_observation()
        reward, success = self.task.evaluate(self.physics)
        reward = float(success) if self.sparse else float(reward)
        truncated = self._steps >= self.time_limit or bool(extra)
        self._needs_reset = truncated
        info = self._info(success, intervened=intervened, executed_action=executed.astype(np.float32),
                          step_record={"intervened": np.array([float(intervened)])}, **extra)
        if not extra:
            self._set_status("running", "operator in control" if intervened else "", intervened=intervened,
                             clipped=check["clipped"])
        return self._observation(), reward, False, truncated, info

    def timing(self) -> dict:
        """Control-period statistics of the observations so far (s)."""
        p = np.asarray(self.periods)
        return {"steps": int(p.size), "missed_ticks": self.missed_ticks,
                "period_mean_s": float(p.mean()) if p.size else None,
                "period_p99_s": float(np.percentile(p, 99)) if p.size else None,
                "jitter_std_s": float(p.std()) if p.size else None}

    # -- recording ---------------------------------------------------------------------
    def _start_recording(self) -> None:
        """Close the last episode's bag and open this episode's (never overwriting one)."""
        self._stop_recording()
        if not self.record_dir:
            return
        from robot.record import Recorder, recording_path

        path = recording_path(self.record_dir, self._episode)
        suffix = 0
        while path.exists():  # a resumed run counts its episodes from 0 again
            suffix += 1
            path = path.with_name(f"{recording_path(self.record_dir, self._episode).name}_{suffix}")
        self._recorder = Recorder(path, typestore=self.record_typestore)

    def _record(self, topic: str, msg) -> None:
        if self._recorder is not None:
            self._recorder.write(self.topics[topic], msg, time.time_ns())

    def _stop_recording(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None

    def close(self):
        self._stop_recording()
        if self._transport is not None and not self._transport.closed:
            self._set_status("closed", "the env was closed")
            self._transport.close()
