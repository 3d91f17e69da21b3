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


def pretrained_calql(root, *, episodes: int, steps: int, batch_size: int, hidden_dims: list[int], num_critics: int,
                     layer_norm: bool, log_every: int | None = None, env: str = "sims/ArmReach-v0") -> dict:
    """A noisy-expert dataset of ``episodes`` episodes under ``root`` and a tiny Cal-QL run on it:
    ``{"data": store, "init": run directory}``."""
    from agent.collect import CollectConfig, collect
    from agent.pretrain import PretrainConfig, pretrain

    data = str(root / "data.zarr")
    collect(CollectConfig(env=env, policy="scripted", epsilon=0.3, episodes=episodes, seed=1, out=data), progress=False)
    cfg = PretrainConfig(data=data, algo="calql", out=str(root / "calql"), steps=steps, batch_size=batch_size,
                         eval_episodes=0, log_every=log_every or steps, checkpoint_every=steps)
    cfg.calql.hidden_dims, cfg.calql.num_critics, cfg.calql.layer_norm, cfg.calql.num_sampled_actions = \
        hidden_dims, num_critics, layer_norm, 2
    pretrain(cfg, progress=False)
    return {"data": data, "init": str(root / "calql")}


def pretrained_iql(root, data: str, *, steps: int, batch_size: int, hidden_dims: list[int]) -> str:
    """A tiny IQL run on the store ``data`` under ``root``; returns its run directory."""
    from agent.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data=data, algo="iql", out=str(root / "iql"), steps=steps, batch_size=batch_size, eval_episodes=0,
                         log_every=steps, checkpoint_every=steps)
    cfg.iql.hidden_dims = hidden_dims
    pretrain(cfg, progress=False)
    return str(root / "iql")
