"""The safety layer: limits, per-tick change, non-finite input, workspace, e-stop,
watchdog and intervention, on their own and in the robot env over DDS."""
from __future__ import annotations

import random
import threading
import time

import gymnasium
import numpy as np
import pytest

import robot  # noqa: F401  (registers robot/ envs)
from robot import msgs
from robot.driver import DriverProcess
from robot.env import RobotUnavailable
from robot.safety import COMMAND_JOINTS, SafetyLayer, Watchdog
from robot.transport import COMMAND, LATCHED, RELIABLE, make_transport
from sims.arm import kinematics

DT = 0.05


def fed_layer(**kwargs) -> SafetyLayer:
    layer = SafetyLayer.for_arm(DT, **kwargs)
    layer.watchdog.feed(time.monotonic() + 3600)  # fresh for the whole test
    return layer


def random_inside(layer: SafetyLayer, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(layer.lower, layer.upper)


def test_random_huge_and_nan_targets_never_leave_the_limits():
    layer = fed_layer()
    rng = np.random.default_rng(0)
    n, non_finite = 5000, 0
    for i in range(n):
        current = random_inside(layer, rng)
        kind = i % 4
        if kind == 0:
            target = current + rng.normal(0, 0.2, 7)
        elif kind == 1:
            target = rng.normal(0, 1e6, 7)
        elif kind == 2:
            target = current.copy()
            target[rng.integers(7)] = rng.choice([np.nan, np.inf, -np.inf])
            non_finite += 1
        else:
            target = rng.uniform(-50, 50, 7)
        command, info = layer.filter(target, current)
        assert command is not None and np.all(np.isfinite(command))
        assert np.all(command >= layer.lower) and np.all(command <= layer.upper)
        assert np.all(np.abs(command - current) <= layer.max_step + 1e-12)
        if kind == 2:
            np.testing.assert_array_equal(command, current)  # held, not moved
            assert "non_finite" in info["clipped"]
    assert layer.counts["checked"] == n and layer.counts["sent"] == n
    assert layer.counts["non_finite"] == non_finite
    assert layer.counts["clipped_limits"] > 0 and layer.counts["clipped_step"] > 0
    assert layer.counts["clipped"] <= n


def test_a_target_inside_every_limit_is_sent_unchanged():
    layer = fed_layer()
    current = np.append(kinematics.HOME, 0.02)
    target = current + layer.max_step * 0.5
    command, info = layer.filter(target, current)
    np.testing.assert_allclose(command, target)
    assert info["clipped"] == [] and layer.counts["clipped"] == 0


def test_the_workspace_box_keeps_the_grip_inside():
    low, high = np.array([0.3, -0.2, 0.1]), np.array([0.55, 0.2, 0.35])
    layer = fed_layer(workspace=(low, high))
    kin = kinematics.ArmKinematics()
    rng = np.random.default_rng(1)
    current = np.append(kinematics.HOME, 0.02)  # grip at (0.4, 0, 0.2): inside
    clipped = 0
    for _ in range(300):
        command, info = layer.filter(current + rng.normal(0, 0.3, 7), current)
        pos = kin.forward(command[:6])[0]
        assert np.all(pos >= low - 1e-9) and np.all(pos <= high + 1e-9)
        clipped += "workspace" in info["clipped"]
        current = command
    assert clipped > 0 and layer.counts["clipped_workspace"] == clipped


def test_estop_blocks_every_command_and_the_operator():
    layer = fed_layer()
    current = np.append(kinematics.HOME, 0.02)
    layer.set_estop(True)
    assert layer.filter(current, current) == (None, {"blocked": "estop", "clipped": []})
    action, intervened = layer.select(np.zeros(7), np.ones(7))
    assert not intervened and np.all(action == 0)
    assert layer.counts["blocked_estop"] == 1 and layer.counts["operator_ignored_estop"] == 1
    layer.set_estop(False)
    command, _ = layer.filter(current, current)
    assert command is not None
    action, intervened = layer.select(np.zeros(7), np.ones(7))
    assert intervened and np.all(action == 1) and layer.counts["interventions"] == 1


def test_the_watchdog_blocks_commands_without_a_fresh_state():
    layer = SafetyLayer.for_arm(DT, state_timeout=0.2)
    current = np.append(kinematics.HOME, 0.02)
    assert layer.filter(current, current, now=0.0)[0] is None  # never fed
    layer.watchdog.feed(10.0)
    assert layer.filter(current, current, now=10.1)[0] is not None
    assert layer.filter(current, current, now=10.3)[1]["blocked"] == "watchdog"
    assert layer.watchdog.trips == 1 and layer.counts["blocked_watchdog"] == 2


def test_bad_limits_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="one entry per command joint"):
        SafetyLayer(np.zeros(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="positive number of seconds"):
        Watchdog(0)
    with pytest.raises(ValueError, match="low < high"):
        SafetyLayer.for_arm(DT, workspace=([0.5, 0, 0], [0.4, 1, 1]))


# -- in the env, over DDS ------------------------------------------------------------


@pytest.fixture
def domain():
    return random.randint(100, 232)


def make_env(domain: int, **kwargs):
    return gymnasium.make("robot/ArmReach-v0", transport="dds", domain_id=domain, **kwargs)


def test_estop_stops_commands_within_one_control_tick(domain, tmp_path):
    with DriverProcess(domain, log_path=tmp_path / "driver.log"):
        env = make_env(domain, pause_timeout=0.6)
        operator = make_transport("dds", domain, node_name="operator")
        try:
            spy = operator.subscription("/forward_position_controller/commands", msgs.Float64MultiArray, COMMAND)
            trajectory_spy = operator.subscription("/joint_trajectory_controller/joint_trajectory", msgs.JointTrajectory,
                                                   RELIABLE)
            estop = operator.publisher("/agent/estop", msgs.Bool, LATCHED)
            intervention = operator.publisher("/agent/intervention", msgs.Float64MultiArray, RELIABLE)
            env.reset(seed=0)
            pressed: list[int] = []

            def press_after(delay_s: float) -> None:
                time.sleep(delay_s)
                pressed.append(time.monotonic_ns())
                estop.publish(msgs.Bool(data=True))

            presser = threading.Thread(target=press_after, args=(0.4 + random.random() * 0.3,))
            presser.start()
            info: dict = {}
            for _ in range(40):
                _, _, _, truncated, info = env.step(np.zeros(7))
                if truncated:
                    break
            presser.join()
            time.sleep(0.3)
            latest = spy.latest()
            last_command = latest[1] if latest else 0
            assert info.get("estop") is True and truncated
            assert last_command - pressed[0] < DT * 1e9, "a command went out more than one tick after the e-stop"
            trajectories = trajectory_spy.received
            counts_before = dict(env.unwrapped.safety.counts)
            intervention.publish(msgs.Float64MultiArray(data=np.ones(7)))  # ignored while latched
            with pytest.raises(RobotUnavailable, match="e-stop on /agent/estop .* stayed latched"):
                env.reset(seed=1)
            assert env.unwrapped.safety.counts["operator_ignored_estop"] > counts_before.get("operator_ignored_estop", 0)
            assert spy.latest()[1] == last_command  # nothing sent while latched, no reset trajectory either
            assert trajectory_spy.received == trajectories
            estop.publish(msgs.Bool(data=False))
            env.reset(seed=1)
            _, _, _, _, info = env.step(np.zeros(7))
            assert "estop" not in info and spy.latest()[1] > last_command
        finally:
            operator.close()
            env.close()


def test_an_operator_action_replaces_the_policy_and_is_recorded(domain, tmp_path):
    with DriverProcess(domain, log_path=tmp_path / "driver.log"):
        env = make_env(domain)
        operator = make_transport("dds", domain, node_name="operator")
        stop = threading.Event()
        takeover = np.array([0.6, 0, 0, 0, 0, 0, -1.0])

        def teleop() -> None:
            pub = operator.publisher("/agent/intervention", msgs.Float64MultiArray, RELIABLE)
            while not stop.is_set():
                pub.publish(msgs.Float64MultiArray(data=takeover))
                time.sleep(0.02)

        try:
            obs, _ = env.reset(seed=2)
            pan = env.unwrapped.obs_slices["joint_pos"].start
            _, _, _, _, info = env.step(np.zeros(7))
            assert info["intervened"] is False
            thread = threading.Thread(target=teleop)
            thread.start()
            time.sleep(0.2)
            start_pan = float(env.unwrapped.physics.joint_angles()[0])
            records = []
            for _ in range(8):
                obs, _, _, _, info = env.step(np.array([-1.0, 0, 0, 0, 0, 0, 1.0]))  # the policy wants the opposite
                records.append(info)
            stop.set()
            thread.join()
            assert all(r["intervened"] for r in records)
            assert all(r["step_record"]["intervened"][0] == 1.0 for r in records)
            for r in records:
                np.testing.assert_allclose(r["executed_action"], takeover, atol=1e-5)
            assert obs[pan] > start_pan + 0.2  # the arm went where the operator sent it
            assert env.unwrapped.safety.counts["interventions"] >= 8
            time.sleep(0.4)  # the operator's last action goes stale
            _, _, _, _, info = env.step(np.zeros(7))
            assert info["intervened"] is False
            # an action that arrived while no step was taking messages is as old as its arrival:
            # taken 0.4 s later it is stale, not fresh
            received = env.unwrapped._operator_sub.received
            operator.publisher("/agent/intervention", msgs.Float64MultiArray, RELIABLE).publish(
                msgs.Float64MultiArray(data=takeover))
            time.sleep(0.4)
            assert env.unwrapped._operator_sub.received == received + 1  # it did arrive
            _, _, _, _, info = env.step(np.zeros(7))
            assert info["intervened"] is False
        finally:
            stop.set()
            operator.close()
            env.close()


def test_non_finite_policy_actions_hold_the_arm(domain, tmp_path):
    with DriverProcess(domain, log_path=tmp_path / "driver.log"):
        env = make_env(domain)
        try:
            env.reset(seed=3)
            joints = env.unwrapped.physics.joint_angles().copy()
            for _ in range(5):
                _, _, _, _, info = env.step(np.full(7, np.nan))
                assert np.all(np.isfinite(info["executed_action"]))
                np.testing.assert_allclose(info["executed_action"][:6], 0.0, atol=0.05)
            assert env.unwrapped.safety.counts["non_finite"] == 5
            np.testing.assert_allclose(env.unwrapped.physics.joint_angles(), joints, atol=0.02)
            assert len(COMMAND_JOINTS) == env.action_space.shape[0]
        finally:
            env.close()
