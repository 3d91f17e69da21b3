"""Minibatches from a :class:`TransitionCache`: transitions or fixed-length windows,
filtered by episode attributes, mixed over sources, as numpy arrays or as torch
tensors on a device (the whole cache is copied there once; a batch is then an index
gather on the device, with no host round trip).

Windows of length L never cross an episode boundary. A window may start up to
``pad_before`` steps before its episode and end up to ``pad_after`` steps after it;
those positions repeat the edge step and are flagged in ``pad_mask`` (True = padding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.store.cache import TransitionCache

_STEP_FIELDS = ("action", "reward", "terminated", "truncated")


@dataclass
class _Pool:
    """The steps one mixture component draws from."""

    weight: float
    steps: np.ndarray          # step indices (transitions)
    starts: np.ndarray         # first step of each episode
    lengths: np.ndarray        # steps of each episode


class Sampler:
    """Draw batches from ``cache``.

    ``where`` keeps episodes whose attributes match (``{"split": "train"}``);
    ``mixture`` gives each source a share of every batch (``{"scripted": 0.5,
    "online": 0.5}``; shares are normalized, counts split exactly); ``device``
    (``"cpu"``, ``"cuda"``) returns torch tensors gathered on that device.
    """

    def __init__(self, cache: TransitionCache, *, where: dict | None = None, mixture: dict[str, float] | None = None,
                 mixture_by: str = "source", device: str | None = None, seed: int = 0):
        self.cache = cache
        self.device = device
        self.rng = np.random.default_rng(seed)
        episodes = cache.select_episodes(where)
        if episodes.size == 0:
            raise ValueError(f"no episode matches {where}; the store's episodes have "
                             f"{ {k: sorted(set(map(str, v)))[:8] for k, v in cache.episodes.items() if k in (where or {})} }.")
        if mixture:
            if mixture_by not in cache.episodes:
                raise ValueError(f"cannot mix by {mixture_by!r}: episode attributes are {', '.join(cache.episodes)}.")
            if any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
                raise ValueError(f"mixture weights must be >= 0 and sum to more than 0, got {mixture}.")
            labels = np.asarray(cache.episodes[mixture_by]).astype(str)[episodes]
            groups = {name: episodes[labels == name] for name in mixture}
            empty = [name for name, ids in groups.items() if ids.size == 0 and mixture[name] > 0]
            if empty:
                raise ValueError(f"mixture component(s) {empty} match no episode; {mixture_by} values present: "
                                 f"{sorted(set(labels.tolist()))}.")
            total = float(sum(mixture.values()))
            self.pools = [self._pool(ids, w / total) for name, w in mixture.items() if w > 0 for ids in [groups[name]]]
        else:
            self.pools = [self._pool(episodes, 1.0)]
        self._everything = not where and not mixture
        self._torch = _TorchTables(cache, self.pools, device, seed) if device is not None else None

    def _pool(self, episode_ids: np.ndarray, weight: float) -> _Pool:
        starts = self.cache.episode_starts[episode_ids]
        lengths = self.cache.episode_ends[episode_ids] - starts
        steps = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if episode_ids.size else np.zeros(0, np.int64)
        return _Pool(weight, steps.astype(np.int64), starts.astype(np.int64), lengths.astype(np.int64))

    def _counts(self, batch_size: int) -> list[int]:
        shares = np.array([p.weight for p in self.pools]) * batch_size
        counts = np.floor(shares).astype(int)
        for i in np.argsort(counts - shares)[: batch_size - counts.sum()]:
            counts[i] += 1
        return counts.tolist()

    # -- transitions -------------------------------------------------------------------
    def transition_indices(self, batch_size: int, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or self.rng
        if self._everything:
            return rng.integers(0, self.cache.num_steps, size=batch_size)
        parts = [p.steps[rng.integers(0, p.steps.size, size=n)] for p, n in zip(self.pools, self._counts(batch_size)) if n]
        return np.concatenate(parts)

    def transitions(self, batch_size: int, rng: np.random.Generator | None = None, images: bool = False) -> dict:
        """obs, action, reward, next_obs, terminated, truncated (and ``images/<cam>``,
        ``next_images/<cam>`` when asked), each with a leading batch dimension."""
        if self._torch is not None:
            return self._torch.transitions(batch_size, self._counts(batch_size), self._everything)
        idx = self.transition_indices(batch_size, rng)
        batch = self.cache.gather(idx)
        if images:
            self._add_images(batch, idx, self.cache.next_index[idx])
        return batch

    # -- windows -----------------------------------------------------------------------
    def window_indices(self, batch_size: int, length: int, pad_before: int = 0, pad_after: int = 0,
                       rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) step indices clipped to their episode, and the (B, L) pad mask."""
        rng = rng or self.rng
        if length < 1 or pad_before < 0 or pad_after < 0:
            raise ValueError(f"windows need length >= 1 and padding >= 0, got {length}, {pad_before}, {pad_after}.")
        rows, masks = [], []
        for pool, n in zip(self.pools, self._counts(batch_size)):
            if not n:
                continue
            anchors = np.maximum(pool.lengths + pad_before + pad_after - length + 1, 0)
            cum = np.cumsum(anchors)
            if cum[-1] == 0:
                raise ValueError(f"no episode is long enough for windows of {length} steps with padding "
                                 f"{pad_before} before and {pad_after} after (longest: {int(pool.lengths.max())}).")
            k = rng.integers(0, cum[-1], size=n)
            e = np.searchsorted(cum, k, side="right")
            first = pool.starts[e] - pad_before + (k - (cum[e] - anchors[e]))
            raw = first[:, None] + np.arange(length)
            start, last = pool.starts[e][:, None], (pool.starts[e] + pool.lengths[e] - 1)[:, None]
            rows.append(np.clip(raw, start, last))
            masks.append((raw < start) | (raw > last))
        return np.concatenate(rows), np.concatenate(masks)

    def windows(self, batch_size: int, length: int, pad_before: int = 0, pad_after: int = 0,
                rng: np.random.Generator | None = None, images: bool = False) -> dict:
        """Fields of :meth:`transitions` shaped (B, L, ...), plus ``pad_mask`` (B, L)."""
        if self._torch is not None:
            idx, mask = self.window_indices(batch_size, length, pad_before, pad_after, rng)
            return self._torch.windows(idx, mask)
        idx, mask = self.window_indices(batch_size, length, pad_before, pad_after, rng)
        batch = self.cache.gather(idx)
        batch["pad_mask"] = mask
        if images:
            self._add_images(batch, idx, self.cache.next_index[idx])
        return batch

    def _add_images(self, batch: dict, rows: np.ndarray, next_rows: np.ndarray) -> None:
        frames = self.cache.images
        if frames is None:
            raise ValueError("this store has no image keys; sample without images=True.")
        for cam in frames.cameras:
            shape = tuple(frames.store.array_specs[f"data/images/{cam}"]["row"])
            batch[f"images/{cam}"] = frames.gather(cam, rows.ravel()).reshape(*rows.shape, *shape)
            batch[f"next_images/{cam}"] = frames.gather(cam, next_rows.ravel()).reshape(*rows.shape, *shape)


