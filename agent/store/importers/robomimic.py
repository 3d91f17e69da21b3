"""robomimic hdf5: ``data/demo_N/{obs/*, next_obs/*, actions, rewards, dones, states}``,
``data`` attrs ``total`` and ``env_args`` (JSON), ``mask/<filter>`` demo lists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from agent.optional import require
from agent.store.importers.common import (ROLE_OBSERVATION, SKIP_REASONS, ImportedDataset, ImportedEpisode,
                                          check_numeric, key_role)

_DEMO_PARTS = ("obs", "next_obs", "actions", "rewards", "dones", "states")


def read_robomimic(src: Path, obs_keys: list[str] | None = None, **_) -> ImportedDataset:
    h5py = require("h5py", "reading a robomimic file")
    where = f"robomimic file {str(src)!r}"
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise ValueError(f"{where} cannot be opened as hdf5 ({exc}).") from None
    with f:
        if "data" not in f:
            raise ValueError(f"{where} has no 'data' group; a robomimic file holds data/demo_N groups.")
        data = f["data"]
        demos = sorted((k for k in data if re.fullmatch(r"demo_\d+", k)), key=lambda k: int(k.split("_")[1]))
        if not demos:
            raise ValueError(f"{where}: data holds no demo_N groups.")
        try:
            env_args = json.loads(data.attrs.get("env_args", "{}"))
        except ValueError:
            raise ValueError(f"{where}: data.attrs['env_args'] is not JSON.") from None
        split_of = {}
        if "mask" in f:
            for split in ("train", "valid"):
                if split in f["mask"]:
                    for name in f["mask"][split][()]:
                        split_of[name.decode() if isinstance(name, bytes) else str(name)] = split
        first = data[demos[0]]
        if "obs" not in first:
            raise ValueError(f"{where}: {demos[0]} has no obs group.")
        missing = [k for k in obs_keys or [] if k not in first["obs"]]
        if missing:
            raise ValueError(f"{where}: obs key(s) {missing} not in {demos[0]}/obs (has {sorted(first['obs'])}).")
        # low-dimensional keys that name-rules take for observations: (T, d) or (T,) numbers
        keys, skipped = [], {}
        for k, ds in first["obs"].items():
            role = key_role(k)
            if obs_keys:
                why = "" if k in obs_keys else "not in --obs-keys"
            elif role != ROLE_OBSERVATION:
                why = SKIP_REASONS[role]
            elif not (ds.ndim <= 2 and ds.dtype.kind in "fiub"):
                why = f"shape {ds.shape[1:]} per step, dtype {ds.dtype}: camera frames and other arrays are not imported"
            else:
                why = ""
            if why:
                skipped[f"obs/{k}"] = why
            else:
                keys.append(k)
        keys = list(obs_keys) if obs_keys else sorted(keys)
        if not keys:
            raise ValueError(f"{where}: {demos[0]}/obs holds no low-dimensional observation key "
                             f"(has {sorted(first['obs'])}); name them with --obs-keys.")
        for k in first:
            if k not in _DEMO_PARTS:
                skipped[k] = "not a robomimic step array this importer reads"
        env_kwargs = env_args.get("env_kwargs", {}) or {}
        # robosuite's sparse reward is paid exactly on task success; a shaped (dense) reward says nothing
        sparse = env_kwargs.get("reward_shaping") is False
        episodes = []
        for name in demos:
            demo = data[name]
            ctx = f"{where}, {name}"
            for part in ("obs", "next_obs", "actions", "rewards", "dones"):
                if part not in demo:
                    raise ValueError(f"{ctx}: missing {part}.")

            def stack(group):
                cols = []
                for k in keys:
                    if k not in demo[group]:
                        raise ValueError(f"{ctx}: {group}/{k} is missing.")
                    arr = check_numeric(demo[group][k][()], f"{group}/{k}", ctx)
                    cols.append(arr.reshape(arr.shape[0], -1).astype(np.float32))
                return np.concatenate(cols, axis=1)

            obs, next_obs = stack("obs"), stack("next_obs")
            action = check_numeric(demo["actions"][()], "actions", ctx).astype(np.float32)
            reward = check_numeric(demo["rewards"][()], "rewards", ctx).astype(np.float32).reshape(-1)
            dones = check_numeric(demo["dones"][()], "dones", ctx).astype(bool).reshape(-1)
            t = obs.shape[0]
            if not (next_obs.shape[0] == action.shape[0] == reward.shape[0] == dones.shape[0] == t) or t == 0:
                raise ValueError(f"{ctx}: obs, next_obs, actions, rewards and dones differ in length.")
            sim = {}
            if "states" in demo and demo["states"].ndim == 2 and demo["states"].shape[0] == t:
                sim["states"] = check_numeric(demo["states"][()], "states", ctx).astype(np.float64)
            success = bool(reward.max() > 0) if sparse else None
            episodes.append(ImportedEpisode(obs, action.reshape(t, -1), reward, next_obs[-1], bool(dones[-1]),
                                            success=success, sim_state=sim,
                                            attrs={"split": split_of.get(name, "train")}))
    dims = {e.sim_state.get("states", np.zeros((1, 0))).shape[1] for e in episodes}
    if len(dims) > 1:  # sim states of differing size cannot share one array
        for e in episodes:
            e.sim_state.clear()
        skipped["states"] = f"sim states differ in size across demos ({sorted(dims)}), so none were kept"
    env = env_args.get("env_name") or Path(src).stem
    return ImportedDataset(env_id=f"robomimic/{env}", episodes=episodes, obs_names=keys, env_kwargs=env_kwargs,
                           skipped=skipped,
                           success_from="rewards (sparse: env_kwargs.reward_shaping is false)" if sparse else "")
