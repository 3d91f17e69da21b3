"""D4RL hdf5: flat ``observations``, ``actions``, ``rewards``, ``terminals``,
``timeouts`` (optional ``next_observations``, ``infos/qpos``, ``infos/qvel``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from agent.optional import require
from agent.store.importers.common import ImportedDataset, check_numeric, episodes_from_flags
from agent.store.zarr_store import Store


_USED = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def read_d4rl(src: Path, **_) -> ImportedDataset:
    h5py = require("h5py", "reading a D4RL file")
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
        has_timeouts = "timeouts" in f
        timeout = column("timeouts", 1).astype(bool) if has_timeouts else np.zeros(n, bool)
        next_obs = column("next_observations", 2).astype(np.float32) if "next_observations" in f else None
        sim, skipped = {}, {}
        if "infos" in f:
            for name, ds in f["infos"].items():
                if isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.shape[0] == n and ds.dtype.kind == "f":
                    sim[name] = ds[()].astype(np.float64)
        meta = json.loads(f.attrs["agent_store"]) if "agent_store" in f.attrs else {}
        episodes_meta = {k: f[f"agent/episodes/{k}"][()] for k in ("quality", "split", "seed", "success")
                         if f"agent/episodes/{k}" in f}

        def note_skipped(name, obj):
            if not isinstance(obj, h5py.Dataset) or name in _USED or name.startswith("agent/episodes/"):
                return
            if name.startswith("infos/") and name.removeprefix("infos/") in sim:
                return
            if name.startswith("metadata/"):  # the generating policy's parameters and run settings
                skipped["metadata/*"] = "dataset metadata, not step data"
            elif name.startswith("infos/"):
                skipped[name] = f"shape {obj.shape}, dtype {obj.dtype}: only (N, dim) float infos are kept, as sim state"
            else:
                skipped[name] = "not a D4RL step array this importer reads"

        f.visititems(note_skipped)
    episodes, notes = episodes_from_flags(obs, action, reward, terminal, timeout, next_obs, sim)
    warnings = []
    if not has_timeouts and next_obs is not None:
        warnings.append(f"{where} has no timeouts: episodes cut by a time limit were found only where "
                        f"next_observations do not lead to the following observation "
                        f"({notes['split_at_discontinuity']} found).")
    elif not has_timeouts:
        merged = len(episodes)
        warnings.append(f"{where} has neither timeouts nor next_observations: an episode cut by a time limit "
                        f"cannot be told apart from the one after it, so the {merged} episode(s) read end only at "
                        f"terminals and at the end of the file and may each hold several real episodes.")
    success_from = ""
    if episodes_meta and len(episodes) == len(next(iter(episodes_meta.values()))):
        success_from = "agent/episodes/success" if "success" in episodes_meta else ""
        for i, ep in enumerate(episodes):
            for k, v in episodes_meta.items():
                value = v[i].decode() if isinstance(v[i], bytes) else v[i].item()
                if k == "success":
                    ep.success = bool(value)
                else:
                    ep.attrs[k] = value
    elif episodes_meta:
        warnings.append(f"{where}: agent/episodes holds {len(next(iter(episodes_meta.values())))} rows but "
                        f"{len(episodes)} episodes were read, so its quality, split, seed and success were not applied.")
    low = np.asarray([-np.inf if v is None else v for v in meta["action_space"]["low"]]) if meta else None
    high = np.asarray([np.inf if v is None else v for v in meta["action_space"]["high"]]) if meta else None
    return ImportedDataset(env_id=meta.get("env_id", f"d4rl/{Path(src).stem}"), episodes=episodes,
                           action_low=low, action_high=high, notes=notes, env_kwargs=meta.get("env_kwargs", {}),
                           skipped=skipped, warnings=warnings, success_from=success_from)


def write_d4rl(store: Store, out: Path) -> dict:
    """Write the committed episodes as a D4RL hdf5 file, with ``next_observations``
    (exact at every boundary) and, as extras D4RL readers ignore, the store's spaces in
    the root attribute ``agent_store`` and episode attributes under ``agent/episodes``."""
    if store.num_episodes == 0:
        raise ValueError(f"store {store.path!r} holds no committed episodes to export.")
    h5py = require("h5py", "writing a D4RL file")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"cannot export to {str(out)!r}: it is a directory, which an export never replaces; "
                         f"pass the path of a file to write.")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        _write_d4rl_file(h5py, tmp, store, obs, table[next_index], terminated, timeouts, attrs)
        if out.is_dir():  # appeared while writing
            raise ValueError(f"cannot export to {str(out)!r}: it is a directory, which an export never replaces.")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {str(out)!r} ({exc.strerror or exc}).") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"out": str(out), "format": "d4rl", "episodes": store.num_episodes, "steps": steps}


def _write_d4rl_file(h5py, tmp: Path, store: Store, obs, next_obs, terminated, timeouts, attrs) -> None:
    with h5py.File(tmp, "w") as f:
        f.create_dataset("observations", data=obs, compression="gzip", compression_opts=1)
        f.create_dataset("next_observations", data=next_obs, compression="gzip", compression_opts=1)
        f.create_dataset("actions", data=store.read("data/action"))
        f.create_dataset("rewards", data=store.read("data/reward"))
        f.create_dataset("terminals", data=terminated)
        f.create_dataset("timeouts", data=timeouts)
        for name in store.sim_state_keys():
            f.create_dataset(f"infos/{name}", data=store.read(f"data/sim_state/{name}"))
        for k in ("quality", "split"):
            f.create_dataset(f"agent/episodes/{k}", data=np.asarray([str(v) for v in attrs[k]], dtype=h5py.string_dtype()))
        f.create_dataset("agent/episodes/seed", data=attrs["seed"])
        if store.success_recorded:  # unknown stays unknown
            f.create_dataset("agent/episodes/success", data=attrs["success"])
        f.attrs["agent_store"] = json.dumps({"env_id": store.env_id, "env_kwargs": store.attrs.get("env_kwargs", {}),
                                             "observation_space": store.attrs["observation_space"],
                                             "action_space": store.attrs["action_space"]})
