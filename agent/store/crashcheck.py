"""Kill-a-writer trials: the store's crash-safety check, shared by the tests and
``bench/store.py``.

A child process appends deterministic episodes (episode i is a function of i and the
seed alone) to one store until it is SIGKILLed at a random moment; the parent then
opens the store, compares every committed episode bit for bit with its regenerated
original, runs fsck, checks that a second fsck finds nothing, and goes on with the
next trial on the same store. The store is a synthetic one, or one laid out like
``agent collect`` lays out a registered env's store (its spaces and ``sim_state``
sizes, zero-width ones included); episodes take their shapes from the store. Run the
child with ``python -m agent.store.crashcheck STORE SEED``.
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


def store_layout(store: Store) -> dict:
    """The shapes a trial episode needs: obs and action sizes and each sim_state row."""
    return {"obs": store.obs_dim, "action": store.action_dim,
            "sim_state": {k: tuple(store.array_specs[f"data/sim_state/{k}"]["row"]) for k in store.sim_state_keys()}}


_SYNTHETIC = {"obs": OBS_DIM, "action": ACT_DIM, "sim_state": {"qpos": (5,)}}


def trial_episode(seed: int, index: int, layout: dict | None = None) -> dict:
    layout = layout or _SYNTHETIC
    obs_dim, act_dim = layout["obs"], layout["action"]
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(20, 400))
    end = ("terminated", "truncated")[index % 2]
    ep = {
        "obs": rng.normal(size=(length, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "terminated": np.zeros(length, bool),
        "truncated": np.zeros(length, bool),
        "final_obs": rng.normal(size=obs_dim).astype(np.float32),
        **{f"sim_state/{k}": rng.normal(size=(length, *row)) for k, row in sorted(layout["sim_state"].items())},
        "success": bool(index % 3 == 0),
    }
    ep[end][-1] = True
    return ep


def create_trial_store(path: Path, env_id: str | None = None) -> None:
    """A synthetic store, or with ``env_id`` an empty store laid out as collect lays out that env's."""
    if env_id is None:
        Store.create(path, env_id="crash/none-v0", observation_space=spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
                     action_space=spaces.Box(-1, 1, (ACT_DIM,), np.float32), sim_state_dims={"qpos": 5}).close()
        return
    from agent.envs import make_env

    env = make_env(env_id)
    try:
        _, info = env.reset(seed=0)
        dims = {k: int(np.asarray(v).size) for k, v in info.get("sim_state", {}).items()}
        Store.create(path, env_id=env_id, observation_space=env.observation_space, action_space=env.action_space,
                     control_rate=getattr(env.unwrapped, "control_rate", None), sim_state_dims=dims or None).close()
    finally:
        env.close()


def writer_main(path: str, seed: int) -> None:
    store = Store.open(path, mode="a")
    layout = store_layout(store)
    print("ready", flush=True)
    while True:
        i = store.num_episodes
        store.append_episode(trial_episode(seed, i, layout), EpisodeAttrs(source="online", seed=i))


def run_trials(path: Path, trials: int, seed: int = 0, max_delay_s: float = 1.5, env_id: str | None = None) -> list[dict]:
    """``trials`` kill-and-check rounds on the store at ``path`` (created if absent,
    laid out for ``env_id`` when given)."""
    if not path.exists():
        create_trial_store(path, env_id)
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
    layout = store_layout(store)
    keys = ["obs", "action", "reward", "terminated", "truncated", *(f"sim_state/{k}" for k in store.sim_state_keys())]
    arrays = {key: store.read(f"data/{key}") for key in keys}
    final = store.read("final_obs/obs")
    start = 0
    for i, end in enumerate(ends):
        want = trial_episode(seed, i, layout)
        got = {key: arr[start:end] for key, arr in arrays.items()} | {"final_obs": final[i]}
        for key, value in got.items():
            if value.dtype != want[key].dtype or value.shape != want[key].shape or not np.array_equal(value, want[key]):
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
