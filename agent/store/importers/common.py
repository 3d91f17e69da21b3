"""What every importer returns, and the one function that writes it into a store."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from agent.store.zarr_store import EpisodeAttrs, Store


@dataclass
class ImportedEpisode:
    obs: np.ndarray            # (T, obs_dim)
    action: np.ndarray         # (T, act_dim)
    reward: np.ndarray         # (T,)
    final_obs: np.ndarray      # (obs_dim,): the observation after the last step
    terminated: bool           # the episode ended in a terminal state
    success: bool = False
    sim_state: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)   # quality, split, seed overrides

    def as_store_episode(self) -> dict[str, Any]:
        length = self.obs.shape[0]
        flags = np.zeros(length, bool)
        terminated, truncated = flags.copy(), flags.copy()
        (terminated if self.terminated else truncated)[-1] = True
        return {"obs": np.asarray(self.obs, np.float32), "action": np.asarray(self.action, np.float32),
                "reward": np.asarray(self.reward, np.float32), "terminated": terminated, "truncated": truncated,
                "final_obs": np.asarray(self.final_obs, np.float32), "success": bool(self.success),
                **{f"sim_state/{k}": np.asarray(v, np.float64) for k, v in self.sim_state.items()}}


@dataclass
class ImportedDataset:
    env_id: str
    episodes: list[ImportedEpisode]
    obs_names: list[str] = field(default_factory=list)     # the keys concatenated into obs, in order
    action_low: np.ndarray | None = None                   # bounds when the format states them
    action_high: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)    # what the importer repaired or dropped
    env_kwargs: dict = field(default_factory=dict)


class Reader(Protocol):
    """One per format: read ``src`` into memory, or raise ValueError naming the problem."""

    def __call__(self, src: Path, **options: Any) -> ImportedDataset: ...


def write_store(data: ImportedDataset, out: str | Path, *, fmt: str, src: str, quality: str = "",
                env_id: str | None = None) -> dict:
    if not data.episodes:
        raise ValueError(f"{src!r} holds no complete episode to import.")
    obs_dim = data.episodes[0].obs.shape[1]
    act_dim = data.episodes[0].action.shape[1]
    actions = np.concatenate([e.action for e in data.episodes])
    low, high = data.action_low, data.action_high
    if low is None or high is None:
        # formats that do not state bounds: [-1, 1] when the data stays inside, else unbounded
        inside = actions.size == 0 or (actions.min() >= -1.0 and actions.max() <= 1.0)
        low = np.full(act_dim, -1.0 if inside else -np.inf)
        high = np.full(act_dim, 1.0 if inside else np.inf)
    sim_dims = {k: int(np.asarray(v).shape[1]) for k, v in data.episodes[0].sim_state.items()}
    store = Store.create(
        out, env_id=env_id or data.env_id,
        observation_space=spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32), (act_dim,), np.float32),
        env_kwargs=data.env_kwargs, sim_state_dims=sim_dims or None,
        extra_attrs={"imported_from": {"format": fmt, "path": str(src), "obs_names": data.obs_names,
                                       "notes": _jsonable(data.notes)}},
    )
    try:
        for i, ep in enumerate(data.episodes):
            attrs = EpisodeAttrs(source="imported", quality=str(ep.attrs.get("quality", quality)),
                                 split=str(ep.attrs.get("split", "train")), seed=int(ep.attrs.get("seed", -1)),
                                 generator_hash=f"{fmt}:{Path(str(src)).name}")
            store.append_episode(ep.as_store_episode(), attrs)
        return {"store": str(out), "format": fmt, "episodes": store.num_episodes, "steps": store.num_steps,
                "obs_dim": obs_dim, "action_dim": act_dim, "notes": _jsonable(data.notes)}
    finally:
        store.close()


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def bounds_or_none(values) -> np.ndarray | None:
    arr = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return None if np.isnan(arr).any() else arr


def box_from_json(text_or_dict, what: str, where: str) -> dict:
    """A Box space in the JSON form Minari and our exporter write."""
    space = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(space, dict) or space.get("type") != "Box":
        kind = space.get("type") if isinstance(space, dict) else type(space).__name__
        raise ValueError(f"{where}: {what} is a {kind} space; only flat Box spaces are imported.")
    shape = space.get("shape") or []
    if len(shape) != 1:
        raise ValueError(f"{where}: {what} has shape {shape}; only flat (1-d) Box spaces are imported.")
    return space


def check_numeric(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise ValueError(f"{where}: {key} has dtype {arr.dtype}; only numeric arrays are imported.")
    return arr


def episodes_from_flags(obs, action, reward, terminal, timeout, next_obs=None, sim_state=None) -> tuple[list[ImportedEpisode], dict]:
    """Cut flat D4RL-style arrays into episodes.

    An episode ends at a terminal, a timeout, or (when next observations are given) a
    step whose next observation is not the following step's observation: the mark of a
    misplaced or missing timeout. A step with both flags is terminal. Without next
    observations the last step of a truncated episode has no successor; it is dropped
    and its observation becomes the final one (the usual shift would borrow the next
    episode's first observation instead).
    """
    n = obs.shape[0]
    terminal = np.asarray(terminal, bool)
    both = int((np.asarray(timeout, bool) & terminal).sum())
    timeout = np.asarray(timeout, bool) & ~terminal
    notes = {"both_flags": both, "split_at_discontinuity": 0,
             "dropped_last_steps": 0, "dropped_episodes": 0}
    ends = terminal | timeout
    if next_obs is not None and n > 1:
        jump = ~np.all(np.isclose(next_obs[:-1], obs[1:], rtol=1e-5, atol=1e-6), axis=1) & ~ends[:-1]
        notes["split_at_discontinuity"] = int(jump.sum())
        timeout = timeout.copy()
        timeout[:-1] |= jump
        ends = terminal | timeout
    last = np.flatnonzero(ends).tolist()
    if not last or last[-1] != n - 1:
        last.append(n - 1)  # a trailing partial episode is truncated
    episodes = []
    start = 0
    for end in last:
        rows = slice(start, end + 1)
        term = bool(terminal[end])
        sim = {k: v[rows] for k, v in (sim_state or {}).items()}
        if next_obs is not None:
            episodes.append(ImportedEpisode(obs[rows], action[rows], reward[rows], next_obs[end], term, sim_state=sim))
        elif term:
            # the successor of a terminal step is never bootstrapped from; its own observation stands in
            episodes.append(ImportedEpisode(obs[rows], action[rows], reward[rows], obs[end], True, sim_state=sim))
        elif end - start >= 1:
            keep = slice(start, end)
            episodes.append(ImportedEpisode(obs[keep], action[keep], reward[keep], obs[end], False,
                                            sim_state={k: v[keep] for k, v in (sim_state or {}).items()}))
            notes["dropped_last_steps"] += 1
        else:
            notes["dropped_episodes"] += 1
        start = end + 1
    return episodes, notes


def drop_last_frame(obs, action, reward, success: bool = False, attrs: dict | None = None) -> ImportedEpisode | None:
    """Frame-based formats (LeRobot, diffusion_policy) hold T frames and no successor of
    the last: the episode becomes T-1 truncated transitions ending in the last frame's
    observation."""
    if obs.shape[0] < 2:
        return None
    return ImportedEpisode(obs[:-1], action[:-1], reward[:-1], obs[-1], False, success=success, attrs=attrs or {})
