"""The demonstration store: one zarr v3 group per dataset (layout in docs/store.md).

::

    STORE/zarr.json             attrs: format, version, env id and kwargs, spaces, control
                                rate, software versions, reference returns, and
                                ``arrays``: every array's dtype and per-row shape
    STORE/data/<key>            all episodes concatenated along time: obs, action, reward,
                                terminated, truncated, sim_state/<name>, images/<camera>
    STORE/final_obs/obs         the observation after each episode's last step (and
    STORE/final_obs/images/<c>  the final frame of each camera)
    STORE/meta/episode_ends     cumulative step counts of the episodes
    STORE/meta/episodes/<attr>  one entry per episode (source, parents, return, ...)
    STORE/meta/zarr.json        attrs["commit"]: the commit record
    STORE/writer.lock           flock of the one writer, with its pid and host

**Commits.** An append writes every row past the committed length first (each chunk
and each array metadata file through a temporary file that is fsynced and renamed),
fsyncs the directories, and publishes the episode last by replacing
``meta/zarr.json`` the same way. Readers slice every array to the lengths in the
commit record, so a torn append is invisible; ``agent fsck`` trims it.

**The commit record** holds ``episodes``, ``steps``, the running normalization
statistics (count, sum and sum of squares of observations and actions over the
committed steps, in float64; kept here so they always describe exactly the committed
prefix and change atomically with it), a digest of each array's metadata (all but
its length) and of the root attributes, and a digest of the record itself. A record
or array metadata that does not match is reported as damage, never read.

**Trust.** Opening reads JSON and numeric chunks only: every array's dtype and codecs
are checked against an allow-list before zarr parses it, so nothing is unpickled and
object dtypes are refused. Chunks carry a CRC32C checksum, so a torn or flipped chunk
is an error, not a silent wrong value.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from agent.store.durable import (DurableLocalStore, LeaseLost, LocalLocation, ObjectLease, UrlLocation, WriterLock,
                                 location_for)

FORMAT = "agent-store"
VERSION = 2
CHUNK_ROWS = 512          # step arrays: small enough that appends rewrite little
EPISODE_CHUNK_ROWS = 128  # per-episode arrays
STEP_KEYS = ("obs", "action", "reward", "terminated", "truncated")
SOURCES = ("teleop", "scripted", "policy", "online", "augmented", "imported", "random")
# what a store may hold: fixed-size numbers, booleans and variable-length UTF-8 strings
_ALLOWED_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "bool", "string"}
_ALLOWED_CODECS = {"bytes", "zstd", "crc32c", "vlen-utf8", "blosc", "gzip", "transpose"}
# Floating-point sensor data barely compresses (zstd saves ~8% on noisy data) and zstd
# decodes at ~0.5 GB/s, which would triple the time to open a store; blosc-lz4 decodes
# at ~8 GB/s and still squeezes out the unfilled tail of a chunk that an append
# rewrites. Flags, ids and frames use zstd. Every chunk carries a CRC32C.
_FLOAT_CODECS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
_COMPRESSED = (ZstdCodec(level=1), Crc32cCodec())


class StoreDamaged(ValueError):
    """A store's files contradict its commit record or their checksums."""


@dataclass
class EpisodeAttrs:
    """Per-episode attributes and lineage, stored under ``meta/episodes``."""

    source: str = "scripted"
    """where the episode came from: one of SOURCES"""
    parents: list[int] = field(default_factory=list)
    """episode ids this one was derived from (augmentation, relabelling)"""
    generator_hash: str = ""
    """hash of the config that generated it (collect, augment)"""
    checkpoint: str = ""
    """policy checkpoint that acted, for source 'policy' or 'online'"""
    quality: str = ""
    """free tag such as expert, medium, random"""
    split: str = "train"
    """train, valid or test"""
    seed: int = -1
    """reset seed of the episode, -1 when unknown"""
    lineage: str = ""
    """JSON of how a derived episode was made (augmentations and their parameters, guide,
    filter scores); stores created before this column exist read it as absent"""
    action_free: bool = False
    """the episode's actions were not recorded (observations only, e.g. a video of a
    person): its action rows are placeholders until ``agent label`` fills them in"""


# dtype of each per-episode attribute column
_EPISODE_COLUMNS: dict[str, Any] = {
    "source": str, "parents": str, "generator_hash": str, "checkpoint": str,
    "quality": str, "split": str, "seed": np.int64, "return": np.float64,
    "success": np.bool_, "length": np.int64,
    "lineage": str,  # added later: older stores lack it and read without it
    "action_free": np.bool_,  # added later, likewise
}


