"""Decoded store arrays in RAM and the transition sampler.

Random minibatches are gathered from numpy arrays, never read from zarr chunks
(per-read overhead there is about half a millisecond). ``next_obs`` is exact at every
boundary: the observation table holds every step's observation followed by each
episode's final observation, and ``next_index`` points each step at its successor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.store.zarr_store import Store


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

    @property
    def num_steps(self) -> int:
        return self.action.shape[0]

    @property
    def obs(self) -> np.ndarray:
        return self.obs_table[: self.num_steps]

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


def load_transitions(store: Store) -> TransitionCache:
    """Decode the committed low-dimensional arrays of ``store`` into RAM, checking
    that they are finite (a store written by other tools may not be)."""
    if store.num_steps == 0:
        raise ValueError(f"store {str(store.path)!r} holds no committed episodes; collect or import data first.")
    steps, episodes = store.num_steps, store.num_episodes
    obs = store.read("data/obs")
    final_obs = store.read("final_obs/obs")
    arrays = {
        "data/obs": obs, "final_obs/obs": final_obs,
        "data/action": store.read("data/action"), "data/reward": store.read("data/reward"),
    }
    ends = store.episode_ends()
    for key, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            if key.startswith("data/"):
                where = f"step {row} (episode {int(np.searchsorted(ends, row, side='right'))})"
            else:
                where = f"episode {row}"
            raise ValueError(
                f"store {str(store.path)!r}: {key} holds NaN or inf at {where}; "
                f"the store is damaged or was written without validation, regenerate or repair it."
            )
    if ends.size != episodes or (ends.size and ends[-1] != steps) or np.any(np.diff(ends) <= 0):
        raise ValueError(f"store {str(store.path)!r} is damaged: meta/episode_ends does not match the committed steps.")
    next_index = np.arange(1, steps + 1, dtype=np.int64)
    next_index[ends - 1] = steps + np.arange(episodes)
    return TransitionCache(
        obs_table=np.concatenate([obs, final_obs]).astype(np.float32, copy=False),
        action=arrays["data/action"].astype(np.float32, copy=False),
        reward=arrays["data/reward"].astype(np.float32, copy=False),
        terminated=store.read("data/terminated").astype(bool),
        truncated=store.read("data/truncated").astype(bool),
        next_index=next_index,
        episode_ends=ends,
        env_id=store.env_id,
    )
