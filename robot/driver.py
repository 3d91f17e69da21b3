"""The simulated arm driver: the project's MuJoCo arm behind the topics of ros2_control.

``agent robot sim-driver`` runs one :class:`SimDriver`. Each control tick (real time,
default 20 Hz) it

1. applies the newest command: a forward position command (``std_msgs/Float64MultiArray``,
   one entry per joint in ``COMMAND_JOINTS``: six arm joints, then the gripper finger in
   m, as a ``forward_position_controller`` takes them) or the current point of a
   ``trajectory_msgs/JointTrajectory`` (interpolated linearly between its points);
2. advances the physics by one control period (the arm's position servos track the
   command, exactly as in ``sims/Arm<Task>-v0``);
3. publishes ``/joint_states`` (reliable, as joint_state_broadcaster) and, for tasks
   with a cube, ``/object_pose`` (best effort), both stamped with the wall clock.

Between ticks it sleeps on the command subscription, so every command's arrival time is
known; a command whose layout carries a send stamp (:func:`command_message`) gives a
latency sample. When forward commands go stale (none for ``stale_timeout``) the driver
holds the arm where it is; a real forward controller has no such timeout. A late tick
is counted as missed and the physics catches up (at most ``max_catch_up`` periods), so
simulated time keeps pace with the wall clock as a real arm's does.

A reset request (``std_msgs/String`` JSON ``{"seed": N}``) re-places the cube and goal
as ``ArmEnv.reset`` with seed N would; the arm itself is moved by the agent's trajectory.
SIGINT and SIGTERM end the loop after the current tick; the transport is closed and the
statistics written (``stats_out``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from robot import msgs
from robot.safety import COMMAND_JOINTS
from robot.tasks import episode_start
from robot.transport import COMMAND, RELIABLE, SENSOR_DATA, make_transport
from sims.arm import kinematics
from sims.arm.env import ArmEnv
from sims.gaps import parse_assignments

STAMP_LABEL = "stamp_ns="
"""Prefix of the layout dimension label that carries a command's send time (wall clock,
ns); a ros2_control forward controller reads only ``data`` and ignores the layout."""
STATE_JOINTS = (*kinematics.JOINT_NAMES, *kinematics.GRIPPER_JOINTS)
HARDWARE_STEPS = 2.0  # a target's farthest travel from the joint, in control periods at the velocity limit
LIMIT_MARGIN = 0.01  # rad kept between a target and a joint stop: a loaded joint sags past its target
BRAKING = 10.0  # rad/s^2: the deceleration a target's approach to a joint stop allows


def command_message(values: np.ndarray, stamp_ns: int | None = None) -> msgs.Float64MultiArray:
    """A forward position command; the layout is ``[joints: n] x [stamp_ns=<send time>: 1]``."""
    values = np.asarray(values, np.float64)
    stamp = time.time_ns() if stamp_ns is None else int(stamp_ns)
    layout = msgs.MultiArrayLayout(dim=[msgs.MultiArrayDimension(label="joints", size=values.size, stride=values.size),
                                        msgs.MultiArrayDimension(label=f"{STAMP_LABEL}{stamp}", size=1, stride=1)])
    return msgs.Float64MultiArray(layout=layout, data=values)


def command_stamp(msg: msgs.Float64MultiArray) -> int | None:
    """The send time a command's layout carries (wall-clock ns), or None."""
    for dim in msg.layout.dim:
        if dim.label.startswith(STAMP_LABEL):
            try:
                return int(dim.label[len(STAMP_LABEL):])
            except ValueError:
                return None
    return None


