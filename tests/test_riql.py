"""RIQL's changes to IQL against plain formulations: the Huber TD loss, the ensemble
quantile in the value target and the advantage; plain IQL unchanged."""
from __future__ import annotations

import numpy as np
import torch

from agent.learners import make_learner
from agent.learners.iql import IQLConfig, actor_loss, critic_loss, value_loss
from agent.learners.riql import RIQLConfig
from test_learners import ACT, OBS, batch


def plain_huber(d: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(d) <= delta, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))


def test_huber_critic_loss_matches_the_plain_formula():
    torch.manual_seed(0)
    cfg = RIQLConfig(hidden_dims=[16], huber_delta=0.3)
    learner = make_learner("riql", cfg, OBS, ACT)
    b = batch()
    loss, _ = critic_loss(learner.critic, learner.value, b, cfg)
    with torch.no_grad():
        y = (b["reward"] + cfg.gamma * (~b["terminated"]).float() * learner.value(b["next_obs"])).numpy()
        qs = learner.critic(b["obs"], b["action"]).numpy()
    np.testing.assert_allclose(loss.item(), plain_huber(qs - y[None], 0.3).mean(), rtol=1e-5)


def test_value_target_and_advantage_read_the_ensemble_quantile():
    torch.manual_seed(0)
    cfg = RIQLConfig(hidden_dims=[16], num_critics=5, quantile=0.25, expectile=0.8, beta=2.0)
    learner = make_learner("riql", cfg, OBS, ACT)
    b = batch()
    with torch.no_grad():
        qs = learner.critic_target(b["obs"], b["action"]).numpy()
        q25 = np.quantile(qs, 0.25, axis=0)  # numpy's default is the same linear interpolation
        v = learner.value(b["obs"]).numpy()
    u = q25 - v
    expected_v = (np.where(u < 0, 0.2, 0.8) * u**2).mean()
    np.testing.assert_allclose(value_loss(learner.value, learner.critic_target, b, cfg)[0].item(), expected_v, rtol=1e-5)
    _, metrics = actor_loss(learner.actor, learner.value, learner.critic_target, b, cfg)
    np.testing.assert_allclose(metrics["adv_weight"].item(), np.minimum(np.exp(2.0 * u), cfg.max_weight).mean(), rtol=1e-5)
    # plain IQL still reads the min
    iql = IQLConfig(hidden_dims=[16], num_critics=5, expectile=0.8)
    u_min = qs.min(0) - v
    np.testing.assert_allclose(value_loss(learner.value, learner.critic_target, b, iql)[0].item(),
                               (np.where(u_min < 0, 0.2, 0.8) * u_min**2).mean(), rtol=1e-5)


def test_riql_defaults_are_the_papers():
    cfg = RIQLConfig()
    assert (cfg.num_critics, cfg.q_aggregate, cfg.quantile, cfg.critic_loss, cfg.huber_delta) == (5, "quantile", 0.25, "huber", 1.0)
    assert (IQLConfig().q_aggregate, IQLConfig().critic_loss) == ("min", "mse")
