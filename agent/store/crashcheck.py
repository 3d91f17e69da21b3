"""Kill-a-writer trials: the store's crash-safety check, shared by the tests and
``bench/store.py``.

A child process appends deterministic episodes (episode i is a function of i and the
seed alone) to one store until it is SIGKILLed at a random moment; the parent then
opens the store, compares every committed episode bit for bit with its regenerated
original, runs fsck, checks that a second fsck finds nothing, and goes on with the
next trial on the same store. Run the child with
``python -m agent.store.crashcheck STORE SEED``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gymnasium import spaces

from agent.store.fsck import fsck
from agent.store.zarr_store import EpisodeAttrs, Store

OBS_DIM, ACT_DIM = 39, 8


def trial_episode(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(20, 400))
    end = ("terminated", "truncated")[index % 2]
    ep = {
        "obs": rng.normal(size=(length, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, ACT_DIM)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "terminated": np.zeros(length, bool),
        "truncated": np.zeros(length, bool),
        "final_obs": rng.normal(size=OBS_DIM).astype(np.float32),
        "sim_state/qpos": rng.normal(size=(length, 5)),
        "success": bool(index % 3 == 0),
    }
    ep[end][-1] = True
    return ep


def create_trial_store(path: Path) -> None:
    Store.create(path, env_id="crash/none-v0", observation_space=spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
                 action_space=spaces.Box(-1, 1, (ACT_DIM,), np.float32), sim_state_dims={"qpos": 5}).close()


def writer_main(path: str, seed: int) -> None:
    store = Store.open(path, mode="a")
    print("ready", flush=True)
    while True:
        i = store.num_episodes
        store.append_episode(trial_episode(seed, i), EpisodeAttrs(source="online", seed=i))


def run_trials(path: Path, trials: int, seed: int = 0, max_delay_s: float = 1.5) -> list[dict]:
    """``trials`` kill-and-check rounds on the store at ``path`` (created if absent)."""
    if not path.exists():
        create_trial_store(path)
    rng = np.random.default_rng(seed)
    results = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for t in range(trials):
        proc = subprocess.Popen([sys.executable, "-m", "agent.store.crashcheck", str(path), str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        line = proc.stdout.readline() if proc.stdout else b""
        if line.strip() != b"ready":
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"crash-trial writer failed to start: {err[-2000:]}")
        time.sleep(float(rng.uniform(0.0, max_delay_s)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        results.append(check_after_kill(path, seed))
    return results


def check_after_kill(path: Path, seed: int) -> dict:
    """Open, compare committed episodes, fsck, fsck again."""
    out: dict = {"opens": False, "identical": False, "fsck_clean_after": False, "episodes": 0, "torn": False}
    try:
        store = Store.open(path)
    except ValueError as exc:
        out["error"] = str(exc)
        return out
    out["opens"] = True
    out["episodes"] = store.num_episodes
    identical = True
    ends = store.episode_ends()
    arrays = {key: store.read(f"data/{key}") for key in ("obs", "action", "reward", "terminated", "truncated",
                                                          "sim_state/qpos")}
    final = store.read("final_obs/obs")
    start = 0
    for i, end in enumerate(ends):
        want = trial_episode(seed, i)
        got = {key: arr[start:end] for key, arr in arrays.items()} | {"final_obs": final[i]}
        for key, value in got.items():
            if value.dtype != want[key].dtype or not np.array_equal(value, want[key]):
                identical = False
        start = int(end)
    out["identical"] = identical
    first = fsck(path)
    out["torn"] = bool(first["trimmed"] or first["removed_partial_files"])
    out["fsck_problems"] = first["problems"]
    second = fsck(path)
    out["fsck_clean_after"] = bool(second["clean"])
    return out


if __name__ == "__main__":
    writer_main(sys.argv[1], int(sys.argv[2]))