def _space_to_json(space) -> dict:
    def bound(x):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64).ravel()]

    return {"shape": list(space.shape), "dtype": str(space.dtype), "low": bound(space.low), "high": bound(space.high)}


@functools.cache
def _installed_version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str]:
    # looked up by name: scanning every installed distribution costs a third of a second per store
    wanted = ("agent", "numpy", "zarr", "mujoco", "dm-control", "gymnasium", "torch")
    return {pkg: v for pkg in wanted if (v := _installed_version(pkg)) is not None}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _dtype_name(dtype) -> str:
    return "string" if dtype is str else np.dtype(dtype).name


class Store:
    """A handle on one store. Use :meth:`create` or :meth:`open`; close (or use as a
    context manager) to release the writer lock."""

    def __init__(self, location: LocalLocation | UrlLocation, group: zarr.Group, writable: bool,
                 commit: dict, lock: WriterLock | ObjectLease | None = None):
        self.location = location
        self.path = location.display
        self.group = group
        self.writable = writable
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._commit = commit
        self._lock = lock
        self._handles: dict[str, Any] = {}
        self._ends: np.ndarray | None = None  # meta/episode_ends of the commit record held, read once
        self.stale_lock = lock.stale_holder if lock else None

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, env_id: str, observation_space, action_space,
               control_rate: float | None = None, env_kwargs: dict | None = None,
               reference_returns: tuple[float, float] | None = None,
               sim_state_dims: dict[str, int | tuple[int, ...]] | None = None,
               image_shapes: dict[str, tuple[int, ...]] | None = None,
               extra_attrs: dict | None = None) -> "Store":
        """A new, empty store at ``path`` (a local directory or an ``s3://`` URL), open for writing.

        ``sim_state_dims`` maps state names to their per-step size (an int, or a row
        shape); a size of 0 is allowed (a task with nothing to restore) and stores no
        chunk files. ``image_shapes`` maps camera names to (H, W, C) uint8 frames,
        stored one frame per chunk under ``data/images/<camera>``.
        """
        location = location_for(path, writable=True)
        if location_has_data(location):
            what = "the directory exists and is not empty" if location.root is not None else "objects already exist under it"
            raise ValueError(f"cannot create a store at {location.display!r}: {what}; choose a new path or open it with mode='a'.")
        obs_dim = int(np.prod(observation_space.shape))
        act_dim = int(np.prod(action_space.shape))
        arrays: dict[str, dict] = {
            "data/obs": {"dtype": "float32", "row": [obs_dim]},
            "data/action": {"dtype": "float32", "row": [act_dim]},
            "data/reward": {"dtype": "float32", "row": []},
            "data/terminated": {"dtype": "bool", "row": []},
            "data/truncated": {"dtype": "bool", "row": []},
            "final_obs/obs": {"dtype": "float32", "row": [obs_dim], "per": "episode"},
            "meta/episode_ends": {"dtype": "int64", "row": [], "per": "episode"},
        }
        for name, dim in (sim_state_dims or {}).items():
            row = [int(d) for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
            if any(d < 0 for d in row):
                raise ValueError(f"sim_state {name!r}: sizes must be >= 0, got {tuple(row)}.")
            arrays[f"data/sim_state/{name}"] = {"dtype": "float64", "row": row}
        for cam, shape in (image_shapes or {}).items():
            if len(shape) != 3:
                raise ValueError(f"image {cam!r}: shape must be (H, W, C), got {tuple(shape)}.")
            arrays[f"data/images/{cam}"] = {"dtype": "uint8", "row": list(map(int, shape)), "image": True}
            arrays[f"final_obs/images/{cam}"] = {"dtype": "uint8", "row": list(map(int, shape)), "image": True,
                                                 "per": "episode"}
        for name, dtype in _EPISODE_COLUMNS.items():
            arrays[f"meta/episodes/{name}"] = {"dtype": _dtype_name(dtype), "row": [], "per": "episode"}
        if location.root is not None:
            location.root.mkdir(parents=True, exist_ok=True)  # after every check: a refused layout leaves nothing behind
        lock = location.writer_lock().acquire()
        try:
            root = zarr.create_group(location.zarr_store, zarr_format=3)
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
                "arrays": arrays,
                **(extra_attrs or {}),
            })
            for key, spec in arrays.items():
                rows = 1 if spec.get("image") else (EPISODE_CHUNK_ROWS if spec.get("per") == "episode" else CHUNK_ROWS)
                dtype = str if spec["dtype"] == "string" else spec["dtype"]
                compressors = _FLOAT_CODECS if spec["dtype"] in ("float32", "float64") else _COMPRESSED
                kwargs: dict[str, Any] = {} if dtype is str else {"compressors": compressors}
                root.require_group(key.rsplit("/", 1)[0]).create_array(
                    key.rsplit("/", 1)[1], shape=(0, *spec["row"]), chunks=(rows, *spec["row"]), dtype=dtype, **kwargs)
            store = cls(location, root, writable=True, commit={}, lock=lock)
            store._write_commit({"episodes": 0, "steps": 0, "stats": _empty_stats(obs_dim, act_dim)})
        except BaseException:
            lock.release()
            raise
        return store

    @staticmethod
    def holds_data(path: str | Path) -> bool:
        """Whether anything (a store or other files) is at ``path``, a local path or a URL."""
        return location_has_data(location_for(path, writable=False))

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", *, lock: WriterLock | ObjectLease | None = None) -> "Store":
        """Open a store on a local path or a URL (``memory://``, ``file://``, ``s3://``...).

        ``mode='r'`` reads the committed episodes; ``mode='a'`` (local paths and
        ``s3://``) also takes the writer lock, or uses ``lock`` when the caller already
        holds it.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}.")
        location = location_for(path, writable=(mode == "a"))
        where = location.display
        if not location.exists():
            raise ValueError(f"no store at {where!r}: the path does not exist.")
        root_meta = location.read_json("zarr.json")
        if root_meta is None:
            raise ValueError(
                f"{where!r} is not an agent store: expected a zarr v3 group (a zarr.json file) "
                f"written by `agent collect` or `agent import`, found none."
            )
        attrs = root_meta.get("attributes")
        fmt = attrs.get("format") if isinstance(attrs, dict) else None
        if fmt != FORMAT:
            raise ValueError(f"{where!r} is not an agent store: its zarr.json has format {fmt!r}, expected {FORMAT!r}.")
        version = attrs.get("version")
        if version != VERSION:
            raise ValueError(f"store {where!r} has schema version {version!r}; this agent reads version {VERSION} "
                             f"(re-create it with `agent collect` or `agent import`).")
        if mode == "a" and lock is None:
            lock = location.writer_lock().acquire()  # before the commit record: a writer appends to the latest
        try:
            commit = _read_commit(location, where)
            _check_arrays(location, attrs, commit, where)
            group = zarr.open_group(location.zarr_store, mode="r+" if mode == "a" else "r", zarr_format=3)
            return cls(location, group, writable=(mode == "a"), commit=commit, lock=lock)
        except ValueError:
            if lock:
                lock.release()
            raise
        except Exception as exc:  # zarr raises many types for damaged metadata
            if lock:
                lock.release()
            raise ValueError(f"store {where!r} is damaged: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Trim arrays to the committed length (they grow ahead in whole chunks while
        writing) and release the writer lock."""
        try:
            if self._lock is not None and self.writable:
                with contextlib.suppress(LeaseLost):  # another writer holds the store now: not its arrays to trim
                    self.trim_to_commit()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self.writable = False

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

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
    def success_recorded(self) -> bool:
        """False for an import whose format states no success: its episodes' success column
        holds False for "unknown"."""
        return (self.attrs.get("imported_from") or {}).get("success_recorded", True) is not False

    @property
    def array_specs(self) -> dict[str, dict]:
        return self.attrs["arrays"]

    @property
    def commit_record(self) -> dict:
        return dict(self._commit)

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Running mean and variance of observations and actions over committed steps
        (kept in the commit record, so always those of exactly the committed prefix)."""
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
        return sorted(k.removeprefix("data/sim_state/") for k in self.array_specs if k.startswith("data/sim_state/"))

    def image_keys(self) -> list[str]:
        return sorted(k.removeprefix("data/images/") for k in self.array_specs if k.startswith("data/images/"))

    def committed_length(self, key: str) -> int:
        return self.num_episodes if self.array_specs[key].get("per") == "episode" else self.num_steps

    def episode_ends(self) -> np.ndarray:
        if self._ends is None or len(self._ends) != self.num_episodes:  # every commit changes the count
            self._ends = self.read("meta/episode_ends").astype(np.int64)
        return self._ends.copy()

    def read(self, key: str, out: np.ndarray | None = None) -> np.ndarray:
        """A whole committed array, e.g. ``data/obs`` or ``meta/episodes/return``,
        decoded into ``out`` when given (rows beyond the commit are never read)."""
        if key not in self.array_specs:
            raise ValueError(f"store {self.path!r} has no array {key!r}; it has {', '.join(self.array_specs)}.")
        length = self.committed_length(key)
        try:
            return _read_rows(self, key, length, out)
        except StoreDamaged:
            raise
        except Exception as exc:  # zarr's own errors (checksums, codecs) read as damage of this key
            raise ValueError(f"store {self.path!r}: {key} cannot be read ({type(exc).__name__}: {exc}); "
                             f"the store is damaged, run `agent fsck`.") from None

    def read_rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Selected committed rows of one array (used for lazily decoded images)."""
        rows = np.asarray(rows, np.int64)
        length = self.committed_length(key)
        if rows.size and (rows.min() < 0 or rows.max() >= length):
            raise ValueError(f"store {self.path!r}: rows of {key} must lie in [0, {length}).")
        try:
            return np.asarray(self.group[key].get_orthogonal_selection((rows,)))
        except Exception as exc:
            raise ValueError(f"store {self.path!r}: {key} cannot be read ({type(exc).__name__}: {exc}); "
                             f"the store is damaged, run `agent fsck`.") from None

    def episode(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_episodes:
            raise ValueError(f"episode {index} does not exist: the store has {self.num_episodes} episodes.")
        ends = self.episode_ends()
        start, end = (0 if index == 0 else int(ends[index - 1])), int(ends[index])
        try:
            out = {k: np.asarray(self.group[f"data/{k}"][start:end]) for k in STEP_KEYS}
            for k in self.sim_state_keys():
                out[f"sim_state/{k}"] = np.asarray(self.group[f"data/sim_state/{k}"][start:end])
            for k in self.image_keys():
                out[f"images/{k}"] = np.asarray(self.group[f"data/images/{k}"][start:end])
                out[f"final_images/{k}"] = np.asarray(self.group[f"final_obs/images/{k}"][index])
            out["final_obs"] = np.asarray(self.group["final_obs/obs"][index])
        except Exception as exc:
            raise ValueError(f"store {self.path!r}: episode {index} cannot be read ({type(exc).__name__}: {exc}); "
                             f"the store is damaged, run `agent fsck`.") from None
        return out

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        """Every episode in order, as :meth:`episode` gives it; a store without images is read
        once, array by array, instead of chunk by chunk per episode."""
        if self.image_keys():
            for i in range(self.num_episodes):
                yield self.episode(i)
            return
        steps = {k: self.read(f"data/{k}") for k in STEP_KEYS}
        steps.update({f"sim_state/{k}": self.read(f"data/sim_state/{k}") for k in self.sim_state_keys()})
        final = self.read("final_obs/obs")
        start = 0
        for i, end in enumerate(self.episode_ends()):
            yield {**{k: v[start:end] for k, v in steps.items()}, "final_obs": final[i]}
            start = int(end)

    def episode_attrs(self) -> dict[str, np.ndarray]:
        return {name: self.read(f"meta/episodes/{name}") for name in _EPISODE_COLUMNS
                if f"meta/episodes/{name}" in self.array_specs}

    # -- writing ---------------------------------------------------------------------
    def append_episode(self, episode: dict[str, np.ndarray], attrs: EpisodeAttrs | None = None) -> int:
        """Validate and append one episode; returns its index once committed.

        ``episode`` holds ``obs`` (T, obs_dim), ``action`` (T, act_dim), ``reward``
        (T,), ``terminated`` and ``truncated`` (T,) booleans set at most on the last
        step and never both, ``final_obs`` (obs_dim,), optionally ``success`` (bool),
        ``sim_state/<name>`` (T, dim), ``images/<camera>`` (T, H, W, C) uint8 with
        ``final_images/<camera>`` (H, W, C). Bad input raises ValueError before
        anything is written.
        """
        if not self.writable:
            raise ValueError(f"store {self.path!r} was opened read-only; open it with mode='a' to append.")
        attrs = attrs or EpisodeAttrs()
        index = self.num_episodes
        ep = self._validate(episode, index)
        columns = self._validate_attrs(attrs, index, ep, episode)
        if self._lock is not None:
            self._lock.renew()  # on object storage: stop here, before any row is written, if the lease was taken
        length = ep["obs"].shape[0]
        start, end = self.num_steps, self.num_steps + length
        writes: list[tuple[str, int, np.ndarray]] = [(f"data/{k}", start, ep[k]) for k in STEP_KEYS]
        writes += [(f"data/sim_state/{n}", start, ep[f"sim_state/{n}"]) for n in self.sim_state_keys()]
        for cam in self.image_keys():
            writes += [(f"data/images/{cam}", start, ep[f"images/{cam}"]),
                       (f"final_obs/images/{cam}", index, ep[f"final_images/{cam}"][None])]
        writes.append(("final_obs/obs", index, ep["final_obs"][None]))
        writes += [(f"meta/episodes/{name}", index, np.asarray([value], dtype=self._array(f"meta/episodes/{name}").dtype))
                   for name, value in columns.items() if f"meta/episodes/{name}" in self.array_specs]
        writes.append(("meta/episode_ends", index, np.asarray([end], np.int64)))
        self._write_all(writes)
        stats = _update_stats(self._commit["stats"], ep["obs"], ep["action"])
        self._write_commit({"episodes": index + 1, "steps": end, "stats": stats})
        return index

    def _validate(self, episode: dict, index: int) -> dict[str, np.ndarray]:
        where = f"episode {index} of store {self.path!r}"
        if not isinstance(episode, dict):
            raise ValueError(f"{where}: an episode is a dict of arrays, got {type(episode).__name__}.")
        shapes: dict[str, tuple] = {"obs": (None, self.obs_dim), "action": (None, self.action_dim), "reward": (None,),
                                    "terminated": (None,), "truncated": (None,), "final_obs": (self.obs_dim,)}
        for name in self.sim_state_keys():
            shapes[f"sim_state/{name}"] = (None, *self.array_specs[f"data/sim_state/{name}"]["row"])
        for cam in self.image_keys():
            row = tuple(self.array_specs[f"data/images/{cam}"]["row"])
            shapes[f"images/{cam}"] = (None, *row)
            shapes[f"final_images/{cam}"] = row
        missing = [k for k in shapes if k not in episode]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}.")
        unknown = sorted(set(episode) - set(shapes) - {"success"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; this store takes {', '.join(shapes)}.")
        ep = {}
        for key in shapes:
            value = episode[key]
            if isinstance(value, np.ndarray) and value.dtype == object:
                raise ValueError(f"{where}: {key} has object dtype; only numeric arrays are stored.")
            try:
                ep[key] = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {key} is not an array ({exc}).") from None
            if ep[key].dtype == object or ep[key].dtype.kind in "USV":
                raise ValueError(f"{where}: {key} has dtype {ep[key].dtype}; only numeric arrays are stored.")
        length = ep["obs"].shape[0] if ep["obs"].ndim == 2 else -1
        if length < 1:
            raise ValueError(f"{where}: obs must have shape (T >= 1, {self.obs_dim}), got {ep['obs'].shape}.")
        for key, shape in shapes.items():
            want = tuple(length if s is None else s for s in shape)
            if ep[key].shape != want:
                raise ValueError(f"{where}: {key} must have shape {want}, got {ep[key].shape}.")
        for key in ("terminated", "truncated"):
            if ep[key].dtype != np.bool_:
                raise ValueError(f"{where}: {key} must be booleans, got dtype {ep[key].dtype}.")
            if ep[key][:-1].any():
                raise ValueError(f"{where}: {key} is set before the last step (at step {int(np.argmax(ep[key]))}).")
        if ep["terminated"][-1] and ep["truncated"][-1]:
            raise ValueError(f"{where}: terminated and truncated are both set on the last step; an episode ends one way.")
        for key in shapes:
            if key in ("terminated", "truncated"):
                continue
            if key.startswith(("images/", "final_images/")):
                if ep[key].dtype != np.uint8:
                    raise ValueError(f"{where}: {key} must be uint8 frames, got dtype {ep[key].dtype}.")
                continue
            if ep[key].dtype.kind not in "fiu":
                raise ValueError(f"{where}: {key} must be numeric, got dtype {ep[key].dtype}.")
            bad = ~np.isfinite(ep[key])
            if bad.any():
                step = int(np.argwhere(bad)[0][0]) if ep[key].ndim else 0
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
        success = episode.get("success", False)
        if not isinstance(success, (bool, np.bool_)):
            raise ValueError(f"{where}: success must be a bool, got {type(success).__name__}.")
        return ep

    def _validate_attrs(self, attrs: EpisodeAttrs, index: int, ep: dict, episode: dict) -> dict[str, Any]:
        where = f"episode {index} of store {self.path!r}"
        if attrs.source not in SOURCES:
            raise ValueError(f"{where}: source {attrs.source!r} is not one of {', '.join(SOURCES)}.")
        for name in ("generator_hash", "checkpoint", "quality", "split", "lineage"):
            if not isinstance(getattr(attrs, name), str):
                raise ValueError(f"{where}: attribute {name} must be a string, got {type(getattr(attrs, name)).__name__}.")
        try:
            parents = [int(p) for p in attrs.parents]
            seed = int(attrs.seed)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: parents must be a list of episode ids and seed an int, "
                             f"got {attrs.parents!r} and {attrs.seed!r}.") from None
        if any(p < 0 for p in parents):
            raise ValueError(f"{where}: parent episode ids must be >= 0, got {parents}.")
        for name in ("lineage", "action_free"):
            if getattr(attrs, name) and f"meta/episodes/{name}" not in self.array_specs:
                raise ValueError(f"{where}: the store was created before episodes had a {name} column; "
                                 f"write these episodes to a new store.")
        return {
            "source": attrs.source, "parents": json.dumps(parents), "generator_hash": attrs.generator_hash,
            "checkpoint": attrs.checkpoint, "quality": attrs.quality, "split": attrs.split, "seed": seed,
            "return": float(ep["reward"].astype(np.float64).sum()),
            "success": bool(episode.get("success", False)), "length": int(ep["obs"].shape[0]),
            "lineage": attrs.lineage, "action_free": bool(attrs.action_free),
        }

    def _array(self, key: str):
        """A cached handle that writes every chunk, even one equal to the fill value, so
        that a missing chunk file always means damage."""
        if key not in self._handles:
            self._handles[key] = self.group[key].with_config({"write_empty_chunks": True})
        return self._handles[key]

    def _write_all(self, writes: list[tuple[str, int, np.ndarray]]) -> None:
        """Write rows of several arrays at once (their fsyncs overlap). Arrays grow in
        steps of whole chunks, so an append rarely rewrites array metadata; only
        meta/episode_ends is kept at its exact length, for plain zarr readers."""
        jobs = []
        for key, start, values in writes:
            arr = self._array(key)
            end = start + values.shape[0]
            if arr.shape[0] < end or key == "meta/episode_ends":
                rows = arr.chunks[0]
                grown = end if key == "meta/episode_ends" else max(end, int(arr.shape[0] * 1.25))
                arr.resize((math.ceil(grown / rows) * rows if key != "meta/episode_ends" else grown, *arr.shape[1:]))
            jobs.append(arr._async_array.setitem(slice(start, end), values))

        async def run_all() -> None:
            await asyncio.gather(*jobs)

        sync(run_all())

    def _layout_digests(self) -> dict[str, str]:
        out = {"/": _digest(_root_attrs_for_digest(dict(self.group.attrs)))}
        for key in self.array_specs:
            out[key] = _array_digest(self._array(key).metadata.to_dict())
        return out

    def _write_commit(self, record: dict) -> None:
        record = {**record, "layout": self._layout_digests()}
        record["digest"] = _digest(record)
        zstore = self.location.zarr_store
        if isinstance(zstore, DurableLocalStore):
            zstore.flush()  # data and array metadata are on disk before the record points at them
        if "meta" not in self._handles:
            self._handles["meta"] = self.group["meta"]
        if self._lock is not None:
            self._lock.renew()  # the record is published only by the writer that still holds the store
        self._handles["meta"].attrs["commit"] = record
        if isinstance(zstore, DurableLocalStore):
            zstore.flush()
        self._commit = record

    def trim_to_commit(self) -> dict[str, int]:
        """Cut every array back to its committed length; returns rows removed per key."""
        if not self.writable:
            raise ValueError(f"store {self.path!r} was opened read-only; fsck needs mode='a'.")
        if self._lock is not None:
            self._lock.renew()
        trimmed = {}
        for key in self.array_specs:
            arr = self._array(key)
            length = self.committed_length(key)
            if arr.shape[0] > length:
                trimmed[key] = int(arr.shape[0] - length)
                self._array(key).resize((length, *arr.shape[1:]))
        zstore = self.location.zarr_store
        if isinstance(zstore, DurableLocalStore):
            zstore.flush()
        return trimmed


# -- checks on open -------------------------------------------------------------------


def location_has_data(location: LocalLocation | UrlLocation) -> bool:
    """Whether anything (a store or other files) is already at the location."""
    if location.root is not None:
        return location.root.exists() and any(location.root.iterdir())
    return bool(location.list_prefix(""))


def _root_attrs_for_digest(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k != "software"}


def _array_digest(meta: dict) -> str:
    return _digest({k: v for k, v in meta.items() if k not in ("shape", "attributes")})


def _read_commit(location, where: str) -> dict:
    meta = location.read_json("meta/zarr.json")
    commit = (meta or {}).get("attributes", {}).get("commit") if isinstance((meta or {}).get("attributes"), dict) else None
    if not isinstance(commit, dict):
        raise ValueError(f"store {where!r} is damaged: meta/zarr.json has no commit record.")
    body = {k: v for k, v in commit.items() if k != "digest"}
    if commit.get("digest") != _digest(body):
        raise ValueError(f"store {where!r} is damaged: the commit record in meta/zarr.json does not match its digest.")
    ok = (isinstance(commit.get("episodes"), int) and isinstance(commit.get("steps"), int)
          and isinstance(commit.get("stats"), dict) and isinstance(commit.get("layout"), dict)
          and commit["episodes"] >= 0 and commit["steps"] >= commit["episodes"])
    if not ok:
        raise ValueError(f"store {where!r} is damaged: the commit record in meta/zarr.json is malformed.")
    return commit


def _check_arrays(location, attrs: dict, commit: dict, where: str) -> None:
    """Check every array's metadata against the allow-list, the root attributes and the
    commit record before zarr parses any of it."""
    specs = attrs.get("arrays")
    if not isinstance(specs, dict) or not {f"data/{k}" for k in STEP_KEYS} | {"meta/episode_ends", "final_obs/obs"} <= set(specs):
        raise ValueError(f"store {where!r} is damaged: its zarr.json does not list the store's arrays.")
    layout = commit["layout"]
    if layout.get("/") != _digest(_root_attrs_for_digest(attrs)):
        raise ValueError(f"store {where!r} is damaged: the root attributes in zarr.json do not match the commit record.")
    for key, spec in specs.items():
        try:
            _check_array(location, key, spec, layout, commit, where)
        except ValueError:
            raise
        except Exception:  # a field of the wrong JSON type
            raise ValueError(f"store {where!r} is damaged: the metadata of array {key!r} is malformed.") from None


def _check_array(location, key: str, spec: dict, layout: dict, commit: dict, where: str) -> None:
    meta = location.read_json(f"{key}/zarr.json")
    if meta is None:
        raise ValueError(f"store {where!r} is damaged: the array {key!r} is missing.")
    dtype = meta.get("data_type")
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"store {where!r}: array {key!r} has dtype {dtype!r}; only numeric, bool and UTF-8 "
                         f"string arrays are read (never objects).")
    codecs = meta.get("codecs")
    names = [c.get("name") if isinstance(c, dict) else None for c in codecs] if isinstance(codecs, list) else [None]
    if any(not isinstance(n, str) or n not in _ALLOWED_CODECS for n in names):
        raise ValueError(f"store {where!r}: array {key!r} uses codecs {names}; allowed are {sorted(_ALLOWED_CODECS)}.")
    if dtype != spec.get("dtype"):
        raise ValueError(f"store {where!r} is damaged: array {key!r} has dtype {dtype!r}, expected {spec.get('dtype')!r}.")
    if layout.get(key) != _array_digest(meta):
        raise ValueError(f"store {where!r} is damaged: the metadata of array {key!r} does not match the commit record.")
    shape = meta.get("shape")
    length = commit["episodes"] if spec.get("per") == "episode" else commit["steps"]
    if not isinstance(shape, list) or list(shape[1:]) != list(spec["row"]) or not isinstance(shape[0], int):
        raise ValueError(f"store {where!r} is damaged: array {key!r} has shape {shape}, expected (N, {spec['row']}).")
    if shape[0] < length:
        raise ValueError(f"store {where!r} is damaged: {key} has {shape[0]} rows but the commit record says "
                         f"{length} were committed.")
    if math.prod(shape[1:]) == 0:
        return  # rows of zero elements: zarr stores no chunk files for a zero-size chunk grid
    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    present = location.chunk_indices(key)
    needed = math.ceil(length / rows)
    lost = [i for i in range(needed) if str(i) not in present]
    if lost:
        raise ValueError(f"store {where!r} is damaged: {key} lost committed chunk(s) {lost[:5]} "
                         f"(rows {lost[0] * rows}...); restore the store from a copy.")


