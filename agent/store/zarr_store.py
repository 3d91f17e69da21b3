"""The demonstration store: one zarr v3 group per dataset (layout in shared DATA.md).

::

    STORE/zarr.json            attrs: format, version, env id and kwargs, spaces, control
                               rate, software versions, reference returns
    STORE/data/<key>           all episodes concatenated along time: obs, action, reward,
                               terminated, truncated, sim_state/<name> (optional)
    STORE/final_obs/obs        the observation after each episode's last step
    STORE/meta/episode_ends    cumulative step counts of the episodes
    STORE/meta/episodes/<attr> one entry per episode (source, parents, return, ...)
    STORE/meta/zarr.json       attrs["commit"]: the commit record

An append writes everything past the committed length first and publishes the episode
last, by replacing the commit record (zarr writes each key to a temporary file and
renames it; the record is then fsynced). Readers slice every array to the lengths in
the commit record, so a torn append is invisible to them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import zarr

FORMAT = "agent-store"
VERSION = 1
CHUNK_ROWS = 1024
STEP_KEYS = ("obs", "action", "reward", "terminated", "truncated")
SOURCES = ("teleop", "scripted", "policy", "online", "augmented", "imported", "random")


@dataclass
class EpisodeAttrs:
    """Per-episode attributes and lineage, stored under ``meta/episodes``."""

    source: str = "scripted"
    parents: list[int] = field(default_factory=list)
    generator_hash: str = ""
    checkpoint: str = ""
    quality: str = ""
    split: str = "train"
    seed: int = -1


# dtype and fill of each per-episode attribute column
_EPISODE_COLUMNS = {
    "source": str, "parents": str, "generator_hash": str, "checkpoint": str,
    "quality": str, "split": str, "seed": np.int64, "return": np.float64,
    "success": np.bool_, "length": np.int64,
}


def _space_to_json(space) -> dict:
    def bound(x):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64).ravel()]

    return {"shape": list(space.shape), "dtype": str(space.dtype), "low": bound(space.low), "high": bound(space.high)}


def software_versions() -> dict[str, str]:
    out = {}
    for pkg in ("agent", "numpy", "zarr", "mujoco", "dm-control", "gymnasium", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class Store:
    """A handle on one store directory. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, group: zarr.Group, writable: bool):
        self.path = path
        self.group = group
        self.writable = writable
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._commit = dict(group["meta"].attrs.get("commit", {}))

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, env_id: str, observation_space, action_space,
               control_rate: float | None = None, env_kwargs: dict | None = None,
               reference_returns: tuple[float, float] | None = None,
               sim_state_dims: dict[str, int] | None = None) -> "Store":
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"cannot create a store at {str(path)!r}: the directory exists and is not empty.")
        obs_dim = int(np.prod(observation_space.shape))
        act_dim = int(np.prod(action_space.shape))
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        root.attrs.update({
            "format": FORMAT,
            "version": VERSION,
            "env_id": env_id,
            "env_kwargs": env_kwargs or {},
            "observation_space": _space_to_json(observation_space),
            "action_space": _space_to_json(action_space),
            "control_rate": control_rate,
            "software": software_versions(),
            "reference_returns": list(reference_returns) if reference_returns else None,
        })
        data = root.create_group("data")
        data.create_array("obs", shape=(0, obs_dim), chunks=(CHUNK_ROWS, obs_dim), dtype="float32")
        data.create_array("action", shape=(0, act_dim), chunks=(CHUNK_ROWS, act_dim), dtype="float32")
        data.create_array("reward", shape=(0,), chunks=(CHUNK_ROWS,), dtype="float32")
        data.create_array("terminated", shape=(0,), chunks=(CHUNK_ROWS,), dtype="bool")
        data.create_array("truncated", shape=(0,), chunks=(CHUNK_ROWS,), dtype="bool")
        if sim_state_dims:
            sim = data.create_group("sim_state")
            for name, dim in sim_state_dims.items():
                sim.create_array(name, shape=(0, dim), chunks=(CHUNK_ROWS, max(dim, 1)), dtype="float64")
        root.create_group("final_obs").create_array("obs", shape=(0, obs_dim), chunks=(CHUNK_ROWS, obs_dim), dtype="float32")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(CHUNK_ROWS,), dtype="int64")
        episodes = meta.create_group("episodes")
        for name, dtype in _EPISODE_COLUMNS.items():
            episodes.create_array(name, shape=(0,), chunks=(CHUNK_ROWS,), dtype=dtype)
        store = cls(path, root, writable=True)
        store._write_commit({"episodes": 0, "steps": 0, "stats": _empty_stats(obs_dim, act_dim)})
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Store":
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no store at {str(path)!r}: the path does not exist.")
        if not (path / "zarr.json").is_file():
            raise ValueError(
                f"{str(path)!r} is not an agent store: expected a zarr v3 group (a zarr.json file) "
                f"written by `agent collect` or `agent import`, found none."
            )
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{str(path)!r} is not a readable store: its zarr.json cannot be parsed ({exc}).") from None
        fmt = meta.get("attributes", {}).get("format") if isinstance(meta, dict) else None
        if fmt != FORMAT:
            raise ValueError(
                f"{str(path)!r} is not an agent store: its zarr.json has format {fmt!r}, expected {FORMAT!r}."
            )
        version = meta["attributes"].get("version")
        if version != VERSION:
            raise ValueError(f"store {str(path)!r} has schema version {version!r}; this agent reads version {VERSION}.")
        try:
            group = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
            store = cls(path, group, writable=(mode == "a"))
            store._check_layout()
        except ValueError:
            raise
        except Exception as exc:  # zarr raises many types for damaged metadata
            raise ValueError(f"store {str(path)!r} is damaged: {type(exc).__name__}: {exc}") from None
        return store

    def _check_layout(self) -> None:
        for key in (*[f"data/{k}" for k in STEP_KEYS], "final_obs/obs", "meta/episode_ends"):
            if key not in self.group:
                raise ValueError(f"store {str(self.path)!r} is damaged: the array {key!r} is missing.")
        if not {"episodes", "steps"} <= set(self._commit):
            raise ValueError(f"store {str(self.path)!r} is damaged: meta/zarr.json has no commit record.")
        for key in STEP_KEYS:
            if self.group[f"data/{key}"].shape[0] < self._commit["steps"]:
                raise ValueError(
                    f"store {str(self.path)!r} is damaged: data/{key} has {self.group[f'data/{key}'].shape[0]} rows "
                    f"but the commit record says {self._commit['steps']} steps were committed."
                )

    # -- reading ---------------------------------------------------------------------
    @property
    def env_id(self) -> str:
        return self.attrs["env_id"]

    @property
    def num_episodes(self) -> int:
        return int(self._commit["episodes"])

    @property
    def num_steps(self) -> int:
        return int(self._commit["steps"])

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.attrs["observation_space"]["shape"]))

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.attrs["action_space"]["shape"]))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Running mean and variance of observations and actions over committed steps."""
        s = self._commit["stats"]
        n = max(s["count"], 1)
        out = {}
        for key in ("obs", "action"):
            total, total_sq = np.asarray(s[f"{key}_sum"]), np.asarray(s[f"{key}_sumsq"])
            mean = total / n
            out[f"{key}_mean"] = mean
            out[f"{key}_var"] = np.maximum(total_sq / n - mean**2, 0.0)
        out["count"] = s["count"]
        return out

    def sim_state_keys(self) -> list[str]:
        if "data/sim_state" not in self.group:
            return []
        return sorted(self.group["data/sim_state"].array_keys())

    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.group["meta/episode_ends"][: self.num_episodes], np.int64)

    def read(self, key: str) -> np.ndarray:
        """A whole committed step or episode array, e.g. ``data/obs`` or ``meta/episodes/return``."""
        if key not in self.group:
            raise ValueError(f"store {str(self.path)!r} has no array {key!r}.")
        length = self.num_episodes if key.startswith(("final_obs/", "meta/")) else self.num_steps
        return np.asarray(self.group[key][:length])

    def episode(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_episodes:
            raise ValueError(f"episode {index} does not exist: the store has {self.num_episodes} episodes.")
        ends = self.episode_ends()
        start, end = (0 if index == 0 else int(ends[index - 1])), int(ends[index])
        out = {k: np.asarray(self.group[f"data/{k}"][start:end]) for k in STEP_KEYS}
        for k in self.sim_state_keys():
            out[f"sim_state/{k}"] = np.asarray(self.group[f"data/sim_state/{k}"][start:end])
        out["final_obs"] = np.asarray(self.group["final_obs/obs"][index])
        return out

    def episode_attrs(self) -> dict[str, np.ndarray]:
        return {name: self.read(f"meta/episodes/{name}") for name in _EPISODE_COLUMNS}

    # -- writing ---------------------------------------------------------------------
    def append_episode(self, episode: dict[str, np.ndarray], attrs: EpisodeAttrs | None = None) -> int:
        """Validate and append one episode; returns its index once committed.

        ``episode`` holds ``obs`` (T, obs_dim), ``action`` (T, act_dim), ``reward``
        (T,), ``terminated`` and ``truncated`` (T,) booleans set at most on the last
        step and never both, ``final_obs`` (obs_dim,) and optionally
        ``sim_state/<name>`` (T, dim).
        """
        if not self.writable:
            raise ValueError(f"store {str(self.path)!r} was opened read-only; open it with mode='a' to append.")
        attrs = attrs or EpisodeAttrs()
        index = self.num_episodes
        ep = self._validate(episode, index)
        length = ep["obs"].shape[0]
        start = self.num_steps
        end = start + length
        g = self.group
        for key in STEP_KEYS:
            _write_rows(g[f"data/{key}"], start, ep[key])
        for name in self.sim_state_keys():
            _write_rows(g[f"data/sim_state/{name}"], start, ep[f"sim_state/{name}"])
        _write_rows(g["final_obs/obs"], index, ep["final_obs"][None])
        columns = {
            "source": attrs.source, "parents": json.dumps(list(map(int, attrs.parents))),
            "generator_hash": attrs.generator_hash, "checkpoint": attrs.checkpoint,
            "quality": attrs.quality, "split": attrs.split, "seed": attrs.seed,
            "return": float(ep["reward"].astype(np.float64).sum()),
            "success": bool(episode.get("success", False)), "length": length,
        }
        for name, value in columns.items():
            arr = g[f"meta/episodes/{name}"]
            _write_rows(arr, index, np.asarray([value], dtype=arr.dtype))
        _write_rows(g["meta/episode_ends"], index, np.asarray([end], np.int64))
        stats = _update_stats(self._commit["stats"], ep["obs"], ep["action"])
        self._write_commit({"episodes": index + 1, "steps": end, "stats": stats})
        return index

    def _validate(self, episode: dict, index: int) -> dict[str, np.ndarray]:
        where = f"episode {index} of store {str(self.path)!r}"
        missing = [k for k in (*STEP_KEYS, "final_obs") if k not in episode]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}.")
        ep = {k: np.asarray(v) for k, v in episode.items() if k != "success"}
        length = ep["obs"].shape[0] if ep["obs"].ndim == 2 else -1
        if length < 1:
            raise ValueError(f"{where}: obs must have shape (T >= 1, {self.obs_dim}), got {ep['obs'].shape}.")
        shapes = {"obs": (length, self.obs_dim), "action": (length, self.action_dim), "reward": (length,),
                  "terminated": (length,), "truncated": (length,), "final_obs": (self.obs_dim,)}
        for name in self.sim_state_keys():
            dim = self.group[f"data/sim_state/{name}"].shape[1]
            shapes[f"sim_state/{name}"] = (length, dim)
        for key, shape in shapes.items():
            if key not in ep:
                raise ValueError(f"{where}: missing key {key!r}.")
            if ep[key].shape != shape:
                raise ValueError(f"{where}: {key} must have shape {shape}, got {ep[key].shape}.")
            if ep[key].dtype == object:
                raise ValueError(f"{where}: {key} has object dtype; only numeric arrays are stored.")
        for key in ("terminated", "truncated"):
            if ep[key].dtype != np.bool_:
                raise ValueError(f"{where}: {key} must be booleans, got dtype {ep[key].dtype}.")
            if ep[key][:-1].any():
                raise ValueError(f"{where}: {key} is set before the last step (at step {int(np.argmax(ep[key]))}).")
        if ep["terminated"][-1] and ep["truncated"][-1]:
            raise ValueError(f"{where}: terminated and truncated are both set on the last step; an episode ends one way.")
        for key in ("obs", "action", "reward", "final_obs", *[k for k in shapes if k.startswith("sim_state/")]):
            if not np.issubdtype(ep[key].dtype, np.number):
                raise ValueError(f"{where}: {key} must be numeric, got dtype {ep[key].dtype}.")
            bad = ~np.isfinite(ep[key])
            if bad.any():
                step = int(np.argwhere(bad)[0][0])
                raise ValueError(f"{where}: {key} holds a non-finite value (NaN or inf) at step {step}.")
        low = np.asarray([-np.inf if v is None else v for v in self.attrs["action_space"]["low"]])
        high = np.asarray([np.inf if v is None else v for v in self.attrs["action_space"]["high"]])
        outside = (ep["action"] < low - 1e-6) | (ep["action"] > high + 1e-6)
        if outside.any():
            step, dim = (int(x) for x in np.argwhere(outside)[0])
            raise ValueError(
                f"{where}: action[{step}, {dim}] = {ep['action'][step, dim]:.4g} is outside the action bounds "
                f"[{low[dim]:.4g}, {high[dim]:.4g}]."
            )
        return ep

    def _write_commit(self, record: dict) -> None:
        meta = self.group["meta"]
        meta.attrs["commit"] = record
        self._commit = dict(record)
        # zarr wrote meta/zarr.json by rename; make the rename durable.
        path = self.path / "meta" / "zarr.json"
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _write_rows(arr, start: int, values: np.ndarray) -> None:
    end = start + values.shape[0]
    if arr.shape[0] != end:
        arr.resize((end, *arr.shape[1:]))
    arr[start:end] = values


def _empty_stats(obs_dim: int, act_dim: int) -> dict:
    return {"count": 0, "obs_sum": [0.0] * obs_dim, "obs_sumsq": [0.0] * obs_dim,
            "action_sum": [0.0] * act_dim, "action_sumsq": [0.0] * act_dim}


def _update_stats(stats: dict, obs: np.ndarray, action: np.ndarray) -> dict:
    out = {"count": stats["count"] + int(obs.shape[0])}
    for key, x in (("obs", obs), ("action", action)):
        x = x.astype(np.float64)
        out[f"{key}_sum"] = (np.asarray(stats[f"{key}_sum"]) + x.sum(0)).tolist()
        out[f"{key}_sumsq"] = (np.asarray(stats[f"{key}_sumsq"]) + (x**2).sum(0)).tolist()
    return out
