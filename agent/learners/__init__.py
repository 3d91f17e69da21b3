"""Learners, one file per algorithm, built by name from :data:`LEARNERS`."""
from __future__ import annotations

from agent.learners.bc import BC, BCConfig

# algo name -> (learner class, config class, config section name)
LEARNERS = {"bc": (BC, BCConfig)}


def make_learner(algo: str, cfg, obs_dim: int, act_dim: int, device: str = "cpu"):
    if algo not in LEARNERS:
        raise ValueError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(LEARNERS))}.")
    cls, _ = LEARNERS[algo]
    return cls(cfg, obs_dim, act_dim, device=device)
