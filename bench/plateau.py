"""Why push plateaus: what a policy extracted from the medium data can reach at best, and
whether the pretrained critic can tell the data's good actions from its bad ones.

The medium push data is the scripted expert with a share of its actions replaced by uniform
random ones, so every transition can be labelled after the fact by asking the expert what it
would have done in that state. Two measurements follow (``bench/finetune.py --only plateau``):

* ``critic_discrimination(run)``: on a sample of data transitions, the mean advantage
  Q(s, a) - V(s) of the pretrained IQL critic on the expert's rows and on the random rows,
  Q(s, a_expert) - Q(s, a_random) at the random rows' states, and how far the policy's
  deterministic action is from the expert's (mean absolute error per dimension, cosine).
* ``filtered_bc(...)``: behaviour cloning (the library's Gaussian BC, the IQL actor's size)
  on the expert's rows only, an oracle filter no offline learner has: the ceiling of any
  policy extraction from these data with this actor and number of updates.
"""
from __future__ import annotations

import time

import numpy as np

ENV = "sims/ArmPush-v0"
MATCH = 1e-4  # a data action within this of the expert's (clipped to the bounds) is the expert's


def expert_labels(data: str, seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    """The store's transitions, the expert's action at every state, and which rows took it."""
    from agent.envs import make_env
    from agent.store import Store
    from agent.store.cache import load_transitions
    from sims.arm.experts import PushExpert

    cache = load_transitions(Store.open(data))
    env = make_env(ENV)
    env.reset(seed=seed)
    expert = PushExpert(env.unwrapped)
    expert_actions = np.clip(np.stack([expert(o) for o in cache.obs]), -1.0, 1.0).astype(np.float32)
    env.close()
    is_expert = np.abs(cache.action - expert_actions).max(1) < MATCH
    return cache, expert_actions, is_expert


def critic_discrimination(run: str, labelled: tuple, samples: int = 4000) -> dict:
    """``labelled``: what :func:`expert_labels` returns for the data."""
    import torch

    from agent.policy import load_policy

    cache, expert_actions, is_expert = labelled
    pick = np.sort(np.random.default_rng(0).choice(len(cache.obs), size=min(samples, len(cache.obs)), replace=False))
    obs, action, a_exp, mask = cache.obs[pick], cache.action[pick], expert_actions[pick], is_expert[pick]
    learner = load_policy(run, ENV, obs.shape[1], action.shape[1])
    with torch.no_grad():
        o = learner.normalizer(torch.as_tensor(obs))
        q = learner.critic(o, torch.as_tensor(action)).min(0).values.numpy()
        q_exp = learner.critic(o, torch.as_tensor(a_exp)).min(0).values.numpy()
        adv = q - learner.value(o).numpy()
    policy = np.stack([learner.act(x, deterministic=True) for x in obs])
    cos = (policy * a_exp).sum(1) / (np.linalg.norm(policy, axis=1) * np.linalg.norm(a_exp, axis=1) + 1e-9)
    return {"expert_share": float(is_expert.mean()), "adv_expert_rows": float(adv[mask].mean()),
            "adv_random_rows": float(adv[~mask].mean()), "adv_std": float(adv.std()),
            "q_expert_minus_random": float((q_exp - q)[~mask].mean()),
            "policy_abs_error": float(np.abs(policy - a_exp).mean()), "policy_cosine": float(cos.mean()),
            "shrunk_expert_abs_error": float(np.abs((1.0 - is_expert.mean()) * a_exp).mean())}


def filtered_bc(labelled: tuple, hidden: list[int], steps: int, batch: int, eval_every: int, eval_episodes: int,
                final_episodes: int, seed: int = 0) -> dict:
    """The library's Gaussian BC trained on the expert's rows only (``labelled``: what
    :func:`expert_labels` returns)."""
    import torch

    from agent.evaluate import evaluate
    from agent.learners.bc import BC, BCConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cache, _, is_expert = labelled
    rows = np.flatnonzero(is_expert)
    learner = BC(BCConfig(hidden_dims=hidden), cache.obs.shape[1], cache.action.shape[1])
    learner.fit_normalizer(cache.obs.mean(0), cache.obs.var(0))
    obs, action = torch.as_tensor(cache.obs), torch.as_tensor(cache.action)
    policy = lambda env: (lambda o: learner.act(o, deterministic=True))  # noqa: E731
    start, curve = time.time(), []
    for i in range(1, steps + 1):
        idx = torch.as_tensor(rng.choice(rows, size=batch))
        learner.update({"obs": obs[idx], "action": action[idx]})
        if i % eval_every == 0:
            curve.append((i, float(evaluate(ENV, policy, eval_episodes)["normalized_score"])))
    final = float(evaluate(ENV, policy, final_episodes)["normalized_score"])
    return {"rows": int(rows.size), "of": int(len(cache.obs)), "curve_steps": [c[0] for c in curve],
            "curve": [c[1] for c in curve], "final": final, "final_episodes": final_episodes,
            "minutes": (time.time() - start) / 60}