class _TorchTables:
    """The cache as device tensors; batches are drawn with a device generator."""

    def __init__(self, cache: TransitionCache, pools: list[_Pool], device: str, seed: int):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu' or None.")
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.obs_table = to(cache.obs_table)
        self.fields = {name: to(getattr(cache, name)) for name in _STEP_FIELDS}
        self.next_index = to(cache.next_index)
        self.num_steps = cache.num_steps
        self.pool_steps = [to(p.steps) for p in pools]
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _gather(self, idx) -> dict:
        out = {"obs": self.obs_table[idx], "next_obs": self.obs_table[self.next_index[idx]]}
        for name, table in self.fields.items():
            out[name] = table[idx]
        return out

    def transitions(self, batch_size: int, counts: list[int], everything: bool) -> dict:
        torch = self.torch
        if everything:
            idx = torch.randint(0, self.num_steps, (batch_size,), device=self.device, generator=self.generator)
        else:
            idx = torch.cat([steps[torch.randint(0, steps.numel(), (n,), device=self.device, generator=self.generator)]
                             for steps, n in zip(self.pool_steps, counts) if n])
        return self._gather(idx)

    def windows(self, idx: np.ndarray, mask: np.ndarray) -> dict:
        t_idx = self.torch.from_numpy(idx).to(self.device, non_blocking=True)
        out = self._gather(t_idx)
        out["pad_mask"] = self.torch.from_numpy(mask).to(self.device, non_blocking=True)
        return out