@dataclass
class DriverConfig:
    task: str = "reach"
    """arm task whose scene is simulated: reach, push or pick_place"""
    rate: float = 20.0
    """control rate (Hz): physics ticks and /joint_states messages per second"""
    domain_id: int | None = None
    """ROS 2 domain id (None: ROS_DOMAIN_ID, else 0)"""
    transport: str = "auto"
    """auto, dds, rclpy or local"""
    node_name: str = "sim_driver"
    """the node's name on the ROS graph"""
    namespace: str = "/"
    """the node's namespace on the ROS graph"""
    joint_states_topic: str = "/joint_states"
    command_topic: str = "/forward_position_controller/commands"
    trajectory_topic: str = "/joint_trajectory_controller/joint_trajectory"
    object_pose_topic: str = "/object_pose"
    reset_topic: str = "/agent/reset_objects"
    status_topic: str = "/sim_driver/status"
    """JSON statistics once a second (ticks, missed ticks, holds, latency)"""
    stale_timeout: float = 0.5
    """seconds without a forward command after which the arm holds its position"""
    seed: int = 0
    """reset seed of the first scene"""
    realtime_priority: int = 0
    """SCHED_FIFO priority of the driver's threads (1-99, as ros2_control's controller manager
    asks for); 0 keeps normal scheduling"""
    max_catch_up: int = 5
    """most control periods of physics advanced at once after missed ticks"""
    stats_out: str = ""
    """JSON file the statistics (and every latency sample) are written to on shutdown"""
    gap: dict = field(default_factory=dict)
    """dynamics-gap kwargs of the simulated arm (sims.gaps), e.g. {"mass_scale": 1.2}"""


@dataclass
class _Trajectory:
    index: np.ndarray  # into COMMAND_JOINTS
    times: np.ndarray  # seconds from start, first 0
    points: np.ndarray  # [len(times), len(index)]
    start: float  # monotonic

    def at(self, now: float) -> tuple[np.ndarray, bool]:
        t = now - self.start
        values = np.array([np.interp(t, self.times, self.points[:, j]) for j in range(self.points.shape[1])])
        return values, t >= self.times[-1]


