"""Evaluation: roll a policy out for whole episodes and summarize."""
from __future__ import annotations

from typing import Callable

import numpy as np

from agent.envs import make_env, normalized_score

PolicyFn = Callable[[np.ndarray], np.ndarray]


def rollout(env, policy: PolicyFn, seed: int, on_step=None) -> dict:
    """One episode from ``env.reset(seed=seed)``; returns return, length, success."""
    obs, info = env.reset(seed=seed)
    total, length, done = 0.0, 0, False
    while not done:
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        if on_step is not None:
            on_step(obs, action, reward, next_obs, terminated, truncated, info)
        total += float(reward)
        length += 1
        obs, done = next_obs, terminated or truncated
    return {"return": total, "length": length, "success": bool(info.get("success", False))}


def summarize(env_id: str, episodes: list[dict], defines_success: bool) -> dict:
    returns = np.array([e["return"] for e in episodes], np.float64)
    scores = [normalized_score(env_id, r) for r in returns]
    out = {
        "env_id": env_id,
        "episodes": len(episodes),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_score": None if scores[0] is None else float(np.mean(scores)),
        "normalized_score_std": None if scores[0] is None else float(np.std(scores)),
        "success_rate": float(np.mean([e["success"] for e in episodes])) if defines_success else None,
        "length_mean": float(np.mean([e["length"] for e in episodes])),
        "returns": returns.tolist(),
    }
    return out


def evaluate(env_id: str, make_policy: Callable[[object], PolicyFn], episodes: int, seed: int = 10_000,
             env_kwargs: dict | None = None, progress: bool = False) -> dict:
    """Evaluate ``make_policy(env)`` for ``episodes`` episodes seeded ``seed + i``."""
    from tqdm import tqdm

    env = make_env(env_id, **(env_kwargs or {}))
    try:
        policy = make_policy(env)
        results = [rollout(env, policy, seed + i) for i in tqdm(range(episodes), desc=f"eval {env_id}", disable=None if progress else True, leave=False)]
        return summarize(env_id, results, getattr(env.unwrapped, "defines_success", False))
    finally:
        env.close()
