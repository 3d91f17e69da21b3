"""What every fine-tuning run logs besides its losses (docs/algorithms.md, "Diagnostics"):
evaluation return and normalized score of the deterministic policy, Q calibration on
the states it visits, and the TD error on held-out offline data (unlearning shows up
there first)."""
from __future__ import annotations

import numpy as np
import torch

from agent.envs import make_env
from agent.evaluate import rollout, summarize


def discounted_returns(reward: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return of every step of one episode; a truncated tail counts as 0,
    so on truncated episodes this is a lower bound of the true return."""
    out = np.empty(len(reward), np.float64)
    running = 0.0
    for t in range(len(reward) - 1, -1, -1):
        running = float(reward[t]) + gamma * running
        out[t] = running
    return out


def evaluate_with_diagnostics(env_id: str, learner, episodes: int, seed: int = 10_000, env=None,
                              env_kwargs: dict | None = None) -> dict:
    """The deterministic policy's return, normalized score and success (as ``agent eval``)
    plus Q calibration: mean ensemble Q(s, a) over the visited (s, a) against their
    discounted Monte-Carlo return. ``env``: an env to reuse (a robot env, the one arm),
    left open; otherwise one is made from ``env_id`` and ``env_kwargs`` and closed."""
    own_env = env is None
    if env is None:
        env = make_env(env_id, **(env_kwargs or {}))
    obs_seen: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rewards: list[list[float]] = []

    def policy(obs):
        action = learner.act(obs, deterministic=True)
        obs_seen.append(np.asarray(obs, np.float32))
        actions.append(np.asarray(action, np.float32))
        return action

    def on_step(obs, action, reward, *rest):
        rewards[-1].append(float(reward))

    try:
        results = []
        for i in range(episodes):
            rewards.append([])
            results.append(rollout(env, policy, seed + i, on_step=on_step))
        result = summarize(env_id, results, getattr(env.unwrapped, "defines_success", False))
    finally:
        if own_env:
            env.close()
    critic, gamma = getattr(learner, "critic", None), getattr(learner.cfg, "gamma", 0.99)
    if critic is not None and obs_seen:
        mc = np.concatenate([discounted_returns(np.asarray(r), gamma) for r in rewards])
        obs = torch.as_tensor(np.stack(obs_seen), device=learner.device)
        action = torch.as_tensor(np.stack(actions), device=learner.device)
        with torch.no_grad():
            qs = critic(learner.normalizer(obs), action)
        result["q_visited"] = float(qs.mean())
        result["mc_return_visited"] = float(mc.mean())
        result["q_calibration_gap"] = result["q_visited"] - result["mc_return_visited"]
        result["ensemble_std_visited"] = float(qs.std(0).mean()) if qs.shape[0] > 1 else 0.0
    return result


def heldout_td_error(learner, batch: dict[str, torch.Tensor]) -> float:
    """Mean squared TD error of the ensemble mean on held-out offline transitions, with
    the target r + gamma (1 - terminated) min_e Q'_e(s', a'), a' ~ pi(s')."""
    critic, target = getattr(learner, "critic", None), getattr(learner, "critic_target", None)
    if critic is None or target is None:
        return float("nan")
    with torch.no_grad():
        obs, next_obs = learner.normalizer(batch["obs"]), learner.normalizer(batch["next_obs"])
        next_action, _ = learner.actor.sample(next_obs)
        y = batch["reward"] + learner.cfg.gamma * (1.0 - batch["terminated"].float()) * target(next_obs, next_action).min(0).values
        return float(((critic(obs, batch["action"]).mean(0) - y) ** 2).mean())
