"""Decoded store arrays in RAM and the uniform transition sampler.

Random minibatches are gathered from numpy arrays, never read from zarr chunks
(per-read overhead there is about half a millisecond). ``next_obs`` is exact at every
boundary: the observation table holds every step's observation followed by each
episode's final observation, and ``next_index`` points each step at its successor.
Images are not decoded here: :class:`ImageFrames` reads the frames a batch needs.
Filtered, mixed, windowed and on-device sampling live in ``agent.store.sampler``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.store.zarr_store import Store


class ImageFrames:
    """Lazy access to the camera frames of a store, addressed like ``obs_table`` rows:
    row ``t < num_steps`` is step t's frame, row ``num_steps + e`` episode e's final frame."""

    def __init__(self, store: Store):
        self.store = store
        self.cameras = store.image_keys()
        self.num_steps = store.num_steps

    def gather(self, camera: str, rows: np.ndarray) -> np.ndarray:
        if camera not in self.cameras:
            raise ValueError(f"store {self.store.path!r} has no camera {camera!r}; it has {self.cameras}.")
        rows = np.asarray(rows, np.int64)
        step = rows < self.num_steps
        shape = tuple(self.store.array_specs[f"data/images/{camera}"]["row"])
        out = np.empty((rows.size, *shape), np.uint8)
        for mask, key, offset in ((step, f"data/images/{camera}", 0),
                                  (~step, f"final_obs/images/{camera}", self.num_steps)):
            if mask.any():
                wanted = rows[mask] - offset
                unique, inverse = np.unique(wanted, return_inverse=True)
                out[mask] = self.store.read_rows(key, unique)[inverse]
        return out


@dataclass
class TransitionCache:
    obs_table: np.ndarray      # (T + E, obs_dim): step observations, then final ones
    action: np.ndarray         # (T, act_dim)
    reward: np.ndarray         # (T,)
    terminated: np.ndarray     # (T,) bool
    truncated: np.ndarray      # (T,) bool
    next_index: np.ndarray     # (T,) row of obs_table holding next_obs
    episode_ends: np.ndarray   # (E,)
    env_id: str
    episodes: dict[str, np.ndarray] = field(default_factory=dict)  # per-episode attributes (source, split, ...)
    images: ImageFrames | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)    # normalization statistics of the store

    @property
    def num_steps(self) -> int:
        return self.action.shape[0]

    @property
    def num_episodes(self) -> int:
        return self.episode_ends.shape[0]

    @property
    def obs(self) -> np.ndarray:
        return self.obs_table[: self.num_steps]

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    def next_obs(self, idx: np.ndarray) -> np.ndarray:
        return self.obs_table[self.next_index[idx]]

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of uniformly drawn transitions."""
        idx = rng.integers(0, self.num_steps, size=batch_size)
        return self.gather(idx)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "obs": self.obs_table[idx],
            "action": self.action[idx],
            "reward": self.reward[idx],
            "next_obs": self.obs_table[self.next_index[idx]],
            "terminated": self.terminated[idx],
            "truncated": self.truncated[idx],
        }

    def select_episodes(self, where: dict | None = None) -> np.ndarray:
        """Ids of the episodes whose attributes match ``where``, e.g.
        ``{"split": "train", "quality": ["expert", "medium"], "success": True}``."""
        keep = np.ones(self.num_episodes, bool)
        for name, wanted in (where or {}).items():
            if name not in self.episodes:
                raise ValueError(f"cannot filter on {name!r}: episode attributes are {', '.join(self.episodes)}.")
            values = np.asarray(self.episodes[name])
            choices = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
            keep &= np.isin(values, list(choices))
        return np.flatnonzero(keep)


def sim_state_transitions(store: Store) -> dict:
    """Every step's obs, action, next_obs and sim_state arrays, with the store's env id:
    the real data ``sims.gaps.paired_gap`` replays a simulator against."""
    cache = load_transitions(store, episode_attrs=False)
    rows = np.arange(cache.num_steps)
    return {"env_id": store.env_id, "obs": cache.obs, "action": cache.action, "next_obs": cache.next_obs(rows),
            "sim_state": {k: store.read(f"data/sim_state/{k}") for k in store.sim_state_keys()}}


def load_transitions(store: Store, *, episode_attrs: bool = True) -> TransitionCache:
    """Decode the committed low-dimensional arrays of ``store`` into RAM, checking
    that they are finite (a store written by other tools may not be). Arrays are
    decoded straight into their final buffers, so peak memory stays near their size."""
    if store.num_steps == 0:
        raise ValueError(f"store {store.path!r} holds no committed episodes; collect or import data first.")
    steps, episodes = store.num_steps, store.num_episodes
    obs_table = np.empty((steps + episodes, store.obs_dim), np.float32)
    store.read("data/obs", out=obs_table[:steps])
    store.read("final_obs/obs", out=obs_table[steps:])
    action = store.read("data/action")
    reward = store.read("data/reward")
    ends = store.episode_ends()
    for key, arr in (("data/obs", obs_table[:steps]), ("final_obs/obs", obs_table[steps:]),
                     ("data/action", action), ("data/reward", reward)):
        finite = np.isfinite(arr)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            if key.startswith("data/"):
                where = f"step {row} (episode {int(np.searchsorted(ends, row, side='right'))})"
            else:
                where = f"episode {row}"
            raise ValueError(
                f"store {store.path!r}: {key} holds NaN or inf at {where}; "
                f"the store is damaged or was written without validation, regenerate or repair it."
            )
    if ends.size != episodes or (ends.size and ends[-1] != steps) or np.any(np.diff(ends) <= 0) or ends[0] <= 0:
        raise ValueError(f"store {store.path!r} is damaged: meta/episode_ends does not match the committed steps.")
    next_index = np.arange(1, steps + 1, dtype=np.int64)
    next_index[ends - 1] = steps + np.arange(episodes)
    return TransitionCache(
        obs_table=obs_table,
        action=action,
        reward=reward,
        terminated=store.read("data/terminated"),
        truncated=store.read("data/truncated"),
        next_index=next_index,
        episode_ends=ends,
        env_id=store.env_id,
        episodes=store.episode_attrs() if episode_attrs else {},
        images=ImageFrames(store) if store.image_keys() else None,
        stats=store.stats,
    )
