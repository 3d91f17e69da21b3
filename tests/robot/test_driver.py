"""The simulated arm driver in its own process, spoken to over DDS on loopback."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from robot import msgs
from robot.driver import STATE_JOINTS, DriverProcess, command_message
from robot.transport import COMMAND, RELIABLE, SENSOR_DATA, make_transport
from sims.arm.env import ArmEnv

COMMANDS = "/forward_position_controller/commands"


@pytest.fixture
def domain():
    return random.randint(100, 232)


@pytest.fixture
def bus(domain):
    transport = make_transport("dds", domain, node_name="test")
    yield transport
    transport.close()


def collect(sub, seconds: float) -> list[tuple[msgs.JointState, int]]:
    """Every joint state (and its arrival) for ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sub.wait(deadline - time.monotonic()):
            latest = sub.latest()
            sub.take()
            out.append(latest)
    return out


def wait_for(sub, predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = sub.latest()
        if latest is not None and predicate(latest[0]):
            return latest
        sub.wait(0.05)
        sub.take()
    return None


def test_joint_states_come_at_the_control_rate_and_commands_are_followed(domain, bus, tmp_path):
    stats = tmp_path / "stats.json"
    with DriverProcess(domain, "--rate", "20", "--stats-out", str(stats), log_path=tmp_path / "driver.log") as driver:
        states = bus.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        commands = bus.publisher(COMMANDS, msgs.Float64MultiArray, COMMAND)
        seen = collect(states, 1.5)
        rate = (len(seen) - 1) / ((seen[-1][1] - seen[0][1]) / 1e9)
        assert 18.0 < rate < 22.0
        first = seen[-1][0]
        assert first.name == list(STATE_JOINTS) and first.position.size == first.velocity.size == first.effort.size == 8
        target = np.append(first.position[:6], 0.0)
        target[0] += 0.4
        for _ in range(15):
            commands.publish(command_message(target))
            time.sleep(0.05)
        last = states.latest()[0]
        np.testing.assert_allclose(last.position[0], target[0], atol=0.01)
        assert last.position[6] < 0.01  # the gripper closes on command (from 0.04 m open)
        assert driver.stop(signal.SIGINT) == 0
    result = json.loads(stats.read_text())
    assert result["commands"] >= 14 and result["latency_samples"] == result["commands"]
    assert 0 < result["latency_ms_p50"] < 50


def test_a_trajectory_is_interpolated_between_its_points(domain, bus, tmp_path):
    with DriverProcess(domain, log_path=tmp_path / "driver.log"):
        states = bus.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        trajectories = bus.publisher("/joint_trajectory_controller/joint_trajectory", msgs.JointTrajectory, RELIABLE)
        start = wait_for(states, lambda m: True, 5.0)[0].position[0]
        point = msgs.JointTrajectoryPoint(positions=np.array([start + 0.8]), time_from_start=msgs.Duration(sec=1))
        trajectories.publish(msgs.JointTrajectory(joint_names=["shoulder_pan"], points=[point]))
        sent = time.monotonic()
        time.sleep(0.5)
        halfway = states.latest()[0].position[0]
        assert start + 0.2 < halfway < start + 0.6, "the arm should be about halfway after half the duration"
        assert wait_for(states, lambda m: abs(m.position[0] - (start + 0.8)) < 0.01, 2.0) is not None
        assert time.monotonic() - sent > 0.9


def test_killing_the_agent_makes_the_driver_hold_within_its_stale_timeout(domain, bus, tmp_path):
    stale = 0.3
    agent = textwrap.dedent(f"""
        import time, numpy as np
        from robot import msgs
        from robot.driver import command_message
        from robot.transport import COMMAND, SENSOR_DATA, make_transport
        t = make_transport("dds", {domain}, node_name="doomed_agent")
        states = t.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        pub = t.publisher("{COMMANDS}", msgs.Float64MultiArray, COMMAND)
        while states.latest() is None:
            states.wait(0.1)
        q = states.latest()[0].position
        target = np.append(q[:6], 0.04)
        print("streaming", flush=True)
        while True:  # a slow sweep of the shoulder, until killed
            target[0] += 0.03
            pub.publish(command_message(target))
            time.sleep(0.05)
    """)
    with DriverProcess(domain, "--stale-timeout", str(stale), log_path=tmp_path / "driver.log") as driver:
        states = bus.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        status = bus.subscription("/sim_driver/status", msgs.String, RELIABLE)
        proc = subprocess.Popen([sys.executable, "-c", agent], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
            time.sleep(1.0)
            moving = collect(states, 0.3)
            assert moving[-1][0].position[0] - moving[0][0].position[0] > 0.05  # it follows the sweep
            status.take()
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic_ns()
            proc.wait()
            hold = wait_for(status, lambda m: json.loads(m.data)["mode"] == "hold", 3.0)
            assert hold is not None, f"the driver never held; its log: {driver.log()}"
            assert (hold[1] - killed) / 1e9 < stale + 0.1 + 0.05  # timeout, plus a tick, plus slack
            at_hold = states.latest()[0].position.copy()
            after = collect(states, 1.0)
            drift = np.max(np.abs(np.stack([m.position for m, _ in after]) - at_hold))
            assert drift < 0.02, f"the arm moved {drift:.3f} rad after the hold"
            assert np.max(np.abs(after[-1][0].velocity[:6])) < 0.01
            assert "holding position" in driver.log()
        finally:
            proc.kill()


def test_a_reset_request_places_cube_and_goal_as_sims_would(domain, bus, tmp_path):
    with DriverProcess(domain, task="push", log_path=tmp_path / "driver.log"):
        poses = bus.subscription("/object_pose", msgs.PoseStamped, SENSOR_DATA)
        resets = bus.publisher("/agent/reset_objects", msgs.String, RELIABLE)
        time.sleep(0.3)
        resets.publish(msgs.String(data=json.dumps({"seed": 5})))
        sim = ArmEnv("push")
        sim.reset(seed=5)
        expected = sim.physics.object_pos().copy()
        got = wait_for(poses, lambda m: abs(m.pose.position.x - expected[0]) < 1e-3, 3.0)
        assert got is not None, "the cube never moved to where sims puts it for seed 5"
        p = got[0].pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], expected, atol=2e-3)
        assert got[0].header.frame_id == "world"


