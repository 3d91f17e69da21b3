"""Small builders shared by the tests."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

OBS_SPACE = spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def make_episode(rng, length: int, end: str = "truncated", obs_dim: int = 3, act_dim: int = 2) -> dict:
    ep = {
        "obs": rng.normal(size=(length, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "terminated": np.zeros(length, bool),
        "truncated": np.zeros(length, bool),
        "final_obs": rng.normal(size=obs_dim).astype(np.float32),
    }
    if end in ("terminated", "truncated"):
        ep[end][-1] = True
    return ep
