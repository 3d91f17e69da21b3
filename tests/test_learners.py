"""Learners: one contract run over every algorithm, and each loss checked against an
independent plain-tensor formulation written here."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from agent.learners import LEARNERS, make_learner
from agent.learners.calql import returns_to_go
from agent.learners.cql import conservative_gap
from agent.learners.iql import (IQLConfig, actor_loss as iql_actor_loss, critic_loss as iql_critic_loss, ddpg_bc_actor_loss,
                                expectile_loss, value_loss)
from agent.learners.td3bc import TD3BCConfig, actor_loss as td3_actor_loss
from agent.nets import CriticEnsemble, TanhGaussianActor, VectorizedLinear

OBS, ACT, B = 5, 2, 16


def small_config(algo):
    cfg = LEARNERS[algo][1]()
    if hasattr(cfg, "hidden_dims"):
        cfg.hidden_dims = [16, 16]
    if hasattr(cfg, "num_critics"):
        cfg.num_critics = min(cfg.num_critics, 3)
    return cfg


def batch(seed=0, k=None):
    g = torch.Generator().manual_seed(seed)
    lead = (k, B) if k else (B,)
    return {
        "obs": torch.randn(*lead, OBS, generator=g), "action": torch.rand(*lead, ACT, generator=g) * 1.8 - 0.9,
        "reward": torch.randn(*lead, generator=g), "next_obs": torch.randn(*lead, OBS, generator=g),
        "terminated": torch.rand(*lead, generator=g) < 0.2, "truncated": torch.zeros(*lead, dtype=torch.bool),
        "mc_return": torch.randn(*lead, generator=g),
        "is_real": (torch.arange(B) < B // 2).expand(*lead),  # H2O: first half real, second half sim
    }


@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_learner_contract(algo, tmp_path):
    torch.manual_seed(0)
    learner = make_learner(algo, small_config(algo), OBS, ACT)
    learner.fit_normalizer(np.zeros(OBS), np.ones(OBS))
    for i in range(3):
        metrics = learner.update(batch(i))
    assert metrics and all(torch.is_tensor(v) and v.numel() == 1 and torch.isfinite(v) for v in metrics.values())
    fused = learner.update(batch(5, k=3))  # K = 3 fused critic updates
    assert all(torch.isfinite(v) for v in fused.values())

    path = tmp_path / "ckpt.pt"
    torch.save(learner.state_dict(), path)
    restored = make_learner(algo, small_config(algo), OBS, ACT)
    restored.load_state_dict(torch.load(path, weights_only=True))
    obs = np.random.default_rng(0).normal(size=(7, OBS)).astype(np.float32)
    np.testing.assert_array_equal(learner.act(obs), restored.act(obs))
    assert learner.act(obs[0]).shape == (ACT,) and np.all(np.abs(learner.act(obs)) <= 1)
    # optimizer state restored: the next update is identical in both
    torch.manual_seed(1)
    a = learner.update(batch(9))
    torch.manual_seed(1)
    b = restored.update(batch(9))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("algo", ["iql", "cql", "calql", "td3bc", "sacn"])
def test_no_gradient_reaches_target_networks(algo):
    learner = make_learner(algo, small_config(algo), OBS, ACT)
    before = {n: p.clone() for n, p in learner.critic_target.named_parameters()}
    learner.update(batch())
    for name, p in learner.critic_target.named_parameters():
        assert p.grad is None and not p.requires_grad
        # only the Polyak average moves the target: a small step towards the critic
        assert not torch.equal(p, before[name]) or algo == "td3bc"


def reference_ensemble(critic: CriticEnsemble, obs, action):
    """The ensemble written member by member with plain matmuls."""
    x = torch.cat([obs, action], -1)
    outs = []
    for e in range(critic.ensemble_size):
        h = x
        for layer in critic.net:
            h = h @ layer.weight[e] + layer.bias[e, 0] if isinstance(layer, VectorizedLinear) else F.relu(h)
        outs.append(h[..., 0])
    return torch.stack(outs)


def test_vectorized_ensemble_equals_member_by_member():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8, 8], ensemble_size=4)
    b = batch()
    torch.testing.assert_close(critic(b["obs"], b["action"]), reference_ensemble(critic, b["obs"], b["action"]))


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    expected = (0.7 * 4 + 0.3 * 1 + 0.7 * 0.25 + 0.3 * 9) / 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(expected)


def test_iql_losses_match_plain_formulation():
    torch.manual_seed(0)
    cfg = IQLConfig(hidden_dims=[8])
    learner = make_learner("iql", cfg, OBS, ACT)
    b = batch()
    q_t = reference_ensemble(learner.critic_target, b["obs"], b["action"]).min(0).values
    v = learner.value(b["obs"])
    u = q_t - v
    expected_v = torch.mean(torch.where(u > 0, 0.7, 0.3) * u**2)
    torch.testing.assert_close(value_loss(learner.value, learner.critic_target, b, cfg)[0], expected_v)

    y = b["reward"] + 0.99 * (~b["terminated"]).float() * learner.value(b["next_obs"])
    q = reference_ensemble(learner.critic, b["obs"], b["action"])
    expected_q = torch.mean(torch.stack([((q[e] - y) ** 2).mean() for e in range(2)]))
    torch.testing.assert_close(iql_critic_loss(learner.critic, learner.value, b, cfg)[0], expected_q)

    weight = torch.clamp(torch.exp(3.0 * u), max=100.0)
    mu, log_std = learner.actor.net(b["obs"]).chunk(2, -1)
    normal = torch.distributions.Normal(torch.tanh(mu), log_std.clamp(-5, 2).exp())
    log_prob = normal.log_prob(b["action"]).sum(-1)
    torch.testing.assert_close(iql_actor_loss(learner.actor, learner.value, learner.critic_target, b, cfg)[0],
                               -(weight * log_prob).mean())


def test_iql_gradients_flow_only_where_the_paper_says():
    learner = make_learner("iql", IQLConfig(hidden_dims=[8]), OBS, ACT)
    b = batch()
    loss, _ = value_loss(learner.value, learner.critic_target, b, learner.cfg)
    loss.backward()
    assert all(p.grad is None for p in learner.critic_target.parameters())
    loss, _ = iql_critic_loss(learner.critic, learner.value, b, learner.cfg)
    learner.value.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in learner.value.parameters()), "V(s') in the critic target is detached"


def test_iql_ddpg_bc_extraction_matches_plain_formulation():
    """TD3+BC's actor on IQL's critic, plus sigma fitted to the data with the mean held:
    the loss and its gradients (what sg() holds fixed shows only there) match."""
    torch.manual_seed(0)
    cfg = IQLConfig(hidden_dims=[8], extraction="ddpg_bc", ddpg_alpha=2.5)
    learner = make_learner("iql", cfg, OBS, ACT)
    b = batch()
    mu, log_std = learner.actor.net(b["obs"]).chunk(2, -1)
    m, std = torch.tanh(mu), log_std.clamp(-5, 2).exp()
    q = reference_ensemble(learner.critic, b["obs"], m).min(0).values
    sigma_nll = -torch.distributions.Normal(m.detach(), std).log_prob(b["action"]).sum(-1).mean()
    expected = -(2.5 / q.abs().mean().detach()) * q.mean() + ((m - b["action"]) ** 2).mean() + sigma_nll
    loss, _ = ddpg_bc_actor_loss(learner.actor, learner.critic, b, cfg)
    torch.testing.assert_close(loss, expected)
    params = list(learner.actor.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want)


def test_iql_extraction_option_picks_the_actor_loss():
    torch.manual_seed(0)
    b = batch()
    changed = {}
    for extraction in ("awr", "ddpg_bc"):
        torch.manual_seed(0)
        learner = make_learner("iql", IQLConfig(hidden_dims=[16], extraction=extraction), OBS, ACT)
        metrics = learner.update(b)
        changed[extraction] = ("bc_mse" in metrics, "adv_weight" in metrics)
    assert changed == {"awr": (False, True), "ddpg_bc": (True, False)}


def plain_tanh_gaussian_sample(actor: TanhGaussianActor, obs, noise):
    mu, log_std = actor.net(obs).chunk(2, -1)
    log_std = log_std.clamp(-5, 2)
    u = mu + log_std.exp() * noise
    a = torch.tanh(u)
    log_prob = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - a**2 + 1e-6)).sum(-1)
    return a, log_prob


@pytest.mark.parametrize("bound", [None, "low", "high"])
def test_cql_logsumexp_and_calql_clamp_match_plain_formulation(bound):
    cfg = small_config("cql")
    cfg.num_sampled_actions = 4
    torch.manual_seed(0)
    learner = make_learner("cql", cfg, OBS, ACT)
    b = batch()
    lower = None if bound is None else torch.full((B,), -1e3 if bound == "low" else 50.0)
    q_data = learner.critic(b["obs"], b["action"])
    torch.manual_seed(7)
    gap, _ = conservative_gap(learner.critic, learner.actor, b, q_data, cfg, lower)

    # the same draws, in the same order, by hand
    n = 4
    torch.manual_seed(7)
    rand = torch.rand(B * n, ACT) * 2 - 1
    obs_rep = b["obs"].repeat_interleave(n, 0)
    pi_a, pi_lp = plain_tanh_gaussian_sample(learner.actor, obs_rep, torch.randn(B * n, ACT))
    nx_a, nx_lp = plain_tanh_gaussian_sample(learner.actor, b["next_obs"].repeat_interleave(n, 0), torch.randn(B * n, ACT))
    q = lambda a: reference_ensemble(learner.critic, obs_rep, a).reshape(-1, B, n)  # noqa: E731
    q_pi, q_nx = q(pi_a), q(nx_a)
    if lower is not None:
        q_pi, q_nx = torch.maximum(q_pi, lower.view(1, B, 1)), torch.maximum(q_nx, lower.view(1, B, 1))
    terms = torch.cat([q(rand) - math.log(0.5**ACT), q_pi - pi_lp.view(1, B, n), q_nx - nx_lp.view(1, B, n)], -1)
    expected = (torch.log(torch.exp(terms).sum(-1)) - reference_ensemble(learner.critic, b["obs"], b["action"])).mean(1)
    torch.testing.assert_close(gap, expected, rtol=1e-5, atol=1e-5)
    if bound == "high":
        # every policy-action value was lifted to the bound, so the gap grew
        torch.manual_seed(7)
        unclamped, _ = conservative_gap(learner.critic, learner.actor, b, q_data, cfg, None)
        assert torch.all(gap > unclamped)


def test_returns_to_go_respect_termination_and_truncation():
    reward = np.array([1.0, 2.0, 3.0, 1.0, 1.0], np.float32)
    ends = np.array([3, 5])
    terminated = np.array([False, False, True, False, False])
    g = 0.5
    rtg = returns_to_go(reward, ends, terminated, g)
    # episode 0 terminated: tail 0
    np.testing.assert_allclose(rtg[:3], [1 + g * 2 + g * g * 3, 2 + g * 3, 3])
    # episode 1 truncated: tail bootstrapped with r_min / (1 - g) = 1 / 0.5 = 2
    np.testing.assert_allclose(rtg[3:], [1 + g * (1 + g * 2), 1 + g * 2])
    excluded = returns_to_go(reward, ends, terminated, g, truncated_tail="exclude")
    assert np.all(np.isneginf(excluded[3:])) and np.allclose(excluded[:3], rtg[:3])


def test_td3bc_actor_loss_matches_plain_formulation():
    torch.manual_seed(0)
    cfg = TD3BCConfig(hidden_dims=[8])
    learner = make_learner("td3bc", cfg, OBS, ACT)
    b = batch()
    pi = torch.tanh(learner.actor.net(b["obs"]))
    q1 = reference_ensemble(learner.critic, b["obs"], pi)[0]
    expected = -(2.5 / q1.abs().mean()) * q1.mean() + ((pi - b["action"]) ** 2).mean()
    torch.testing.assert_close(td3_actor_loss(learner.actor, learner.critic, b, cfg)[0], expected)


def test_sacn_target_takes_min_over_all_critics():
    from agent.learners.common import soft_target

    torch.manual_seed(0)
    learner = make_learner("sacn", small_config("sacn"), OBS, ACT)
    b = batch()
    alpha = torch.tensor(0.3)
    torch.manual_seed(3)
    y = soft_target(learner.critic_target, learner.actor, alpha, b, 0.99)
    torch.manual_seed(3)
    a, lp = plain_tanh_gaussian_sample(learner.actor, b["next_obs"], torch.randn(B, ACT))
    q = reference_ensemble(learner.critic_target, b["next_obs"], a).min(0).values
    torch.testing.assert_close(y, b["reward"] + 0.99 * (~b["terminated"]).float() * (q - 0.3 * lp))


def test_actor_step_leaves_critic_gradients_alone():
    learner = make_learner("sacn", small_config("sacn"), OBS, ACT)
    learner.update(batch())
    # after a full update the critic's grads are those of its own loss, not the actor's
    from agent.learners.common import sac_actor_loss, step

    saved = [p.grad.clone() for p in learner.critic.parameters()]
    loss, _, _ = sac_actor_loss(learner.actor, learner.critic, learner.temperature(), batch(1)["obs"])
    step(learner.actor_opt, loss, list(learner.actor.parameters()))
    for p, g in zip(learner.critic.parameters(), saved):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("algo", ["sac", "h2o", "rlpd", "ro2o"])
@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan")])
def test_initial_temperature_must_be_positive(algo, bad):
    cfg = LEARNERS[algo][1](hidden_dims=[8])
    cfg.initial_alpha = bad
    with pytest.raises(ValueError, match="initial temperature"):
        make_learner(algo, cfg, 4, 2, device="cpu")
