"""What every fine-tuning run logs besides its losses (docs/algorithms.md, "Diagnostics"):
evaluation return and normalized score of the deterministic policy, Q calibration on
the states it visits, and the TD error on held-out offline data (unlearning shows up
there first)."""
from __future__ import annotations

import numpy as np
import torch

from agent.envs import make_env
from agent.evaluate import rollout, summarize


def bootstrapped_returns(reward: np.ndarray, gamma: float, tail_value: float = 0.0) -> np.ndarray:
    """Discounted return of every step of one episode, the value after its last step taken
    as ``tail_value``: 0 for an episode that terminated, the critic's value of its last state
    for one cut by a time limit (the critic bootstraps through truncation, so a return that
    drops the tail would understate Q by gamma^(T-t) V(s_T))."""
    out = np.empty(len(reward), np.float64)
    running = float(tail_value)
    for t in range(len(reward) - 1, -1, -1):
        running = float(reward[t]) + gamma * running
        out[t] = running
    return out


def _ensemble_q(learner, obs: np.ndarray, action: np.ndarray) -> torch.Tensor:
    """Every member's Q at the raw (s, a) rows: [E, N], without gradients."""
    with torch.no_grad():
        return learner.critic(learner.normalizer(torch.as_tensor(np.asarray(obs, np.float32), device=learner.device)),
                              torch.as_tensor(np.asarray(action, np.float32), device=learner.device))


def q_calibration(learner, episodes: list[dict]) -> dict[str, float]:
    """Q calibration on the visited (s, a): ``q_visited``, the ensemble's mean Q, against
    ``return_bootstrapped_visited``, their discounted return with a truncated episode's tail
    valued by the ensemble at its last state and the policy's deterministic action there.
    Each episode holds ``obs`` [T, d], ``action`` [T, a], ``reward`` [T], ``final_obs`` [d]
    and ``truncated`` (cut by a time limit, not terminated). Empty without a critic."""
    gamma = getattr(learner.cfg, "gamma", 0.99)
    if getattr(learner, "critic", None) is None or not episodes:
        return {}
    returns = []
    for e in episodes:
        tail = 0.0
        if e["truncated"]:
            final = np.asarray(e["final_obs"], np.float32)[None]
            tail = float(_ensemble_q(learner, final, np.asarray(learner.act(final[0], deterministic=True))[None]).mean())
        returns.append(bootstrapped_returns(np.asarray(e["reward"]), gamma, tail))
    qs = _ensemble_q(learner, np.concatenate([e["obs"] for e in episodes]), np.concatenate([e["action"] for e in episodes]))
    out = {"q_visited": float(qs.mean()), "return_bootstrapped_visited": float(np.concatenate(returns).mean()),
           "ensemble_std_visited": float(qs.std(0).mean()) if qs.shape[0] > 1 else 0.0}
    out["q_calibration_gap_bootstrapped"] = out["q_visited"] - out["return_bootstrapped_visited"]
    return out


def _no_time_limit(env_id: str) -> ValueError:
    return ValueError(f"--calibration-horizon needs an env with a time_limit argument (the sims/Arm* tasks); {env_id} "
                      f"has none: set --calibration-horizon 0.")


