"""Trajectory segments: the unit that augmentations transform, guides judge and filters score.

A :class:`Segment` is a run of consecutive transitions cut from one stored episode,
with the simulator state before each step when the store has it. Cutting and writing
back are the only places that know the store's episode format.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Segment:
    """T consecutive transitions of one episode (arrays have a leading T axis)."""

    obs: np.ndarray          # (T, obs_dim) float64
    action: np.ndarray       # (T, act_dim) float64
    reward: np.ndarray       # (T,)
    next_obs: np.ndarray     # (T, obs_dim)
    terminated: np.ndarray   # (T,) bool
    success: np.ndarray      # (T,) bool: success after each step
    sim_state: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, dim), state before each step
    parent: int = -1         # episode id in the source store
    start: int = 0           # first step within that episode
    steps: list[dict] = field(default_factory=list)  # augmentations applied so far: {"name", "params"}

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def with_arrays(self, **arrays) -> "Segment":
        """A copy with some arrays replaced (the others are shared, so never edit them in place)."""
        return replace(self, **arrays)


def cut_segments(episode: dict[str, np.ndarray], parent: int, length: int) -> list[Segment]:
    """Split a stored episode into segments of ``length`` steps (0: the whole episode);
    the tail shorter than ``length`` is kept as a shorter segment when it has 2+ steps."""
    obs = np.asarray(episode["obs"], np.float64)
    total = obs.shape[0]
    next_obs = np.concatenate([obs[1:], np.asarray(episode["final_obs"], np.float64)[None]])
    sim = {k.removeprefix("sim_state/"): np.asarray(v, np.float64) for k, v in episode.items() if k.startswith("sim_state/")}
    length = total if length <= 0 else length
    out = []
    for start in range(0, total, length):
        end = min(start + length, total)
        if end - start < 2 and total >= 2:
            continue
        out.append(Segment(
            obs=obs[start:end], action=np.asarray(episode["action"][start:end], np.float64),
            reward=np.asarray(episode["reward"][start:end], np.float64), next_obs=next_obs[start:end],
            terminated=np.asarray(episode["terminated"][start:end], bool),
            success=np.zeros(end - start, bool), sim_state={k: v[start:end] for k, v in sim.items()},
            parent=parent, start=start))
    return out


def segment_to_episode(segment: Segment, sim_keys: list[str]) -> dict[str, np.ndarray]:
    """The store's episode format; a segment that does not end in termination is truncated."""
    n = len(segment)
    terminated = np.zeros(n, bool)
    terminated[-1] = bool(segment.terminated[-1])
    truncated = np.zeros(n, bool)
    truncated[-1] = not terminated[-1]
    episode = {
        "obs": segment.obs.astype(np.float32), "action": np.clip(segment.action, -1.0, 1.0).astype(np.float32),
        "reward": segment.reward.astype(np.float32), "terminated": terminated, "truncated": truncated,
        "final_obs": segment.next_obs[-1].astype(np.float32), "success": bool(segment.success[-1]),
    }
    for key in sim_keys:
        if key not in segment.sim_state:
            raise ValueError(f"the output store keeps sim_state/{key} but the augmented segment has no such state; "
                             f"write to a store without sim_state or use augmentations that keep it.")
        episode[f"sim_state/{key}"] = segment.sim_state[key]
    return episode
