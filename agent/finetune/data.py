"""Where fine-tuning batches come from: the online buffer, the offline (or real) data,
or a mixture, drawn as [K, B] with one index draw per source for a fused K-update.

The online buffer is an in-memory mirror of this run's episodes in the store: episodes
enter it whole, when they end (Cal-QL needs their returns-to-go), and a resumed run
rebuilds it from the store. ``offline_draws`` counts the offline rows ever sampled.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from agent.store import TransitionCache

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class OnlineBuffer:
    """Transitions of whole episodes in growable numpy arrays; ``extras`` are per-step
    learner fields (Cal-QL's ``mc_return``) computed when an episode is added."""

    def __init__(self, obs_dim: int, act_dim: int, prepare=None, capacity: int = 4096):
        self.size = 0
        self.prepare = prepare
        self.arrays: dict[str, np.ndarray] = {
            "obs": np.zeros((capacity, obs_dim), np.float32), "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, act_dim), np.float32), "reward": np.zeros(capacity, np.float32),
            "terminated": np.zeros(capacity, bool), "truncated": np.zeros(capacity, bool),
        }
        self.episode_returns: list[float] = []

    def _grow(self, need: int) -> None:
        capacity = next(iter(self.arrays.values())).shape[0]
        if need <= capacity:
            return
        new = max(need, 2 * capacity)
        for key, arr in self.arrays.items():
            grown = np.zeros((new, *arr.shape[1:]), arr.dtype)
            grown[: self.size] = arr[: self.size]
            self.arrays[key] = grown

    def add_episode(self, episode: dict[str, np.ndarray]) -> None:
        length = len(episode["reward"])
        fields = {
            "obs": episode["obs"], "action": episode["action"], "reward": episode["reward"],
            "next_obs": np.concatenate([episode["obs"][1:], np.asarray(episode["final_obs"])[None]]),
            "terminated": episode["terminated"], "truncated": episode["truncated"],
        }
        if self.prepare is not None:
            fields.update(self.prepare(SimpleNamespace(reward=np.asarray(episode["reward"]), episode_ends=np.array([length]),
                                                       terminated=np.asarray(episode["terminated"]))))
        for key, value in fields.items():
            if key not in self.arrays:
                value = np.asarray(value)
                self.arrays[key] = np.zeros((next(iter(self.arrays.values())).shape[0], *value.shape[1:]), value.dtype)
        self._grow(self.size + length)
        for key, value in fields.items():
            self.arrays[key][self.size: self.size + length] = value
        self.size += length
        self.episode_returns.append(float(np.sum(episode["reward"])))

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {key: arr[idx] for key, arr in self.arrays.items()}


class BatchSource:
    """Fused [K, B] batches: round(offline_ratio * B) rows of each minibatch from the
    offline rows ``offline_steps`` of ``offline``, the rest from ``online``. With
    ``mark_real`` every batch carries ``is_real`` (H2O: offline = real, online = sim)."""

    def __init__(self, online: OnlineBuffer, offline: TransitionCache | None, offline_steps: np.ndarray | None,
                 offline_ratio: float, rng: np.random.Generator, offline_extras: dict | None = None,
                 mark_real: bool = False, offline_probs: np.ndarray | None = None):
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must lie in [0, 1], got {offline_ratio}.")
        if offline_ratio > 0 and (offline is None or offline_steps is None or offline_steps.size == 0):
            raise ValueError(f"offline_ratio {offline_ratio} needs offline data; pass --data STORE (or --real-data for H2O).")
        self.online, self.offline, self.offline_steps = online, offline, offline_steps
        self.offline_ratio, self.rng = offline_ratio, rng
        self.offline_extras = offline_extras or {}
        self.mark_real = mark_real
        self.offline_draws = 0
        # weighted offline rows (agent.trajectory_weights): probabilities over offline_steps
        self.offline_cdf = None if offline_probs is None else np.cumsum(offline_probs)

    def split(self, batch_size: int) -> tuple[int, int]:
        n_off = int(round(self.offline_ratio * batch_size))
        return n_off, batch_size - n_off

    def ready(self) -> bool:
        """Whether a batch can be drawn: unless every row is offline, the online part needs
        at least one episode (whatever the batch size: a ratio below 1 leaves online rows
        in a large enough batch)."""
        return self.offline_ratio >= 1.0 or self.online.size > 0

    def sample(self, k: int, batch_size: int, offline_only: bool = False) -> dict[str, np.ndarray]:
        """A [K, B] batch ([B] when K = 1); ``offline_only`` for an offline phase."""
        n_off, n_on = (batch_size, 0) if offline_only else self.split(batch_size)
        parts = []
        if n_off:
            if self.offline_cdf is None:
                pos = self.rng.integers(0, self.offline_steps.size, size=k * n_off)
            else:
                pos = np.minimum(np.searchsorted(self.offline_cdf, self.rng.random(k * n_off) * self.offline_cdf[-1],
                                                 side="right"), self.offline_steps.size - 1)
            idx = self.offline_steps[pos]
            self.offline_draws += idx.size
            rows = {**self.offline.gather(idx), **{name: v[idx] for name, v in self.offline_extras.items()}}
            parts.append(({name: v.reshape(k, n_off, *v.shape[1:]) for name, v in rows.items()}, True))
        if n_on:
            idx = self.rng.integers(0, self.online.size, size=k * n_on)
            rows = self.online.gather(idx)
            parts.append(({name: v.reshape(k, n_on, *v.shape[1:]) for name, v in rows.items()}, False))
        keys = set.intersection(*(set(p) for p, _ in parts))
        batch = {name: np.concatenate([p[name] for p, _ in parts], axis=1) for name in sorted(keys)}
        if self.mark_real:
            batch["is_real"] = np.concatenate([np.full((k, p["obs"].shape[1]), real) for p, real in parts], axis=1)
        if k == 1:
            batch = {name: v[0] for name, v in batch.items()}
        return batch


def split_heldout(cache: TransitionCache, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Step indices of the training episodes and of the held-out ones (the last
    ``fraction`` of episodes, at least one when there are two or more)."""
    episodes = cache.num_episodes
    held = min(max(int(round(fraction * episodes)), 1 if fraction > 0 and episodes > 1 else 0), episodes - 1)
    boundary = int(cache.episode_starts[episodes - held]) if held else cache.num_steps
    return np.arange(boundary, dtype=np.int64), np.arange(boundary, cache.num_steps, dtype=np.int64)
