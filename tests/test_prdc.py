"""PRDC's actor loss against a plain formulation with an exhaustive nearest-neighbour
search, and its fast search (KD-tree) against the plain one."""
from __future__ import annotations

import numpy as np
import torch

from agent.learners.prdc import PRDC, PRDCConfig, nearest_exhaustive
from agent.store import TransitionCache
from test_learners import ACT, OBS, batch


def dataset(rng, n=500):
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    action = rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32)
    ends = np.array([n], np.int64)
    return TransitionCache(obs_table=np.concatenate([obs, obs[-1:]]), action=action, reward=np.zeros(n, np.float32),
                           terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
                           next_index=np.append(np.arange(1, n), n), episode_ends=ends, env_id="test/none-v0")


def test_actor_loss_matches_the_plain_formulation_with_exhaustive_search():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cache = dataset(rng)
    learner = PRDC(PRDCConfig(hidden_dims=[16], beta=0.7, alpha=2.5), OBS, ACT)
    learner.fit_normalizer(cache.obs.mean(0), cache.obs.var(0))
    assert learner.prepare(cache) == {}
    b = batch()
    b["obs"] = learner.normalizer(b["obs"])
    loss, metrics = learner.actor_objective(b)
    with torch.no_grad():  # the plain way: every dataset pair, numpy distances
        pi = learner.actor(b["obs"])
        keys = np.concatenate([0.7 * learner.normalizer(torch.as_tensor(cache.obs)).numpy(), cache.action], 1)
        query = np.concatenate([0.7 * b["obs"].numpy(), pi.numpy()], 1)
        nn = np.argmin(((query[:, None] - keys[None]) ** 2).sum(-1), axis=1)
        q = learner.critic(b["obs"], pi)[0]
        expected = -2.5 / q.abs().mean() * q.mean() + ((pi - torch.as_tensor(cache.action[nn])) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["nn_distance"], torch.as_tensor(np.sqrt(((query - keys[nn]) ** 2).sum(-1)).mean(), dtype=torch.float32))
    # the gradient reaches the actor through Q and the distance to the (fixed) neighbour's action only
    loss.backward()
    assert all(p.grad is not None for p in learner.actor.parameters())


def test_kdtree_and_exhaustive_search_find_the_same_neighbours_and_a_large_beta_picks_the_same_state():
    rng = np.random.default_rng(1)
    keys = torch.as_tensor(rng.normal(size=(3000, 6)), dtype=torch.float32)
    query = torch.as_tensor(rng.normal(size=(200, 6)), dtype=torch.float32)
    from scipy.spatial import cKDTree

    plain = torch.cdist(query, keys).argmin(1)
    torch.testing.assert_close(nearest_exhaustive(keys, query), plain)
    torch.testing.assert_close(torch.as_tensor(cKDTree(keys.numpy()).query(query.numpy(), k=1)[1]), plain)
    cache = dataset(rng, 300)
    learner = PRDC(PRDCConfig(hidden_dims=[16], beta=1000.0), OBS, ACT)
    learner.fit_normalizer(np.zeros(OBS), np.ones(OBS))
    learner.prepare(cache)
    obs = torch.as_tensor(cache.obs[:50])
    target, _ = learner.nearest_actions(obs, torch.zeros(50, ACT), torch.zeros(50, ACT))
    torch.testing.assert_close(target, torch.as_tensor(cache.action[:50]))  # TD3+BC's constraint in the limit