class SimDriver:
    """The simulated arm served over a transport (module docstring)."""

    def __init__(self, cfg: DriverConfig, transport=None):
        if not cfg.rate > 0:
            raise ValueError(f"--rate must be a positive number of Hz, found {cfg.rate!r}.")
        if not cfg.stale_timeout > 0:
            raise ValueError(f"--stale-timeout must be a positive number of seconds, found {cfg.stale_timeout!r}.")
        self.cfg = cfg
        self.sim = ArmEnv(cfg.task, control_rate=cfg.rate, **cfg.gap)
        self.sim.reset(seed=cfg.seed)
        self.model, self.data, self.physics = self.sim.model, self.sim.data, self.sim.physics
        self.period = self.sim.control_dt
        self.has_object = self.physics.object_body >= 0
        finger = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, kinematics.GRIPPER_JOINTS[0])
        self.lower = np.append(self.physics.kin.lower, self.model.jnt_range[finger, 0])
        self.upper = np.append(self.physics.kin.upper, self.model.jnt_range[finger, 1])
        self.ctrl_index = np.append(self.physics.arm_actuators, self.physics.gripper_actuator)
        # the hardware interface's velocity limit: an arm joint's target is applied at most
        # HARDWARE_STEPS control periods of travel at its velocity limit from where the joint is
        # (the agent's safety layer asks for at most one from where it was, so it never binds
        # there); the gripper's target may span its stroke, as the agent's may
        self.max_travel = HARDWARE_STEPS * self.period * kinematics.VELOCITY_LIMITS
        self.state_qpos = np.append(self.physics.qpos_index, self.physics.finger_qpos)
        self.state_dof = np.append(self.physics.dof_index, self.physics.finger_dof)
        self.target = self.data.ctrl[self.ctrl_index].copy()
        self.transport = transport or make_transport(cfg.transport, cfg.domain_id, node_name=cfg.node_name,
                                                     namespace=cfg.namespace)
        self.domain_id = getattr(self.transport, "domain_id", cfg.domain_id)
        t = self.transport
        self.state_pub = t.publisher(cfg.joint_states_topic, msgs.JointState, RELIABLE)
        self.pose_pub = t.publisher(cfg.object_pose_topic, msgs.PoseStamped, SENSOR_DATA) if self.has_object else None
        self.status_pub = t.publisher(cfg.status_topic, msgs.String, RELIABLE)
        self.command_sub = t.subscription(cfg.command_topic, msgs.Float64MultiArray, COMMAND)
        self.trajectory_sub = t.subscription(cfg.trajectory_topic, msgs.JointTrajectory, RELIABLE)
        self.reset_sub = t.subscription(cfg.reset_topic, msgs.String, RELIABLE)
        self.mode = "hold"  # hold, forward or trajectory
        self.trajectory: _Trajectory | None = None
        self.last_command = -np.inf  # monotonic arrival of the newest forward command
        self.counts = {"ticks": 0, "missed_ticks": 0, "commands": 0, "trajectories": 0, "resets": 0,
                       "stale_holds": 0, "rejected": 0}
        self.latencies_ns: list[int] = []
        self.tick_lateness_s: list[float] = []
        self._warned: set[str] = set()
        self._stop = threading.Event()

    # -- messages in -------------------------------------------------------------------
    def _reject(self, kind: str, message: str) -> None:
        self.counts["rejected"] += 1
        if kind not in self._warned:  # one line per kind of bad input, not one per message
            self._warned.add(kind)
            print(f"sim-driver: {message}", file=sys.stderr, flush=True)

    def _on_command(self, msg: msgs.Float64MultiArray, arrived_ns: int | None) -> None:
        values = np.asarray(msg.data, np.float64)
        if values.shape != (len(COMMAND_JOINTS),):
            self._reject("size", f"ignoring commands on {self.cfg.command_topic}: expected {len(COMMAND_JOINTS)} "
                                 f"values ({', '.join(COMMAND_JOINTS)}), found {values.size}.")
            return
        if not np.all(np.isfinite(values)):
            self._reject("finite", f"ignoring a command on {self.cfg.command_topic} with non-finite values {values.tolist()}.")
            return
        stamp = command_stamp(msg)
        if stamp is not None and arrived_ns is not None:
            self.latencies_ns.append(arrived_ns - stamp)
        self.target = np.clip(values, self.lower, self.upper)
        self.counts["commands"] += 1
        self.last_command = time.monotonic()
        self.mode, self.trajectory = "forward", None

    def _on_trajectory(self, msg: msgs.JointTrajectory) -> None:
        unknown = [n for n in msg.joint_names if n not in COMMAND_JOINTS]
        if unknown or len(set(msg.joint_names)) != len(msg.joint_names):
            self._reject("traj_names", f"ignoring a trajectory on {self.cfg.trajectory_topic}: expected distinct joints "
                                       f"among {', '.join(COMMAND_JOINTS)}, found {msg.joint_names}.")
            return
        index = np.array([COMMAND_JOINTS.index(n) for n in msg.joint_names], int)
        if not msg.points:  # an empty trajectory stops the arm where it is
            self._hold()
            return
        times = np.array([p.time_from_start.to_ns() / 1e9 for p in msg.points])
        points = [np.asarray(p.positions, np.float64) for p in msg.points]
        if any(p.shape != (len(index),) for p in points) or not np.all(np.isfinite(np.stack(points))) \
                or times[0] < 0 or np.any(np.diff(times) <= 0):
            self._reject("traj_points", f"ignoring a trajectory on {self.cfg.trajectory_topic}: expected finite points of "
                                        f"{len(index)} positions at increasing times_from_start, found another shape.")
            return
        start = self.target[index]
        all_times = np.concatenate([[0.0], times]) if times[0] > 0 else times
        all_points = np.vstack([start[None], np.stack(points)]) if times[0] > 0 else np.stack(points)
        self.trajectory = _Trajectory(index, all_times, np.clip(all_points, self.lower[index], self.upper[index]), time.monotonic())
        self.mode = "trajectory"
        self.counts["trajectories"] += 1

    def _on_reset(self, msg: msgs.String) -> None:
        try:
            request = json.loads(msg.data)
            seed = int(request["seed"])
        except (ValueError, TypeError, KeyError):
            self._reject("reset", f"ignoring a reset request on {self.cfg.reset_topic}: expected JSON like "
                                  f'{{"seed": 3}}, found {msg.data[:80]!r}.')
            return
        episode_start(self.sim.task, self.physics, seed, self.physics.kin.lower, self.physics.kin.upper)
        mujoco.mj_forward(self.model, self.data)
        self.counts["resets"] += 1

    def _receive(self, deadline: float) -> None:
        """Take commands until ``deadline`` (monotonic s), noting each one's arrival."""
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.command_sub.wait(remaining):
                latest = self.command_sub.latest()
                for msg in self.command_sub.take():
                    arrived = latest[1] if latest is not None and latest[0] is msg else None
                    self._on_command(msg, arrived + time.time_ns() - time.monotonic_ns() if arrived is not None else None)

    def _hold(self) -> None:
        self.target = np.append(self.data.qpos[self.physics.qpos_index], self.data.qpos[self.physics.finger_qpos[0]])
        self.mode, self.trajectory = "hold", None

    # -- one tick ----------------------------------------------------------------------
    def tick(self, periods: int = 1) -> None:
        """Apply the newest command, advance ``periods`` control periods, publish the state."""
        for msg in self.trajectory_sub.take():
            self._on_trajectory(msg)
        for reset in self.reset_sub.take():
            self._on_reset(reset)
        now = time.monotonic()
        if self.mode == "trajectory" and self.trajectory is not None:
            values, done = self.trajectory.at(now)
            self.target[self.trajectory.index] = values
            if done:
                self.mode, self.trajectory = "hold", None
        elif self.mode == "forward" and now - self.last_command > self.cfg.stale_timeout:
            self._hold()
            self.counts["stale_holds"] += 1
            self.status_pub.publish(msgs.String(data=json.dumps(self.stats())))
            print(f"sim-driver: no command on {self.cfg.command_topic} for {self.cfg.stale_timeout:g} s; holding position.",
                  file=sys.stderr, flush=True)
        self.data.ctrl[self.ctrl_index] = self.limited(self.target)
        mujoco.mj_step(self.model, self.data, nstep=self.sim.substeps * periods)
        mujoco.mj_kinematics(self.model, self.data)
        self._publish()
        self.counts["ticks"] += 1

    def limited(self, target: np.ndarray) -> np.ndarray:
        """What the arm's hardware interface applies of a target: within the joint limits,
        and within ``max_travel`` of the joint's position, so that no command, however far,
        drives a joint into its stop with momentum (as ros2_control's joint limits do)."""
        arm = len(self.max_travel)
        position = self.data.qpos[self.physics.qpos_index]
        low, high = self.lower[:arm] + LIMIT_MARGIN, self.upper[:arm] - LIMIT_MARGIN
        # toward a stop, no faster than the joint can brake before it: v = sqrt(2 a d)
        brake = HARDWARE_STEPS * self.period * np.sqrt(2.0 * BRAKING * np.maximum(0.0, np.stack([position - low, high - position])))
        near = np.clip(target[:arm], position - np.minimum(self.max_travel, brake[0]),
                       position + np.minimum(self.max_travel, brake[1]))
        return np.append(np.clip(near, low, high), np.clip(target[arm:], self.lower[arm:], self.upper[arm:]))

    def _publish(self) -> None:
        header = msgs.Header(stamp=msgs.now(), frame_id="world")
        effort = self.data.qfrc_actuator[self.state_dof]
        self.state_pub.publish(msgs.JointState(header=header, name=list(STATE_JOINTS), position=self.data.qpos[self.state_qpos],
                                               velocity=self.data.qvel[self.state_dof], effort=effort))
        if self.pose_pub is not None:
            pos = self.physics.object_pos()
            adr = self.physics.object_qpos
            w, x, y, z = self.data.qpos[adr + 3:adr + 7]
            self.pose_pub.publish(msgs.PoseStamped(header=header, pose=msgs.Pose(
                position=msgs.Point(x=float(pos[0]), y=float(pos[1]), z=float(pos[2])),
                orientation=msgs.Quaternion(x=float(x), y=float(y), z=float(z), w=float(w)))))

    # -- the loop ----------------------------------------------------------------------
    def stats(self) -> dict:
        lat = np.asarray(self.latencies_ns, np.float64) / 1e6
        late = np.asarray(self.tick_lateness_s)
        return {**self.counts, "mode": self.mode, "rate_hz": 1.0 / self.period,
                "missed_tick_fraction": self.counts["missed_ticks"] / max(1, self.counts["ticks"] + self.counts["missed_ticks"]),
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else None,
                "latency_samples": int(lat.size),
                "tick_lateness_ms_p99": float(np.percentile(late, 99) * 1e3) if late.size else None}

    def stop(self, *_args) -> None:
        self._stop.set()

    def run(self, duration_s: float | None = None) -> dict:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM via :func:`serve`), or ``duration_s``."""
        start = next_tick = time.monotonic()
        next_status = start + 1.0
        while not self._stop.is_set() and (duration_s is None or time.monotonic() - start < duration_s):
            now = time.monotonic()
            lateness = now - next_tick
            self.tick_lateness_s.append(max(0.0, lateness))
            periods = 1
            if lateness >= self.period:  # woken too late: whole ticks went by without us
                missed = int(lateness // self.period)
                self.counts["missed_ticks"] += missed
                periods += min(missed, self.cfg.max_catch_up)
                next_tick += missed * self.period
            self.tick(periods)
            if now >= next_status:
                self.status_pub.publish(msgs.String(data=json.dumps(self.stats())))
                next_status = now + 1.0
            next_tick += self.period
            self._receive(next_tick)
        return self.stats()

    def close(self) -> None:
        self.transport.close()
        self.sim.close()


def use_realtime_priority(priority: int) -> str:
    """Put this thread (and the threads it starts later) under SCHED_FIFO at ``priority``;
    returns '' or why that was not possible."""
    if not 1 <= priority <= 99:
        raise ValueError(f"--realtime-priority must be 1..99 (or 0 for normal scheduling), found {priority}.")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return f"real-time priority {priority} refused ({exc}); running with normal scheduling"
    return ""


def serve(cfg: DriverConfig) -> dict:
    """Run a driver until SIGINT or SIGTERM; write its statistics to ``cfg.stats_out``."""
    if cfg.realtime_priority:  # before the transport exists, so that its receive threads inherit it
        refused = use_realtime_priority(cfg.realtime_priority)
        if refused:
            print(f"sim-driver: {refused}.", file=sys.stderr, flush=True)
    driver = SimDriver(cfg)
    previous = {sig: signal.signal(sig, driver.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"sim-driver: serving the {cfg.task} arm at {1 / driver.period:g} Hz on domain {driver.domain_id} "
          f"({driver.transport.kind}); {cfg.joint_states_topic} out, {cfg.command_topic} in.", file=sys.stderr, flush=True)
    try:
        stats = driver.run()
    finally:
        driver.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if cfg.stats_out:
        out = Path(cfg.stats_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**stats, "latency_ms": (np.asarray(driver.latencies_ns) / 1e6).tolist()}))
    return stats


def add_arguments(parser) -> None:
    """The flags of ``agent robot sim-driver`` (and ``python -m robot.driver``)."""
    d = DriverConfig()
    parser.add_argument("--task", default=d.task, choices=["reach", "push", "pick_place"], help="arm task whose scene is simulated (default: reach)")
    parser.add_argument("--rate", type=float, default=d.rate, help="control rate in Hz (default: 20)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS 2 domain id (default: ROS_DOMAIN_ID, else 0)")
    parser.add_argument("--transport", default=d.transport, choices=["auto", "dds", "rclpy"], help="auto: rclpy when importable, else Cyclone DDS")
    parser.add_argument("--node-name", default=d.node_name, help="the node's name on the ROS graph (default: sim_driver)")
    parser.add_argument("--namespace", default=d.namespace, help="the node's namespace on the ROS graph (default: /)")
    parser.add_argument("--joint-states-topic", default=d.joint_states_topic)
    parser.add_argument("--command-topic", default=d.command_topic)
    parser.add_argument("--trajectory-topic", default=d.trajectory_topic)
    parser.add_argument("--object-pose-topic", default=d.object_pose_topic)
    parser.add_argument("--reset-topic", default=d.reset_topic, help='std_msgs/String JSON {"seed": N} that re-places cube and goal')
    parser.add_argument("--status-topic", default=d.status_topic, help="std_msgs/String JSON statistics, once a second and on every hold")
    parser.add_argument("--stale-timeout", type=float, default=d.stale_timeout, help="hold position after this many seconds without a command (default: 0.5)")
    parser.add_argument("--seed", type=int, default=d.seed, help="reset seed of the first scene (default: 0)")
    parser.add_argument("--gap", action="append", default=[], metavar="NAME=VALUE",
                        help="a dynamics gap of the simulated arm (sims.gaps, e.g. mass_scale=1.2); repeatable")
    parser.add_argument("--realtime-priority", type=int, default=d.realtime_priority, metavar="1-99",
                        help="run under SCHED_FIFO at this priority, as ros2_control does on a real-time host (default: 0, off)")
    parser.add_argument("--stats-out", default="", metavar="FILE.json", help="write statistics and latency samples here on shutdown")
    parser.add_argument("--json", action="store_true", help="print the final statistics as JSON")


def config_from_args(args) -> DriverConfig:
    return DriverConfig(task=args.task, rate=args.rate, domain_id=args.domain_id, transport=args.transport,
                        node_name=args.node_name, namespace=args.namespace,
                        joint_states_topic=args.joint_states_topic, command_topic=args.command_topic,
                        trajectory_topic=args.trajectory_topic, object_pose_topic=args.object_pose_topic,
                        reset_topic=args.reset_topic, status_topic=args.status_topic, stale_timeout=args.stale_timeout,
                        seed=args.seed, stats_out=args.stats_out, gap=parse_assignments(args.gap, "--gap"),
                        realtime_priority=args.realtime_priority)


def main(argv: list[str] | None = None, prog: str = "python -m robot.driver") -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog, description="Serve the project's MuJoCo arm in real time behind ros2_control's topics: joint states "
                               "(and the cube's pose) out, forward position commands and joint trajectories in; hold "
                               "position when commands go stale; re-place the cube on request; stop on SIGINT or SIGTERM.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        stats = serve(config_from_args(args))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"sim-driver: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2) if args.json else
          f"sim-driver: stopped after {stats['ticks']} ticks ({stats['missed_ticks']} missed, {stats['stale_holds']} stale holds).")
    return 0


class DriverProcess:
    """A simulated driver in a child process (``python -m robot.driver``) for tests and
    benchmarks: :meth:`start` returns once its joint states arrive, :meth:`stop` signals it
    and waits. Its stderr goes to ``log_path``."""

    def __init__(self, domain_id: int, *flags: str, task: str = "reach", log_path: str | Path | None = None,
                 joint_states_topic: str = "/joint_states"):
        self.domain_id, self.task, self.flags = domain_id, task, flags
        self.topic = joint_states_topic
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "DriverProcess":
        import tempfile

        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="sim-driver-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "robot.driver", "--task", self.task, "--transport", "dds",
               "--domain-id", str(self.domain_id), "--joint-states-topic", self.topic, *self.flags]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        transport = make_transport("dds", self.domain_id, node_name="driver_probe")
        try:
            sub = transport.subscription(self.topic, msgs.JointState, SENSOR_DATA)
            deadline = time.monotonic() + timeout_s
            while not sub.wait(0.1):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the simulated driver did not publish {self.topic} on domain {self.domain_id} "
                                       f"within {timeout_s:g} s; its log: {self.log(500)!r}")
        finally:
            transport.close()
        return self

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "DriverProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
