"""End to end: ``agent robot sim-driver`` and ``agent finetune`` in two processes,
talking DDS on loopback, with an operator taking over for a moment."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from agent.finetune.report import read_metrics
from agent.store import Store
from robot import msgs
from robot.driver import DriverProcess
from robot.transport import RELIABLE, make_transport

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def domain():
    return random.randint(100, 232)


def finetune_cmd(domain: int, out, *extra: str, rate: int = 50) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "finetune", "--env", "robot/ArmReach-v0", "--algo", "sac",
            "--steps", "300", "--warmup-steps", "100", "--batch-size", "64", "--sac.hidden-dims", "64,64",
            "--eval-every", "300", "--eval-episodes", "1", "--checkpoint-every", "1000", "--log-every", "100",
            "--out", str(out), "--json",
            "--env-kwargs", f"transport=dds,domain_id={domain},rate={rate},time_limit=50{extra[0] if extra else ''}"]


def wait_for_step(status, episode: int, step: int, timeout_s: float) -> dict:
    """Wait until the env reports ``step`` of its episode ``episode`` (counted from its first reset)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msg in status.take():
            state = json.loads(msg.data)
            if state["state"] == "running" and state["episode"] >= episode and state["step"] >= step:
                return state
        status.wait(0.05)
    raise AssertionError(f"the env never reached step {step} within {timeout_s} s")


def test_finetune_through_the_bridge_stores_executed_actions_and_interventions(domain, tmp_path):
    driver = subprocess.Popen([sys.executable, "-m", "agent.cli", "robot", "sim-driver", "--task", "reach", "--rate", "50",
                               "--domain-id", str(domain), "--transport", "dds", "--stale-timeout", "0.5",
                               "--stats-out", str(tmp_path / "driver.json")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    operator = make_transport("dds", domain, node_name="operator")
    takeover = np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    try:
        status = operator.subscription("/agent/status", msgs.String, RELIABLE)
        teleop = operator.publisher("/agent/intervention", msgs.Float64MultiArray, RELIABLE)
        run = subprocess.Popen(finetune_cmd(domain, tmp_path / "run"), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # episodes: 0 the store's first reset, 1 the step-0 evaluation, 2.. training
        wait_for_step(status, 3, 10, 40.0)
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            teleop.publish(msgs.Float64MultiArray(data=takeover))
            time.sleep(0.01)
        episodes: list[int] = []
        while run.poll() is None:  # every status until the run ends: which env instance said what
            episodes += [json.loads(m.data)["episode"] for m in status.take()]
            status.wait(0.05)
        stdout, stderr = run.communicate(timeout=90)
        assert run.returncode == 0, stderr[-2000:]
        summary = json.loads(stdout[stdout.index("{"):])
        assert summary["env_steps"] == 300 and summary["online_episodes"] == 6 and summary["updates"] == 200
        # one env instance served training and both evaluations: its episode count never restarts
        assert episodes == sorted(episodes) and episodes[-1] >= 8
    finally:
        operator.close()
        driver.send_signal(signal.SIGINT)
        driver_log, _ = driver.communicate(timeout=20)
    assert driver.returncode == 0 and "Traceback" not in driver_log
    store = Store.open(tmp_path / "run" / "online.zarr")
    assert store.env_id == "robot/ArmReach-v0" and store.num_episodes == 6 and store.num_steps == 300
    episodes = list(store.episodes())
    action = np.concatenate([ep["action"] for ep in episodes])
    intervened = np.concatenate([ep["sim_state/intervened"] for ep in episodes])[:, 0]
    assert 3 <= intervened.sum() <= 40, "the operator's 0.3 s takeover is recorded on the steps it covered"
    np.testing.assert_allclose(action[intervened == 1], np.broadcast_to(takeover, (int(intervened.sum()), 7)), atol=1e-5)
    assert np.all(np.abs(action) <= 1.0)
    evals = [r["step"] for r in read_metrics(tmp_path / "run") if "eval/return_mean" in r]
    assert evals == [0, 300]
    stats = json.loads((tmp_path / "driver.json").read_text())
    assert stats["commands"] >= 300 and stats["resets"] >= 8


def test_killing_the_driver_stops_finetune_with_one_sentence(domain, tmp_path):
    driver = DriverProcess(domain, "--rate", "50", log_path=tmp_path / "driver.log").start()
    watcher = make_transport("dds", domain, node_name="operator")
    try:
        status = watcher.subscription("/agent/status", msgs.String, RELIABLE)
        run = subprocess.Popen(finetune_cmd(domain, tmp_path / "run", ",pause_timeout=1.0,state_timeout=0.3"), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_step(status, 2, 10, 40.0)
        driver.stop(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = run.communicate(timeout=30)
        assert time.monotonic() - killed < 10.0
    finally:
        watcher.close()
        driver.stop()
    assert run.returncode == 2
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("agent finetune: error: no joint states arrived on /joint_states "
                           f"(ROS domain {domain}, dds transport) for 1.3 s")


def test_actor_learner_split_over_the_bridge(domain, tmp_path):
    """The actor process drives the arm over DDS at the env's own rate while the learner
    process trains; weights reach the actor and the transitions land in the store."""
    driver = DriverProcess(domain, "--rate", "50", log_path=tmp_path / "driver.log").start()
    try:
        run = subprocess.run(finetune_cmd(domain, tmp_path / "run") + ["--actor-learner", "--control-rate", "0"],
                             env=ENV, capture_output=True, text=True, timeout=150)
    finally:
        driver.stop(signal.SIGINT)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["env_steps"] == 300 and summary["weight_version_pushed"] >= 1
    store = Store.open(tmp_path / "run" / "online.zarr")
    assert store.env_id == "robot/ArmReach-v0" and store.num_steps == 300
    assert "Traceback" not in (tmp_path / "driver.log").read_text()
