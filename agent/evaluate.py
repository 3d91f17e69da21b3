"""Evaluation: roll a policy out for whole episodes and summarize."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from agent.config import option
from agent.envs import make_env, normalized_score

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalConfig:
    run: str = option("", "run directory (or checkpoint file) whose policy is evaluated")
    policy: str = option("", "instead of --run: 'scripted' or 'random'")
    env: str = option("", "env id; empty means the env the run was trained for (a run on an imported dataset needs one)")
    episodes: int = option(10, "episodes to roll out", min=1)
    seed: int = option(10_000, "episode i is reset with seed + i", min=0)
    deterministic: bool = option(True, "act with the policy's mean action")
    video: str = option("", "write the first video_episodes episodes to this .mp4 (rendered headless)")
    video_episodes: int = option(1, "how many episodes --video shows", min=1)


def env_sizes(env_id: str, env_kwargs: dict | None = None) -> tuple[int, int]:
    """(observation size, action size) of ``env_id``; an unknown id is refused with the known ones."""
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    finally:
        env.close()


def rollout(env, policy: PolicyFn, seed: int, on_step=None, on_reset=None) -> dict:
    """One episode from ``env.reset(seed=seed)``; returns return, length, success."""
    obs, info = env.reset(seed=seed)
    if on_reset is not None:
        on_reset(obs, info)
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
             env_kwargs: dict | None = None, progress: bool = False, video: str = "", video_episodes: int = 1) -> dict:
    """Evaluate ``make_policy(env)`` for ``episodes`` episodes seeded ``seed + i``; with
    ``video`` the first ``video_episodes`` episodes are rendered to that .mp4 file."""
    from tqdm import tqdm

    if video and not video.endswith(".mp4"):
        raise ValueError(f"--video must name an .mp4 file, got {video!r}.")
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        policy = make_policy(env)
        frames: list[np.ndarray] = []
        results = []
        for i in tqdm(range(episodes), desc=f"eval {env_id}", disable=None if progress else True, leave=False):
            if video and i < video_episodes:
                on_step = lambda *step: frames.append(env.unwrapped.render())  # noqa: E731
                results.append(rollout(env, policy, seed + i, on_step=on_step, on_reset=on_step))
            else:
                results.append(rollout(env, policy, seed + i))
        out = summarize(env_id, results, getattr(env.unwrapped, "defines_success", False))
        if video:
            from agent.video import env_fps, write_mp4

            out["video"] = write_mp4(frames, video, env_fps(env))
        return out
    finally:
        env.close()
