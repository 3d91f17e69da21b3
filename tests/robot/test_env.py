"""robot/Arm<Task>-v0 against the simulated driver over DDS: the same observations,
rewards and pacing as sims/Arm<Task>-v0, and clear stops when the arm goes away."""
from __future__ import annotations

import json
import random
import signal
import time

import gymnasium
import numpy as np
import pytest

import robot  # noqa: F401  (registers robot/ envs)
import sims
from agent.envs import make_env
from robot import msgs
from robot.driver import DriverProcess
from robot.env import RobotUnavailable
from robot.transport import RELIABLE, make_transport


@pytest.fixture
def domain():
    return random.randint(100, 232)


@pytest.mark.parametrize("task", ["ArmReach", "ArmPush", "ArmPickPlace"])
def test_the_spaces_and_observation_layout_are_those_of_sims(task):
    env, sim = gymnasium.make(f"robot/{task}-v0"), sims.make(f"sims/{task}-v0")
    assert env.observation_space == sim.observation_space and env.action_space == sim.action_space
    assert env.unwrapped.obs_slices == sim.unwrapped.obs_slices
    assert env.unwrapped.time_limit == sim.unwrapped.time_limit
    assert env.unwrapped.single_instance is True


def test_push_through_the_bridge_sees_what_sims_sees(domain, tmp_path):
    with DriverProcess(domain, task="push", log_path=tmp_path / "driver.log"):
        env = gymnasium.make("robot/ArmPush-v0", transport="dds", domain_id=domain, record_dir=str(tmp_path / "run"))
        sim = sims.make("sims/ArmPush-v0")
        try:
            obs, info = env.reset(seed=7)
            sim_obs, _ = sim.reset(seed=7)
            slices = env.unwrapped.obs_slices
            for name in ("goal_pos", "object_pos", "object_rot"):
                np.testing.assert_allclose(obs[slices[name]], sim_obs[slices[name]], atol=2e-3, err_msg=name)
            np.testing.assert_allclose(obs, sim_obs, atol=0.03)  # the arm got to sims' start pose by trajectory
            rng = np.random.default_rng(0)
            returns = [0.0, 0.0]
            for _ in range(30):
                action = rng.uniform(-1, 1, 7)
                obs, reward, terminated, truncated, info = env.step(action)
                sim_obs, sim_reward, *_ = sim.step(action)
                returns[0] += reward
                returns[1] += sim_reward
                assert not terminated and not truncated
            for name in ("joint_pos", "gripper_opening", "grip_pos", "grip_rot", "object_pos", "goal_pos"):
                # contacts with the cube amplify small differences (the reset's residual error), so not exact
                np.testing.assert_allclose(obs[slices[name]], sim_obs[slices[name]], atol=0.05, err_msg=name)
            assert abs(returns[0] - returns[1]) < 0.05 * abs(returns[1]) + 0.05
            timing = env.unwrapped.timing()
            assert 0.045 < timing["period_mean_s"] < 0.056  # paced at 20 Hz
            assert info["safety"]["checked"] == 30 and info["intervened"] is False
        finally:
            env.close()
    # the episode was recorded to an MCAP bag next to the run, readable by rosbags
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from robot.record import recording_path

    store = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(recording_path(tmp_path / "run", 0)) as bag:
        counts = {c.topic: c.msgcount for c in bag.connections}
        commands = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in bag.messages()
                    if c.topic == "/forward_position_controller/commands"]
    assert counts["/forward_position_controller/commands"] == 30 and counts["/joint_states"] >= 30
    assert counts["/object_pose"] >= 1
    assert all(len(m.data) == 7 and np.all(np.isfinite(m.data)) for m in commands)


def test_the_env_keeps_its_rate_when_the_arm_publishes_faster(domain, tmp_path):
    with DriverProcess(domain, "--rate", "100", log_path=tmp_path / "driver.log"):
        env = gymnasium.make("robot/ArmReach-v0", transport="dds", domain_id=domain, rate=20)
        try:
            env.reset(seed=0)
            start = time.monotonic()
            for _ in range(40):
                env.step(np.zeros(7))
            elapsed = time.monotonic() - start
            assert 1.9 < elapsed < 2.3, f"40 steps at 20 Hz took {elapsed:.2f} s"
            assert abs(env.unwrapped.timing()["period_mean_s"] - 0.05) < 0.004
        finally:
            env.close()


def test_an_unreachable_robot_is_one_sentence_naming_topic_and_domain(domain):
    env = gymnasium.make("robot/ArmReach-v0", transport="dds", domain_id=domain, connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(RobotUnavailable) as err:
        env.reset(seed=0)
    assert time.monotonic() - start < 3.0
    message = str(err.value)
    assert f"/joint_states (ROS domain {domain}" in message and "within 1 s" in message and "\n" not in message
    env.close()


def test_killing_the_driver_pauses_the_episode_then_stops_with_one_sentence(domain, tmp_path):
    driver = DriverProcess(domain, log_path=tmp_path / "driver.log").start()
    env = gymnasium.make("robot/ArmReach-v0", transport="dds", domain_id=domain, state_timeout=0.3, pause_timeout=15.0)
    watcher = make_transport("dds", domain, node_name="operator")
    try:
        status = watcher.subscription("/agent/status", msgs.String, RELIABLE)
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.zeros(7))
        driver.stop(signal.SIGKILL)
        replacement = DriverProcess(domain, log_path=tmp_path / "driver2.log")
        paused = {}

        def restart_when_paused() -> None:
            while not paused:
                for msg in status.take():
                    state = json.loads(msg.data)
                    if state["state"] == "paused":
                        paused.update(state)
                status.wait(0.05)
            replacement.start()

        import threading

        thread = threading.Thread(target=restart_when_paused)
        thread.start()
        _, _, _, truncated, info = env.step(np.zeros(7))  # paused until the new driver answers
        thread.join()
        assert truncated and info["paused"] is True
        assert "no joint state on /joint_states (ROS domain" in paused["message"] and "commands stopped" in paused["message"]
        env.reset(seed=1)  # the episode goes on with the new driver
        env.step(np.zeros(7))
        replacement.stop(signal.SIGKILL)
        env.unwrapped.pause_timeout = 1.0
        start = time.monotonic()
        with pytest.raises(RobotUnavailable) as err:
            env.step(np.zeros(7))
        assert time.monotonic() - start < 3.0
        message = str(err.value)
        assert f"/joint_states (ROS domain {domain}, dds transport)" in message and "\n" not in message
        time.sleep(0.2)
        states = [json.loads(m.data)["state"] for m in status.take()]
        assert states[-1] == "unreachable"
    finally:
        watcher.close()
        env.close()
        driver.stop()


def test_ids_and_kwargs_are_checked_in_one_sentence():
    with pytest.raises(ValueError, match="Did you mean robot/ArmPush-v0"):
        make_env("robot/ArmPsh-v0")
    with pytest.raises(ValueError, match="rate must be a positive number for robot/ArmReach-v0, found -5"):
        make_env("robot/ArmReach-v0", rate=-5)
    with pytest.raises(ValueError, match="workspace must be six"):
        make_env("robot/ArmReach-v0", workspace="0.1 0.2")
    env = make_env("robot/ArmReach-v0", workspace="0.2 -0.4 0.0 0.7 0.4 0.5")
    assert env.unwrapped.safety.workspace is not None
    with pytest.raises(ValueError, match="call reset"):
        env.unwrapped.step(np.zeros(7))