# -- fast bulk reads ------------------------------------------------------------------

_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
# codec chains this store writes, decoded here without zarr (by codec names)
_CHAINS = {("bytes", "crc32c"): "raw", ("bytes", "blosc", "crc32c"): "blosc", ("bytes", "zstd", "crc32c"): "zstd"}


def _read_rows(store: Store, key: str, length: int, out: np.ndarray | None) -> np.ndarray:
    """Decode rows [0, length) of one array. Local arrays in one of the store's own
    codec chains are read straight from their chunk files (raw chunks land in ``out``
    with no copy, then their checksum is checked); anything else goes through zarr,
    whose per-chunk bookkeeping costs about as much as the decoding."""
    arr = store.group[key]
    shape = (length, *arr.shape[1:])
    if arr.dtype.kind not in "fiub":  # strings: small per-episode columns, as fixed-width unicode
        return np.asarray(np.asarray(arr[:length]).tolist(), dtype=str).reshape(length)
    if out is None:
        out = np.empty(shape, dtype=arr.dtype)
    elif out.shape != shape or out.dtype != arr.dtype:
        raise ValueError(f"store {store.path!r}: buffer for {key} is {out.dtype} {out.shape}, expected {arr.dtype} {shape}.")
    if math.prod(shape[1:]) == 0:
        return out  # rows of zero elements hold no values and have no chunk files to read
    codecs = [dict(c) for c in arr.metadata.to_dict()["codecs"]]
    if codecs and codecs[0].get("name") == "bytes" and arr.dtype.itemsize == 1:
        codecs[0] = _BYTES  # one-byte types carry no endianness
    chain = _CHAINS.get(tuple(str(c.get("name")) for c in codecs)) if codecs[0] == _BYTES else None
    root = store.location.root
    if root is None or chain is None or length == 0 or not out.flags.c_contiguous or sys.byteorder != "little":
        step = arr.chunks[0] * 64
        for s in range(0, length, step):
            out[s:min(s + step, length)] = arr[s:min(s + step, length)]
        return out
    rows = arr.chunks[0]
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    chunk_bytes = rows * row_bytes
    tail = "/0" * (arr.ndim - 1)
    folder = root / key / "c"
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    decoders = {"zstd": Zstd(), "blosc": Blosc()}

    def damaged(i: int, what: str) -> StoreDamaged:
        return StoreDamaged(f"store {store.path!r} is damaged: chunk {i} of {key} {what}; run `agent fsck`.")

    for i in range(math.ceil(length / rows)):
        a, b = i * rows * row_bytes, min((i + 1) * rows, length) * row_bytes
        try:
            f = open(folder / f"{i}{tail}", "rb")
        except FileNotFoundError:
            raise damaged(i, "is missing") from None
        with f:
            if chain == "raw":
                target = buffer[a:b] if b - a == chunk_bytes else memoryview(bytearray(chunk_bytes))
                got = f.readinto(target)
                crc, extra = f.read(4), f.read(1)
                if got != chunk_bytes or len(crc) != 4 or extra:
                    raise damaged(i, f"has the wrong size (expected {chunk_bytes + 4} bytes)")
                if google_crc32c.value(np.frombuffer(target, np.uint8)) != int.from_bytes(crc, "little"):
                    raise damaged(i, "fails its checksum (overwritten or torn)")
                if b - a != chunk_bytes:
                    buffer[a:b] = target[: b - a]
                continue
            raw = f.read()
        if len(raw) < 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise damaged(i, "fails its checksum (truncated or overwritten)")
        try:
            data = decoders[chain].decode(raw[:-4])
        except Exception:
            raise damaged(i, "cannot be decompressed") from None
        if len(data) != chunk_bytes:
            raise damaged(i, f"holds {len(data)} bytes, expected {chunk_bytes}")
        buffer[a:b] = memoryview(data).cast("B")[: b - a]
    return out


# -- writing helpers ------------------------------------------------------------------


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