def test_bad_input_gets_one_line_and_the_arm_stays(domain, bus, tmp_path):
    stats = tmp_path / "stats.json"
    with DriverProcess(domain, "--stats-out", str(stats), log_path=tmp_path / "driver.log") as driver:
        states = bus.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        commands = bus.publisher(COMMANDS, msgs.Float64MultiArray, COMMAND)
        resets = bus.publisher("/agent/reset_objects", msgs.String, RELIABLE)
        before = wait_for(states, lambda m: True, 5.0)[0].position.copy()
        for _ in range(5):
            commands.publish(command_message(np.array([3.0, 0.0, 0.0])))
            time.sleep(0.02)  # keep-last 1: give the driver each one
            commands.publish(command_message(np.full(7, np.nan)))
            resets.publish(msgs.String(data="seed please"))
            time.sleep(0.05)
        time.sleep(0.3)
        np.testing.assert_allclose(states.latest()[0].position, before, atol=1e-3)
        assert driver.stop(signal.SIGTERM) == 0
    log = driver.log()
    assert log.count("expected 7 values") == 1 and log.count("non-finite") == 1 and log.count('expected JSON like {"seed": 3}') == 1
    assert "Traceback" not in log
    assert json.loads(stats.read_text())["rejected"] >= 10  # of 15; a command may be replaced before the driver takes it


def test_hostile_commands_never_move_a_joint_out_of_its_range(domain, bus, tmp_path):
    """Limit-to-limit jumps at 50 Hz, 1e6, inf, NaN and wrong widths from another process over
    DDS: the driver limits targets as a hardware interface does, so no reported position
    leaves its range by more than 0.01 rad (unlimited, 0.16 rad was measured)."""
    env = ArmEnv("reach")
    lower, upper = env.physics.kin.lower, env.physics.kin.upper
    env.close()
    with DriverProcess(domain, "--rate", "50", log_path=tmp_path / "driver.log") as driver:
        states = bus.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        commands = bus.publisher(COMMANDS, msgs.Float64MultiArray, COMMAND)
        assert wait_for(states, lambda m: True, 5.0) is not None
        worst, seen = -np.inf, 0
        high, low = np.append(upper, 0.04), np.append(lower, 0.0)
        hostile = [np.full(7, 1e6), np.full(7, -np.inf), np.full(7, np.nan), np.zeros(3)]
        for k in range(300):
            command = (high if (k // 25) % 2 == 0 else low) if k % 11 else hostile[(k // 11) % len(hostile)]
            commands.publish(command_message(command))
            time.sleep(0.02)
            for msg in states.take():
                position = np.asarray(msg.position)[:len(lower)]
                worst = max(worst, float(np.max(np.maximum(position - upper, lower - position))))
                seen += 1
        assert driver.stop(signal.SIGTERM) == 0
    assert seen > 100
    assert worst <= 0.01, f"a joint went {worst:.4f} rad past its range"