def long_calibration(env_id: str, learner, env_kwargs: dict, horizon: int, episodes: int, seed: int,
                     limit: int) -> dict[str, float]:
    """Q calibration against rollouts run on past the task's time limit ``limit`` (T): the
    policy's episodes run for ``horizon`` steps, and each state of the first T is compared with
    its discounted return over the rest of the rollout. What the rollout leaves out is at most
    ``calibration_tail_weight`` = gamma^(horizon - T) of the return, so unlike the bootstrapped
    return this reference does not inherit the critic's error at the last state."""
    gamma = getattr(learner.cfg, "gamma", 0.99)
    if getattr(learner, "critic", None) is None or episodes <= 0:
        return {}
    if horizon <= limit:
        raise ValueError(f"--calibration-horizon must exceed {env_id}'s time limit of {limit} steps, found {horizon}.")
    try:
        env = make_env(env_id, **env_kwargs, time_limit=horizon)
    except (TypeError, ValueError):  # an env that takes no time_limit refuses it one way or the other
        raise _no_time_limit(env_id) from None
    obs_all: list[np.ndarray] = []
    act_all: list[np.ndarray] = []
    ret_all = []

    def policy(obs):
        action = np.asarray(learner.act(obs, deterministic=True), np.float32)
        obs_all.append(np.asarray(obs, np.float32))
        act_all.append(action)
        return action

    try:
        for i in range(episodes):
            rewards: list[float] = []
            start = len(obs_all)
            rollout(env, policy, seed + i, on_step=lambda *step: rewards.append(float(step[2])))
            keep = min(limit, len(rewards))
            del obs_all[start + keep:], act_all[start + keep:]  # the states past T only lend their rewards
            ret_all.append(bootstrapped_returns(np.asarray(rewards), gamma)[:keep])
    finally:
        env.close()
    qs = _ensemble_q(learner, np.stack(obs_all), np.stack(act_all))
    out = {"q_long_visited": float(qs.mean()), "return_long_visited": float(np.concatenate(ret_all).mean()),
           "calibration_tail_weight": float(gamma ** (horizon - limit))}
    out["q_calibration_gap_long"] = out["q_long_visited"] - out["return_long_visited"]
    return out


def evaluate_with_diagnostics(env_id: str, learner, episodes: int, seed: int = 10_000, env=None,
                              env_kwargs: dict | None = None, calibration_horizon: int = 0,
                              calibration_episodes: int = 3) -> dict:
    """The deterministic policy's return, normalized score and success (as ``agent eval``)
    plus :func:`q_calibration` on the episodes it ran, and with ``calibration_horizon`` > 0
    :func:`long_calibration` on ``calibration_episodes`` more. ``env``: an env to reuse (a
    robot env, the one arm), left open; otherwise one is made from ``env_id`` and ``env_kwargs`` and closed."""
    own_env = env is None
    if env is None:
        env = make_env(env_id, **(env_kwargs or {}))
    ran: list[dict] = []

    def policy(obs):
        action = learner.act(obs, deterministic=True)
        ran[-1]["obs"].append(np.asarray(obs, np.float32))
        ran[-1]["action"].append(np.asarray(action, np.float32))
        return action

    def on_step(obs, action, reward, next_obs, terminated, truncated, info):
        ran[-1]["reward"].append(float(reward))
        ran[-1].update(final_obs=np.asarray(next_obs, np.float32), truncated=bool(truncated and not terminated))

    try:
        results = []
        for i in range(episodes):
            ran.append({"obs": [], "action": [], "reward": []})
            results.append(rollout(env, policy, seed + i, on_step=on_step))
        result = summarize(env_id, results, getattr(env.unwrapped, "defines_success", False))
        limit = getattr(env.unwrapped, "time_limit", None)  # the task's own limit, for the long rollouts
    finally:
        if own_env:
            env.close()
    result.update(q_calibration(learner, [{**e, "obs": np.stack(e["obs"]), "action": np.stack(e["action"])}
                                          for e in ran if e["reward"]]))
    if calibration_horizon > 0:
        if limit is None:
            raise _no_time_limit(env_id)
        result.update(long_calibration(env_id, learner, env_kwargs or {}, calibration_horizon, calibration_episodes, seed,
                                       int(limit)))
    return result


def heldout_td_error(learner, batch: dict[str, torch.Tensor]) -> float:
    """Mean squared TD error of the ensemble mean on held-out offline transitions, with
    the target the learner's critic regresses to: r + gamma (1 - terminated) min_e Q'_e(s', a'),
    a' ~ pi(s'), or r + gamma (1 - terminated) V(s') for IQL, whose critic bootstraps from its value net."""
    critic, target = getattr(learner, "critic", None), getattr(learner, "critic_target", None)
    if critic is None or target is None:
        return float("nan")
    with torch.no_grad():
        obs, next_obs = learner.normalizer(batch["obs"]), learner.normalizer(batch["next_obs"])
        if learner.algo == "iql":
            next_value = learner.value(next_obs)
        else:
            next_action, _ = learner.actor.sample(next_obs)
            next_value = target(next_obs, next_action).min(0).values
        y = batch["reward"] + learner.cfg.gamma * (1.0 - batch["terminated"].float()) * next_value
        return float(((critic(obs, batch["action"]).mean(0) - y) ** 2).mean())
