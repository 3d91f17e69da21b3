"""D4RL hdf5: flat ``observations``, ``actions``, ``rewards``, ``terminals``,
``timeouts`` (optional ``next_observations``, ``infos/qpos``, ``infos/qvel``)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from agent.store.importers.common import ImportedDataset, check_numeric, episodes_from_flags
from agent.store.zarr_store import Store


def read_d4rl(src: Path, **_) -> ImportedDataset:
    where = f"D4RL file {str(src)!r}"
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise ValueError(f"{where} cannot be opened as hdf5 ({exc}).") from None
    with f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}; a D4RL file has observations, actions, "
                             f"rewards, terminals and timeouts.")
        obs = check_numeric(f["observations"][()], "observations", where).astype(np.float32)
        n = obs.shape[0]
        if obs.ndim != 2:
            raise ValueError(f"{where}: observations must be (N, obs_dim), got {obs.shape}.")

        def column(key, ndim):
            arr = check_numeric(f[key][()], key, where)
            if arr.shape[0] != n or arr.ndim != ndim:
                raise ValueError(f"{where}: {key} has shape {arr.shape}, expected {n} rows and {ndim} dims.")
            return arr

        action = column("actions", 2).astype(np.float32)
        reward = column("rewards", 1).astype(np.float32)
        terminal = column("terminals", 1).astype(bool)
        timeout = column("timeouts", 1).astype(bool) if "timeouts" in f else np.zeros(n, bool)
        next_obs = column("next_observations", 2).astype(np.float32) if "next_observations" in f else None
        sim = {}
        if "infos" in f:
            for name, ds in f["infos"].items():
                if isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.shape[0] == n and ds.dtype.kind == "f":
                    sim[name] = ds[()].astype(np.float64)
        meta = json.loads(f.attrs["agent_store"]) if "agent_store" in f.attrs else {}
        episodes_meta = {k: f[f"agent/episodes/{k}"][()] for k in ("quality", "split", "seed", "success")
                         if f"agent/episodes/{k}" in f}
    episodes, notes = episodes_from_flags(obs, action, reward, terminal, timeout, next_obs, sim)
    if episodes_meta and len(episodes) == len(next(iter(episodes_meta.values()))):
        for i, ep in enumerate(episodes):
            for k, v in episodes_meta.items():
                value = v[i].decode() if isinstance(v[i], bytes) else v[i].item()
                if k == "success":
                    ep.success = bool(value)
                else:
                    ep.attrs[k] = value
    low = np.asarray([-np.inf if v is None else v for v in meta["action_space"]["low"]]) if meta else None
    high = np.asarray([np.inf if v is None else v for v in meta["action_space"]["high"]]) if meta else None
    return ImportedDataset(env_id=meta.get("env_id", f"d4rl/{Path(src).stem}"), episodes=episodes,
                           action_low=low, action_high=high, notes=notes, env_kwargs=meta.get("env_kwargs", {}))


def write_d4rl(store: Store, out: Path) -> dict:
    """Write the committed episodes as a D4RL hdf5 file, with ``next_observations``
    (exact at every boundary) and, as extras D4RL readers ignore, the store's spaces in
    the root attribute ``agent_store`` and episode attributes under ``agent/episodes``."""
    if store.num_episodes == 0:
        raise ValueError(f"store {store.path!r} holds no committed episodes to export.")
    steps = store.num_steps
    obs = store.read("data/obs")
    final = store.read("final_obs/obs")
    ends = store.episode_ends()
    next_index = np.arange(1, steps + 1)
    next_index[ends - 1] = steps + np.arange(ends.size)
    table = np.concatenate([obs, final])
    terminated = store.read("data/terminated")
    truncated = store.read("data/truncated")
    timeouts = truncated.copy()
    timeouts[ends - 1] |= ~terminated[ends - 1]  # an episode that ends neither way is cut by a timeout
    attrs = store.episode_attrs()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("observations", data=obs, compression="gzip", compression_opts=1)
        f.create_dataset("next_observations", data=table[next_index], compression="gzip", compression_opts=1)
        f.create_dataset("actions", data=store.read("data/action"))
        f.create_dataset("rewards", data=store.read("data/reward"))
        f.create_dataset("terminals", data=terminated)
        f.create_dataset("timeouts", data=timeouts)
        for name in store.sim_state_keys():
            f.create_dataset(f"infos/{name}", data=store.read(f"data/sim_state/{name}"))
        for k in ("quality", "split"):
            f.create_dataset(f"agent/episodes/{k}", data=np.asarray([str(v) for v in attrs[k]], dtype=h5py.string_dtype()))
        f.create_dataset("agent/episodes/seed", data=attrs["seed"])
        f.create_dataset("agent/episodes/success", data=attrs["success"])
        f.attrs["agent_store"] = json.dumps({"env_id": store.env_id, "env_kwargs": store.attrs.get("env_kwargs", {}),
                                             "observation_space": store.attrs["observation_space"],
                                             "action_space": store.attrs["action_space"]})
    tmp.replace(out)
    return {"out": str(out), "format": "d4rl", "episodes": store.num_episodes, "steps": steps}
