"""Each learner's own math and wiring against plain formulations written here: what its
construction holds (parts, devices, optimizers, targets, entropy target), the metrics
its update reports, and the algorithm-specific pieces -- TD3's clipped target noise and
policy delay, IQL's whole update, CQL's Lagrange multiplier and backups, Cal-QL's
returns, H2O's clamped sim weights, RO2O's regularizers, RLPD/WSRL's reductions, BC."""
import copy
import inspect
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from agent.learners import LEARNERS, bc as bc_module, cql as cql_module, h2o as h2o_module, make_learner, ro2o as ro2o_module
from agent.learners import rlpd as rlpd_module, wsrl as wsrl_module
from agent.learners.calql import CalQL, CalQLConfig, returns_to_go
from agent.learners.cql import LagrangeMultiplier, bellman_target, critic_loss as cql_critic_loss
from agent.learners.h2o import H2O, Discriminators, DynamicsModel, _percentiles
from agent.learners.iql import expectile_loss
from agent.learners.ro2o import RO2O, ood_loss, perturb, q_smoothness
from agent.learners.td3bc import TD3BCConfig, critic_loss as td3_critic_loss, td3_target
from agent.learners.wsrl import WSRLConfig, matching_config
from agent.nets import CriticEnsemble, DeterministicActor, TanhGaussianActor
from test_learners import ACT, OBS, B, batch, plain_tanh_gaussian_sample, reference_ensemble

SAC_PARTS = {"actor", "critic", "critic_target", "temperature", "normalizer", "actor_opt", "critic_opt", "alpha_opt"}
PARTS = {
    "bc": {"actor", "normalizer", "optimizer"},
    "iql": {"actor", "critic", "critic_target", "value", "normalizer", "actor_opt", "critic_opt", "value_opt"},
    "riql": {"actor", "critic", "critic_target", "value", "normalizer", "actor_opt", "critic_opt", "value_opt"},
    "td3bc": {"actor", "actor_target", "critic", "critic_target", "normalizer", "actor_opt", "critic_opt"},
    "prdc": {"actor", "actor_target", "critic", "critic_target", "normalizer", "actor_opt", "critic_opt"},
    "cql": SAC_PARTS, "calql": SAC_PARTS, "sacn": SAC_PARTS, "sac": SAC_PARTS, "rlpd": SAC_PARTS, "wsrl": SAC_PARTS,
    "ro2o": SAC_PARTS | {"schedule"},
    "h2o": SAC_PARTS | {"discriminators", "model", "disc_opt", "model_opt"},
    "darc": SAC_PARTS | {"discriminators", "disc_opt"},
}
# the module each optimizer steps, and the config field of its learning rate
OPTIMIZERS = {"actor_opt": ("actor", "actor_lr"), "critic_opt": ("critic", "critic_lr"), "alpha_opt": ("temperature", "alpha_lr"),
              "value_opt": ("value", "value_lr"), "disc_opt": ("discriminators", "discriminator_lr"),
              "model_opt": ("model", "model_lr"), "multiplier_opt": ("multiplier", "critic_lr"), "optimizer": ("actor", "lr")}
METRICS = {
    "bc": {"bc_loss", "log_prob"},
    "iql": {"value_loss", "v_mean", "critic_loss", "q_mean", "actor_loss", "adv_weight"},
    "riql": {"value_loss", "v_mean", "critic_loss", "q_mean", "actor_loss", "adv_weight"},
    "td3bc": {"critic_loss", "q_mean", "actor_loss", "bc_mse"},
    "prdc": {"critic_loss", "q_mean", "actor_loss", "bc_mse", "nn_distance"},
    "sacn": {"critic_loss", "q_mean", "q_std", "actor_loss", "entropy", "alpha", "alpha_loss"},
    "cql": {"cql_ood_q", "cql_gap", "critic_loss", "td_loss", "q_mean", "actor_loss", "entropy", "alpha", "alpha_loss"},
    "h2o": {"critic_loss", "td_real", "td_sim", "h2o_gap", "q_mean", "q_std", "disc_loss", "disc_sa_acc", "disc_sas_acc",
            "w_mean", "w_p10", "w_p50", "w_p90", "omega_x_batch_mean", "omega_x_batch_p10", "omega_x_batch_p50",
            "omega_x_batch_p90", "actor_loss", "entropy", "alpha", "alpha_loss"},
    "ro2o": {"critic_loss", "q_mean", "q_std", "q_smooth_loss", "ood_loss", "ood_q_std", "actor_loss", "entropy",
             "policy_smooth_kl", "ood_lambda", "alpha", "alpha_loss"},
}
METRICS["darc"] = METRICS["sacn"] | {"disc_loss", "disc_sa_acc", "disc_sas_acc", "reward_correction"}
METRICS.update(sac=METRICS["sacn"], rlpd=METRICS["sacn"], wsrl=METRICS["sacn"], calql=METRICS["cql"])


def spy(monkeypatch, owner, name: str) -> list[dict]:
    """Wrap ``owner.name`` to record each call's arguments by parameter name (defaults
    included) and call through."""
    calls, inner = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        bound = inspect.signature(inner).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return inner(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def config(algo: str, **changes):
    cfg = LEARNERS[algo][1]()
    cfg.hidden_dims = [16, 8]
    for key, value in {"num_critics": 3, "actor_lr": 1e-3, "critic_lr": 2e-3, "alpha_lr": 3e-3, "value_lr": 4e-3,
                       "discriminator_lr": 5e-3, "model_lr": 6e-3, "lr": 7e-3, "initial_alpha": 0.3,
                       "discriminator_dims": [8], "model_dims": [8], "num_perturbations": 3, "omega_samples": 3,
                       "num_sampled_actions": 3,
                       "ratio": "classifier",  # H2O: the paper's estimator, whose math these tests check (the default
                       # conditional one: tests/test_dynamics_ratio.py)
                       **changes}.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    return cfg


# -- construction ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_construction_holds_what_the_config_says(algo):
    cfg = config(algo)
    learner = make_learner(algo, cfg, OBS, ACT, device="meta")
    assert learner.device == torch.device("meta") and (learner.obs_dim, learner.act_dim) == (OBS, ACT)
    assert learner.cfg is cfg and learner.algo == algo
    assert set(learner.parts) == PARTS[algo]
    assert all(part is getattr(learner, name) for name, part in learner.parts.items())
    for name, part in learner.parts.items():
        if isinstance(part, torch.nn.Module) and name != "schedule":  # RO2O's counters stay on the host
            assert {t.device.type for t in [*part.parameters(), *part.buffers()]} == {"meta"}, name
        if name in OPTIMIZERS:
            module, lr = OPTIMIZERS[name]
            assert len(part.param_groups) == 1
            assert part.param_groups[0]["params"] == list(getattr(learner, module).parameters()), name
            assert part.param_groups[0]["lr"] == getattr(cfg, lr), name
            assert part.param_groups[0]["fused"] is (None if algo == "bc" else True)
    if hasattr(cfg, "num_critics"):
        assert learner.critic.ensemble_size == 3 and learner.critic.net[0].weight.shape == (3, OBS + ACT, 16)
    first = next(m for m in learner.actor.modules() if isinstance(m, torch.nn.Linear))
    assert (first.in_features, first.out_features) == (OBS, 16)


@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_targets_start_as_frozen_copies(algo):
    learner = make_learner(algo, config(algo), OBS, ACT)
    pairs = [("critic", "critic_target"), ("actor", "actor_target")]
    for source, target in pairs:
        if not hasattr(learner, target):
            continue
        for p, t in zip(getattr(learner, source).parameters(), getattr(learner, target).parameters()):
            assert torch.equal(p, t) and p is not t and not t.requires_grad and p.requires_grad


@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_default_device_is_the_cpu(algo):
    learner = LEARNERS[algo][0](config(algo), OBS, ACT)
    assert learner.device == torch.device("cpu")


@pytest.mark.parametrize("algo,entropy,alpha", [
    ("sac", -ACT, 0.3), ("sacn", -ACT, 0.3), ("cql", -ACT, 1.0), ("calql", -ACT, 1.0), ("h2o", -ACT, 0.3),
    ("ro2o", -ACT, 0.3), ("rlpd", -0.5 * ACT, 0.3), ("wsrl", -ACT, 1.0)])
def test_entropy_target_and_initial_temperature(algo, entropy, alpha):
    learner = make_learner(algo, config(algo), OBS, ACT)
    assert learner.target_entropy == entropy
    assert learner.temperature().item() == pytest.approx(alpha)
    scaled = make_learner(algo, config(algo, target_entropy_scale=0.25), OBS, ACT)
    if algo in ("rlpd", "wsrl"):
        assert scaled.target_entropy == -0.25 * ACT


@pytest.mark.parametrize("algo", ["rlpd", "wsrl"])
def test_target_subset_must_lie_within_the_ensemble(algo):
    for subset in (1, 3):
        make_learner(algo, config(algo, target_subset=subset), OBS, ACT)
    for subset in (0, 4):
        with pytest.raises(ValueError, match=f"target_subset must lie in \\[1, num_critics=3\\], got {subset}"):
            make_learner(algo, config(algo, target_subset=subset), OBS, ACT)


def test_wsrl_actor_layer_norm_and_pretrained_shape():
    plain = make_learner("wsrl", config("wsrl"), OBS, ACT)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.actor.modules())
    ln = make_learner("wsrl", config("wsrl", actor_layer_norm=True), OBS, ACT)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in ln.actor.modules())
    cfg = matching_config(WSRLConfig(actor_layer_norm=True), "cql", {"hidden_dims": [8, 4], "num_critics": 5})
    assert (cfg.hidden_dims, cfg.num_critics, cfg.layer_norm, cfg.actor_layer_norm) == ([8, 4], 5, False, False)
    cfg = matching_config(WSRLConfig(), "sacn", {"hidden_dims": [8], "num_critics": 4, "layer_norm": True})
    assert (cfg.hidden_dims, cfg.num_critics, cfg.layer_norm) == ([8], 4, True)


def test_wsrl_load_pretrained_keeps_its_own_learning_rates():
    from agent.learners.wsrl import WSRL

    pre = make_learner("cql", config("cql", actor_lr=0.5, critic_lr=0.5, alpha_lr=0.5), OBS, ACT)
    learner = WSRL(config("wsrl", layer_norm=False), OBS, ACT)
    learner.load_pretrained(pre.state_dict())
    for opt, lr in ((learner.actor_opt, 1e-3), (learner.critic_opt, 2e-3), (learner.alpha_opt, 3e-3)):
        assert opt.param_groups[0]["lr"] == lr
    for a, b in zip(learner.critic.parameters(), pre.critic.parameters()):
        assert torch.equal(a, b)
    state = pre.state_dict()
    del state["alpha_opt"], state["normalizer"]
    with pytest.raises(ValueError, match="the pretrained checkpoint lacks normalizer, alpha_opt; WSRL needs"):
        learner.load_pretrained(state)


@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_update_reports_exactly_its_metrics(algo):
    torch.manual_seed(0)
    learner = make_learner(algo, config(algo), OBS, ACT)
    for b in (batch(0), batch(1, k=2)):
        out = learner.update(b)
        first_actorless = algo in ("td3bc", "prdc") and b["obs"].dim() == 2
        expected = METRICS[algo] - ({"actor_loss", "bc_mse", "nn_distance"} if first_actorless else set())
        assert set(out) == expected, algo  # TD3+BC and PRDC: no actor step on the first critic update
        assert all(torch.is_tensor(v) and not v.requires_grad for v in out.values())


def test_checkpoint_layout():
    """The checkpoint is one entry per part (TD3+BC adds its update counter)."""
    for algo in sorted(LEARNERS):
        learner = make_learner(algo, config(algo), OBS, ACT)
        extra = {"critic_updates"} if algo in ("td3bc", "prdc") else set()
        assert set(learner.state_dict()) == PARTS[algo] | extra
    state = make_learner("sac", config("sac"), OBS, ACT).state_dict()
    del state["alpha_opt"], state["critic"]
    with pytest.raises(KeyError, match="checkpoint lacks part\\(s\\) alpha_opt, critic"):
        make_learner("sac", config("sac"), OBS, ACT).load_state_dict(state)


# -- TD3+BC --------------------------------------------------------------------------------
def test_td3_target_clips_the_smoothing_noise_then_the_action():
    torch.manual_seed(0)
    cfg = TD3BCConfig(policy_noise=2.0, noise_clip=0.1, gamma=0.9)
    actor = DeterministicActor(OBS, ACT, [16])
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([3.0, -3.0]))  # near the bounds: the action clip matters
    target = CriticEnsemble(OBS, ACT, [16], ensemble_size=3)
    b = batch()
    b["terminated"] = torch.arange(B) % 3 == 0
    torch.manual_seed(5)
    y = td3_target(target, actor, b, cfg)
    torch.manual_seed(5)
    a = torch.tanh(actor.net(b["next_obs"]))
    noise = (torch.randn(B, ACT) * 2.0).clamp(-0.1, 0.1)
    assert (noise.abs() == 0.1).float().mean() > 0.5  # the clip is active for most draws
    a = (a + noise).clamp(-1.0, 1.0)
    q = reference_ensemble(target, b["next_obs"], a).min(0).values
    torch.testing.assert_close(y, b["reward"] + 0.9 * (~b["terminated"]).float() * q)
    assert not y.requires_grad


def test_td3_critic_loss_sums_members():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=3)
    b, y = batch(), torch.randn(B)
    loss, metrics = td3_critic_loss(critic, y, b)
    q = reference_ensemble(critic, b["obs"], b["action"])
    expected = sum(((q[e] - y) ** 2).mean() for e in range(3))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["critic_loss"], expected.detach())
    torch.testing.assert_close(metrics["q_mean"], q.mean().detach())


def test_td3_actor_and_targets_move_every_policy_freq_critic_updates():
    torch.manual_seed(0)
    learner = make_learner("td3bc", config("td3bc", policy_freq=3), OBS, ACT)
    assert learner.critic_updates.dtype == torch.long and int(learner.critic_updates) == 0
    moved = []
    for i in range(6):
        before = [p.clone() for p in (*learner.actor.parameters(), *learner.actor_target.parameters(),
                                      *learner.critic_target.parameters())]
        out = learner.update(batch(i))
        after = [*learner.actor.parameters(), *learner.actor_target.parameters(), *learner.critic_target.parameters()]
        changed = [not torch.equal(a, b) for a, b in zip(after, before)]
        assert all(changed) or not any(changed)
        moved.append(all(changed))
        assert ("actor_loss" in out) == moved[-1]
    assert moved == [False, False, True, False, False, True]
    assert int(learner.critic_updates) == 6
    learner.update(batch(9, k=2))  # a fused update always ends with the actor step
    assert int(learner.critic_updates) == 8
    before = [p.clone() for p in learner.actor.parameters()]
    assert "actor_loss" in learner.update(batch(10, k=2))
    assert all(not torch.equal(a, b) for a, b in zip(learner.actor.parameters(), before))


def test_td3bc_update_equals_the_plain_loop():
    torch.manual_seed(0)
    cfg = config("td3bc", policy_freq=2, tau=0.2)
    learner = make_learner("td3bc", cfg, OBS, ACT)
    actor, actor_t, critic, critic_t = (copy.deepcopy(getattr(learner, n)) for n in
                                        ("actor", "actor_target", "critic", "critic_target"))
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=False)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=False)
    for i in range(4):
        b = batch(i)
        torch.manual_seed(50 + i)
        out = learner.update(b)
        torch.manual_seed(50 + i)
        with torch.no_grad():
            a = (torch.tanh(actor_t.net(b["next_obs"])) + (torch.randn(B, ACT) * cfg.policy_noise)
                 .clamp(-cfg.noise_clip, cfg.noise_clip)).clamp(-1, 1)
            next_q = reference_ensemble(critic_t, b["next_obs"], a).min(0).values
            y = b["reward"] + cfg.gamma * (~b["terminated"]).float() * next_q
        q = reference_ensemble(critic, b["obs"], b["action"])
        critic_opt.zero_grad()
        sum(((q[e] - y) ** 2).mean() for e in range(3)).backward()
        critic_opt.step()
        if i % 2 == 1:
            pi = torch.tanh(actor.net(b["obs"]))
            q1 = reference_ensemble(critic, b["obs"], pi)[0]
            loss = -(cfg.alpha / q1.abs().mean().detach()) * q1.mean() + ((pi - b["action"]) ** 2).mean()
            actor_opt.zero_grad()
            loss.backward(inputs=list(actor.parameters()))
            actor_opt.step()
            torch.testing.assert_close(out["actor_loss"], loss.detach(), rtol=1e-4, atol=1e-5)
            with torch.no_grad():
                for target, source in ((critic_t, critic), (actor_t, actor)):
                    for pt, p in zip(target.parameters(), source.parameters()):
                        pt.copy_((1 - cfg.tau) * pt + cfg.tau * p)
        for mine, plain in ((learner.actor, actor), (learner.critic, critic), (learner.critic_target, critic_t),
                            (learner.actor_target, actor_t)):
            for p, r in zip(mine.parameters(), plain.parameters()):
                torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5)


# -- IQL -------------------------------------------------------------------------------------
def test_iql_update_equals_the_plain_loop():
    torch.manual_seed(0)
    cfg = config("iql", expectile=0.8, beta=2.0, max_weight=5.0, tau=0.2)
    learner = make_learner("iql", cfg, OBS, ACT)
    actor, critic, target, value = (copy.deepcopy(getattr(learner, n)) for n in ("actor", "critic", "critic_target", "value"))
    opts = [torch.optim.Adam(m.parameters(), lr=lr, foreach=False)
            for m, lr in ((actor, cfg.actor_lr), (critic, cfg.critic_lr), (value, cfg.value_lr))]
    for i in range(3):
        b = batch(i, k=2)
        out = learner.update(b)
        for k in range(2):
            mb = {key: v[k] for key, v in b.items()}
            with torch.no_grad():
                q_t = reference_ensemble(target, mb["obs"], mb["action"]).min(0).values
            u = q_t - value(mb["obs"])
            v_loss = (torch.where(u < 0, 1 - cfg.expectile, cfg.expectile) * u**2).mean()
            opts[2].zero_grad()
            v_loss.backward()
            opts[2].step()
            with torch.no_grad():
                y = mb["reward"] + cfg.gamma * (~mb["terminated"]).float() * value(mb["next_obs"])
            q = reference_ensemble(critic, mb["obs"], mb["action"])
            opts[1].zero_grad()
            ((q - y) ** 2).mean().backward()
            opts[1].step()
            with torch.no_grad():
                for pt, p in zip(target.parameters(), critic.parameters()):
                    pt.copy_((1 - cfg.tau) * pt + cfg.tau * p)
        flat = {key: v.reshape(-1, *v.shape[2:]) for key, v in b.items()}
        with torch.no_grad():
            adv = reference_ensemble(target, flat["obs"], flat["action"]).min(0).values - value(flat["obs"])
            w = torch.exp(cfg.beta * adv).clamp(max=cfg.max_weight)
        mu, log_std = actor.net(flat["obs"]).chunk(2, -1)
        log_prob = torch.distributions.Normal(torch.tanh(mu), log_std.clamp(-5, 2).exp()).log_prob(flat["action"]).sum(-1)
        a_loss = -(w * log_prob).mean()
        opts[0].zero_grad()
        a_loss.backward()
        opts[0].step()
        torch.testing.assert_close(out["actor_loss"], a_loss.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["adv_weight"], w.mean(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["value_loss"], v_loss.detach(), rtol=1e-4, atol=1e-5)
        for mine, plain in ((learner.actor, actor), (learner.critic, critic), (learner.critic_target, target),
                            (learner.value, value)):
            for p, r in zip(mine.parameters(), plain.parameters()):
                torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5)


def test_expectile_weights_each_side():
    assert expectile_loss(torch.tensor([1e-3]), 0.9).item() == pytest.approx(0.9e-6)
    assert expectile_loss(torch.tensor([-1e-3]), 0.9).item() == pytest.approx(0.1e-6)


# -- CQL and Cal-QL ------------------------------------------------------------------------------
def _cql_learner(lagrange: bool, **changes):
    torch.manual_seed(0)
    return make_learner("cql", config("cql", lagrange=lagrange, **changes), OBS, ACT)


@pytest.mark.parametrize("target_gap,rises", [(-50.0, True), (50.0, False)])
def test_cql_lagrange_multiplier_rises_when_the_gap_exceeds_its_target(target_gap, rises):
    learner = _cql_learner(True, target_action_gap=target_gap, alpha_cql=2.0)
    b = batch()
    torch.manual_seed(1)
    y = torch.randn(B)
    with torch.no_grad():
        learner.multiplier.log_value.fill_(math.log(0.5))
    torch.manual_seed(2)
    loss, multiplier_loss, metrics = cql_critic_loss(learner.critic, learner.actor, y, b, learner.cfg, learner.multiplier)
    torch.manual_seed(2)
    gap, _ = cql_module.conservative_gap(learner.critic, learner.actor, b, learner.critic(b["obs"], b["action"]),
                                         learner.cfg)
    q = reference_ensemble(learner.critic, b["obs"], b["action"])
    td = ((q - y) ** 2).mean(1)
    torch.testing.assert_close(loss, (td + 0.5 * 2.0 * (gap - target_gap)).sum())
    torch.testing.assert_close(multiplier_loss, -(0.5 * 2.0 * (gap.detach() - target_gap)).mean())
    torch.testing.assert_close(metrics["cql_multiplier"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["td_loss"], td.mean().detach())
    torch.testing.assert_close(metrics["critic_loss"], loss.detach())
    # the critic loss treats the multiplier as a constant, the multiplier loss the gap
    loss.backward(inputs=[learner.multiplier.log_value], retain_graph=True)
    assert learner.multiplier.log_value.grad is None or learner.multiplier.log_value.grad == 0
    multiplier_loss.backward(inputs=list(learner.critic.parameters()) + [learner.multiplier.log_value])
    assert all(p.grad is None for p in learner.critic.parameters())
    grad = learner.multiplier.log_value.grad
    assert (grad < 0) == rises  # descent raises log alpha' when the gap is above target
    # the update steps the multiplier in that direction
    before = learner.multiplier().item()
    learner.update(b)
    assert (learner.multiplier().item() > before) == rises


def test_cql_without_lagrange_weighs_the_gap_by_alpha_cql():
    learner = _cql_learner(False, alpha_cql=3.0)
    b, y = batch(), torch.randn(B)
    torch.manual_seed(2)
    loss, multiplier_loss, metrics = cql_critic_loss(learner.critic, learner.actor, y, b, learner.cfg, None)
    torch.manual_seed(2)
    gap, gap_metrics = cql_module.conservative_gap(learner.critic, learner.actor, b,
                                                   learner.critic(b["obs"], b["action"]), learner.cfg)
    q = reference_ensemble(learner.critic, b["obs"], b["action"])
    torch.testing.assert_close(loss, (((q - y) ** 2).mean(1) + 3.0 * gap).sum())
    assert multiplier_loss is None and "cql_multiplier" not in metrics
    torch.testing.assert_close(metrics["cql_gap"], gap.mean().detach())
    torch.testing.assert_close(metrics["cql_gap"], gap_metrics["cql_gap"])
    torch.testing.assert_close(metrics["q_mean"], q.mean().detach())


def test_cql_gap_temperature_and_metrics():
    learner = _cql_learner(False, cql_temperature=2.5, num_sampled_actions=2)
    b = batch()
    q_data = learner.critic(b["obs"], b["action"])
    torch.manual_seed(4)
    gap, metrics = cql_module.conservative_gap(learner.critic, learner.actor, b, q_data, learner.cfg)
    torch.manual_seed(4)
    rand = torch.rand(B * 2, ACT) * 2 - 1
    obs_rep = b["obs"].repeat_interleave(2, 0)
    pi_a, pi_lp = plain_tanh_gaussian_sample(learner.actor, obs_rep, torch.randn(B * 2, ACT))
    nx_a, nx_lp = plain_tanh_gaussian_sample(learner.actor, b["next_obs"].repeat_interleave(2, 0), torch.randn(B * 2, ACT))
    q = lambda a: reference_ensemble(learner.critic, obs_rep, a).reshape(-1, B, 2)  # noqa: E731
    cat = torch.cat([q(rand) + ACT * math.log(2), q(pi_a) - pi_lp.view(1, B, 2), q(nx_a) - nx_lp.view(1, B, 2)], -1)
    ood = 2.5 * torch.logsumexp(cat / 2.5, -1)
    torch.testing.assert_close(gap, (ood - q_data).mean(1))
    torch.testing.assert_close(metrics["cql_ood_q"], ood.mean().detach())
    torch.testing.assert_close(metrics["cql_gap"], gap.mean().detach())


@pytest.mark.parametrize("max_backup", [False, True])
@pytest.mark.parametrize("backup_entropy", [False, True])
def test_cql_bellman_target_matches_plain_formulation(max_backup, backup_entropy):
    learner = _cql_learner(False, max_backup=max_backup, backup_entropy=backup_entropy, num_sampled_actions=4, gamma=0.9)
    b = batch()
    b["terminated"] = torch.arange(B) % 3 == 0
    alpha = torch.tensor(0.7)
    torch.manual_seed(6)
    y = bellman_target(learner.critic_target, learner.actor, alpha, b, learner.cfg)
    torch.manual_seed(6)
    if max_backup:
        rep = b["next_obs"].repeat_interleave(4, 0)
        a, lp = plain_tanh_gaussian_sample(learner.actor, rep, torch.randn(B * 4, ACT))
        q = reference_ensemble(learner.critic_target, rep, a).min(0).values.view(B, 4)
        best = q.argmax(1)
        next_q, next_lp = q[torch.arange(B), best], lp.view(B, 4)[torch.arange(B), best]
        assert torch.all(next_q >= q.mean(1))
    else:
        a, next_lp = plain_tanh_gaussian_sample(learner.actor, b["next_obs"], torch.randn(B, ACT))
        next_q = reference_ensemble(learner.critic_target, b["next_obs"], a).min(0).values
    if backup_entropy:
        next_q = next_q - 0.7 * next_lp
    torch.testing.assert_close(y, b["reward"] + 0.9 * (~b["terminated"]).float() * next_q)
    assert y.shape == (B,) and not y.requires_grad


def test_lagrange_multiplier_starts_at_one_and_is_clamped():
    m = LagrangeMultiplier()
    assert m().item() == 1.0 and m.log_value.shape == ()
    with torch.no_grad():
        m.log_value.fill_(20.0)
    assert m().item() == 1e6
    with torch.no_grad():
        m.log_value.fill_(-200.0)
    assert m().item() == 0.0


@pytest.mark.parametrize("algo", ["cql", "calql"])
def test_cql_update_wiring(algo, monkeypatch):
    """The update hands the critic loss its multiplier and Cal-QL's lower bound, the target
    the current temperature, and steps the multiplier on its own loss."""
    torch.manual_seed(0)
    learner = make_learner(algo, config(algo, lagrange=True), OBS, ACT)
    with torch.no_grad():
        learner.temperature.log_alpha.fill_(math.log(0.4))
    losses = spy(monkeypatch, cql_module, "critic_loss")
    targets = spy(monkeypatch, cql_module, "bellman_target")
    b = batch(k=2)
    before = learner.multiplier.log_value.clone()
    learner.update(b)
    assert len(losses) == len(targets) == 2
    assert all(float(t["alpha"]) == pytest.approx(0.4) for t in targets)
    assert all(c["multiplier"] is learner.multiplier for c in losses)
    for k, call in enumerate(losses):
        if algo == "calql":
            assert torch.equal(call["lower_bound"], b["mc_return"][k])
        else:
            assert call["lower_bound"] is None
    assert not torch.equal(learner.multiplier.log_value, before)
    assert learner.multiplier_opt.state[learner.multiplier.log_value]["step"] == 2


def test_calql_prepare_gives_returns_to_go_of_the_cache():
    from types import SimpleNamespace

    learner = CalQL(CalQLConfig(hidden_dims=[8], gamma=0.5, truncated_tail="exclude"), OBS, ACT)
    cache = SimpleNamespace(reward=np.array([1.0, 2.0, 3.0, 4.0], np.float32), episode_ends=np.array([2, 4]),
                            terminated=np.array([False, True, False, False]))
    out = learner.prepare(cache)
    assert set(out) == {"mc_return"}
    np.testing.assert_allclose(out["mc_return"][:2], [1 + 0.5 * 2, 2])
    assert np.all(np.isneginf(out["mc_return"][2:]))
    lower = CalQL(CalQLConfig(hidden_dims=[8], gamma=0.5), OBS, ACT).prepare(cache)["mc_return"]
    np.testing.assert_allclose(lower[2:], [3 + 0.5 * (4 + 0.5 * 2), 4 + 0.5 * 2])  # tail r_min / (1 - g) = 2
    b = batch()
    assert learner.lower_bound(b) is b["mc_return"]


def test_returns_to_go_excluded_episode_first_and_precision():
    reward = np.array([1.0, 1.0, 2.0, 3.0], np.float32)
    out = returns_to_go(reward, np.array([2, 4]), np.array([False, False, False, True]), 0.5, "exclude")
    assert np.all(np.isneginf(out[:2]))
    np.testing.assert_allclose(out[2:], [2 + 0.5 * 3, 3])
    assert out.dtype == np.float32
    assert returns_to_go(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool), 0.9).shape == (0,)
    # accumulated in float64: a long episode of rewards that float32 sums would round
    rng = np.random.default_rng(0)
    r = rng.normal(size=500).astype(np.float32)
    g = returns_to_go(r, np.array([500]), np.r_[np.zeros(499, bool), True], 0.999)
    ref, running = np.empty(500), 0.0
    for t in range(499, -1, -1):
        running = float(r[t]) + 0.999 * running
        ref[t] = running
    np.testing.assert_array_equal(g, ref.astype(np.float32))


# -- H2O -----------------------------------------------------------------------------------------
def _h2o(**changes):
    torch.manual_seed(0)
    return H2O(config("h2o", **changes), OBS, ACT)


@pytest.mark.parametrize("ratio_min", [1e-5, 1e-2])
def test_h2o_sim_weights_are_the_ratio_clamped_to_ratio_min_and_one(ratio_min, monkeypatch):
    learner = _h2o(ratio_min=ratio_min)
    n_sim = B - B // 2
    log_ratio = torch.linspace(-20.0, 3.0, n_sim)
    monkeypatch.setattr(learner.discriminators, "log_ratio",
                        lambda obs, action, next_obs: log_ratio.expand(obs.shape[:-1]))
    calls = spy(monkeypatch, h2o_module, "critic_loss")
    out = learner.update(batch())
    (seen,) = calls
    expected = log_ratio.exp().clamp(ratio_min, 1.0)
    torch.testing.assert_close(seen["w"], expected)
    assert seen["w"].max() == 1.0 and seen["w"].min() == ratio_min
    assert seen["penalty_weight"] == learner.cfg.penalty_weight
    torch.testing.assert_close(out["w_mean"], expected.mean())
    torch.testing.assert_close(out["w_p90"], torch.quantile(expected, 0.9))
    # u = clamp(mean(-log ratio), 1e-45, 10) normalized: the ratios above 1 get the floor
    u = (-log_ratio).clamp(1e-45, 10.0)
    torch.testing.assert_close(seen["omega"], u / u.sum())
    torch.testing.assert_close(out["omega_x_batch_mean"], (u / u.sum() * n_sim).mean())


def test_h2o_percentiles():
    x = torch.arange(11.0)
    out = _percentiles("x", x)
    assert set(out) == {"x_mean", "x_p10", "x_p50", "x_p90"}
    assert [out[k].item() for k in ("x_mean", "x_p10", "x_p50", "x_p90")] == [5.0, 1.0, 5.0, 9.0]


def test_h2o_discriminator_loss_and_logits():
    torch.manual_seed(0)
    d = Discriminators(OBS, ACT, [8], noise=0.5)
    b = batch()
    sa, sas = torch.cat([b["obs"], b["action"]], -1), torch.cat([b["obs"], b["action"], b["next_obs"]], -1)
    l_sa, l_sas = d.logits(b["obs"], b["action"], b["next_obs"])
    torch.testing.assert_close(l_sa, 2 * torch.tanh(d.sa(sa)))
    torch.testing.assert_close(l_sas, 2 * torch.tanh(d.sas(sas)))
    torch.manual_seed(3)
    loss, metrics = d.loss(b)
    torch.manual_seed(3)
    n_sa, n_sas = sa + 0.5 * torch.randn_like(sa), sas + 0.5 * torch.randn_like(sas)
    l_sa, l_sas = 2 * torch.tanh(d.sa(n_sa)), 2 * torch.tanh(d.sas(n_sas))
    label = b["is_real"].long()
    torch.testing.assert_close(loss, F.cross_entropy(l_sa, label) + F.cross_entropy(l_sas + l_sa.detach(), label))
    torch.testing.assert_close(metrics["disc_loss"], loss.detach())
    torch.testing.assert_close(metrics["disc_sa_acc"], (l_sa.argmax(-1) == label).float().mean())
    torch.testing.assert_close(metrics["disc_sas_acc"], ((l_sas + l_sa).argmax(-1) == label).float().mean())
    # D_sas trains on l_sas + sg(l_sa): D_sa's parameters get only their own cross-entropy
    loss.backward()
    sa_grads = [p.grad.clone() for p in d.sa.parameters()]
    d.zero_grad()
    F.cross_entropy(l_sa, label).backward()
    for g, p in zip(sa_grads, d.sa.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_h2o_dynamics_model_and_next_state_samples():
    torch.manual_seed(0)
    model = DynamicsModel(OBS, ACT, [8])
    b = batch()
    mean, log_std = model(b["obs"], b["action"])
    mu, raw = model.net(torch.cat([b["obs"], b["action"]], -1)).chunk(2, -1)
    torch.testing.assert_close(mean, b["obs"] + mu)
    torch.testing.assert_close(log_std, raw.clamp(-5, 1))
    torch.testing.assert_close(model.loss(b["obs"], b["action"], b["next_obs"]),
                               (0.5 * ((b["next_obs"] - mean) / log_std.exp()) ** 2 + log_std).sum(-1).mean())
    with torch.no_grad():
        model.net[-1].bias[OBS:] = torch.tensor([-9.0, 9.0] + [0.0] * (OBS - 2))
        model.net[-1].weight[OBS:] = 0
    assert model(b["obs"], b["action"])[1][:, :2].tolist() == [[-5.0, 1.0]] * B

    for source in ("model", "noise"):
        learner = _h2o(omega_next_states=source, omega_samples=4)
        learner.fit_normalizer(np.zeros(OBS), np.full(OBS, 4.0))
        std = learner.discriminators.next_obs_std
        torch.testing.assert_close(std, torch.full((OBS,), 2.0) / (2.0 + 1e-3))
        sim = {k: v[~b["is_real"]] for k, v in b.items()}
        torch.manual_seed(7)
        samples = learner.next_state_samples(sim)
        torch.manual_seed(7)
        if source == "noise":
            expected = sim["next_obs"] + std * torch.randn(4, *sim["next_obs"].shape)
        else:
            m, s = learner.model(sim["obs"], sim["action"])
            expected = m + s.exp() * torch.randn(4, *m.shape)
        torch.testing.assert_close(samples, expected)
        assert samples.shape == (4, B - B // 2, OBS) and not samples.requires_grad


def test_h2o_next_obs_std_is_computed_in_float32():
    """sqrt(var) / std in the buffers' precision, bit for bit (a float64 detour rounds
    differently)."""
    var = np.random.default_rng(0).uniform(0.01, 10.0, size=OBS)
    learner = _h2o()
    learner.fit_normalizer(np.zeros(OBS), var)
    expected = torch.as_tensor(var, dtype=torch.float32).sqrt() / learner.normalizer.std
    assert torch.equal(learner.discriminators.next_obs_std, expected)


def test_h2o_dynamics_ratio_takes_raw_transitions():
    learner = _h2o()
    learner.fit_normalizer(np.ones(OBS), np.full(OBS, 9.0))
    b = batch()
    ratio = learner.dynamics_ratio(b["obs"], b["action"], b["next_obs"])
    norm = learner.normalizer
    expected = learner.discriminators.log_ratio(norm(b["obs"]), b["action"], norm(b["next_obs"])).exp()
    torch.testing.assert_close(ratio, expected)
    assert not ratio.requires_grad


def test_h2o_update_steps_the_dynamics_model_only_when_it_is_used():
    for source, moves in (("model", True), ("noise", False)):
        learner = _h2o(omega_next_states=source)
        before = [p.clone() for p in learner.model.parameters()]
        disc_before = [p.clone() for p in learner.discriminators.parameters()]
        learner.update(batch())
        assert all(not torch.equal(a, b) for a, b in zip(learner.model.parameters(), before)) == moves
        assert all(not torch.equal(a, b) for a, b in zip(learner.discriminators.parameters(), disc_before))


# -- RO2O ----------------------------------------------------------------------------------------
def test_ro2o_perturbations_fill_the_linf_ball():
    torch.manual_seed(0)
    obs = torch.randn(B, OBS)
    torch.manual_seed(1)
    noisy = perturb(obs, 50, 0.3)
    torch.manual_seed(1)
    torch.testing.assert_close(noisy, obs + (torch.rand(50, B, OBS) * 2 - 1) * 0.3)
    d = noisy - obs
    assert d.abs().max() <= 0.3 and d.min() < -0.25 and d.max() > 0.25


@pytest.mark.parametrize("scale,tau,large,rtol", [(20.0, 0.7, True, 1e-6), (0.05, 0.9, False, 1e-5)])
def test_ro2o_q_smoothness_weights_each_side_of_the_differences(scale, tau, large, rtol):
    """Large differences (|diff| > 1) and small ones (|diff| < 1), where squaring shrinks them."""
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=2)
    b = batch()
    noisy = b["obs"].unsqueeze(0) + torch.randn(3, B, OBS) * scale
    loss = q_smoothness(critic, b["obs"], b["action"], noisy, tau)
    q = reference_ensemble(critic, b["obs"], b["action"])
    diffs = torch.stack([reference_ensemble(critic, noisy[d], b["action"]) - q for d in range(3)], 1)  # [E, n, B]
    if large:
        assert (diffs.abs() > 1).any() and (diffs < 0).any()
    else:
        assert diffs.abs().max() < 1 and (diffs > 0).any() and (diffs < 0).any()
    weighted = torch.where(diffs > 0, tau, 1.0 - tau) * diffs**2
    torch.testing.assert_close(loss, weighted.max(1).values.mean(1).sum(), rtol=rtol, atol=0)


def test_ro2o_ood_gradient_pushes_q_down_by_lambda_std():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=3)
    actor = TanhGaussianActor(OBS, ACT, [8])
    noisy = torch.randn(2, B, OBS)
    torch.manual_seed(5)
    loss, std_metric = ood_loss(critic, actor, noisy, 0.5)
    loss.backward()
    grads = [p.grad.clone() for p in critic.parameters()]
    critic.zero_grad()
    torch.manual_seed(5)
    flat = noisy.reshape(-1, OBS)
    a, _ = plain_tanh_gaussian_sample(actor, flat, torch.randn(flat.shape[0], ACT))
    q = reference_ensemble(critic, flat, a)
    target = (q - 0.5 * q.std(0)).detach()
    ((q - target) ** 2).mean(1).sum().backward()
    for g, p in zip(grads, critic.parameters()):
        torch.testing.assert_close(g, p.grad)
    torch.testing.assert_close(std_metric, q.std(0).mean().detach())


def test_ro2o_losses_combine_with_their_weights(monkeypatch):
    """L_Q = L_TD + eta L_smooth + beta_ood L_ood and L_pi + beta_policy KL, with fixed stand-ins."""
    learner = RO2O(config("ro2o", q_smooth_weight=0.3, ood_weight=0.7, policy_smooth_weight=2.0), OBS, ACT)
    anchor_c, anchor_a = learner.critic.net[0].weight, learner.actor.net[0].weight
    monkeypatch.setattr(ro2o_module, "q_smoothness", lambda *args: 5.0 + 0 * anchor_c.sum())
    monkeypatch.setattr(ro2o_module, "ood_loss", lambda *args: (11.0 + 0 * anchor_c.sum(), torch.tensor(0.0)))
    monkeypatch.setattr(ro2o_module, "policy_smoothness", lambda *args: 13.0 + 0 * anchor_a.sum())
    critic_steps = spy(monkeypatch, ro2o_module, "step")
    actor_steps = spy(monkeypatch, ro2o_module, "actor_temperature_step")
    torch.manual_seed(3)
    out = learner.update(batch())
    torch.testing.assert_close(critic_steps[0]["loss"].detach(), out["critic_loss"] + 0.3 * 5.0 + 0.7 * 11.0)
    torch.testing.assert_close(actor_steps[0]["actor_loss"].detach(), out["actor_loss"] + 2.0 * 13.0)
    assert out["q_smooth_loss"].item() == 5.0 and out["ood_loss"].item() == 11.0 and out["policy_smooth_kl"].item() == 13.0


def test_ro2o_lambda_schedule_edges():
    learner = RO2O(config("ro2o", ood_lambda_updates=0, ood_lambda_start=1.0, ood_lambda_end=0.2), OBS, ACT)
    assert learner.schedule.updates.dtype == torch.long and learner.schedule.online.dtype == torch.bool
    assert set(learner.schedule.state_dict()) == {"updates", "online"}
    assert learner.ood_lambda() == 1.0
    learner.schedule.updates.fill_(1)
    assert learner.ood_lambda() == pytest.approx(0.2)  # 0 means one update here
    learner = RO2O(config("ro2o", ood_lambda_updates=4, ood_lambda_start=1.0, ood_lambda_end=0.2), OBS, ACT)
    learner.schedule.updates.fill_(2)
    assert learner.ood_lambda() == pytest.approx(0.6)
    learner.schedule.updates.fill_(40)
    assert learner.ood_lambda() == pytest.approx(0.2)  # held at the end after the decay
    out = learner.update(batch())
    assert out["ood_lambda"].item() == pytest.approx(0.2)


# -- RLPD / WSRL wiring --------------------------------------------------------------------------
@pytest.mark.parametrize("module,algo", [(rlpd_module, "rlpd"), (wsrl_module, "wsrl")])
@pytest.mark.parametrize("reduce", ["mean", "min"])
def test_actor_reduce_reaches_the_actor_loss(module, algo, reduce, monkeypatch):
    calls = spy(monkeypatch, module, "sac_actor_loss")
    make_learner(algo, config(algo, actor_reduce=reduce), OBS, ACT).update(batch())
    assert [c["reduce"] for c in calls] == [reduce]


@pytest.mark.parametrize("backup", [False, True])
def test_wsrl_target_wiring(backup, monkeypatch):
    calls = spy(monkeypatch, wsrl_module, "subset_min_target")
    learner = make_learner("wsrl", config("wsrl", backup_entropy=backup, target_subset=2, gamma=0.95), OBS, ACT)
    with torch.no_grad():
        learner.temperature.log_alpha.fill_(math.log(0.25))
    learner.update(batch())
    assert [(float(c["alpha"]), c["gamma"], c["subset"], c["entropy"]) for c in calls] == \
        [(pytest.approx(0.25), 0.95, 2, backup)]


def test_rlpd_target_wiring(monkeypatch):
    calls = spy(monkeypatch, rlpd_module, "subset_min_target")
    learner = make_learner("rlpd", config("rlpd", target_subset=3, gamma=0.9), OBS, ACT)
    learner.update(batch(k=2))
    assert [(float(c["alpha"]), c["gamma"], c["subset"], c["entropy"]) for c in calls] == \
        [(pytest.approx(0.3), 0.9, 3, True)] * 2


# -- BC --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_bc_update_equals_the_plain_step(head):
    torch.manual_seed(0)
    cfg = config("bc", head=head, weight_decay=0.1)
    learner = make_learner("bc", cfg, OBS, ACT)
    learner.fit_normalizer(np.ones(OBS), np.full(OBS, 4.0))
    actor = copy.deepcopy(learner.actor)
    opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr, weight_decay=0.1)
    assert learner.optimizer.param_groups[0]["weight_decay"] == 0.1
    for i in range(3):
        b = batch(i)
        out = learner.update(b)
        obs = (b["obs"] - 1) / (2 + 1e-3)
        if head == "gaussian":
            mu, log_std = actor.net(obs).chunk(2, -1)
            log_prob = torch.distributions.Normal(torch.tanh(mu), log_std.clamp(-5, 2).exp()).log_prob(b["action"]).sum(-1)
            loss = -log_prob.mean()
            torch.testing.assert_close(out["log_prob"], log_prob.mean().detach(), rtol=1e-5, atol=1e-6)
        else:
            loss = ((torch.tanh(actor.net(obs)) - b["action"]) ** 2).mean()
            assert set(out) == {"bc_loss"}
        torch.testing.assert_close(out["bc_loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for p, r in zip(learner.actor.parameters(), actor.parameters()):
            torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    assert isinstance(learner.actor, bc_module.GaussianActor if head == "gaussian" else bc_module.DeterministicActor)


def test_random_draws_are_made_on_the_batch_s_device():
    """CQL's uniform actions and RO2O's perturbations are drawn where the batch lives (the
    meta device here: a draw on the CPU would not mix with it)."""
    cfg = config("cql", num_sampled_actions=2)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=2).to("meta")
    actor = TanhGaussianActor(OBS, ACT, [8]).to("meta")
    b = {k: v.to("meta") for k, v in batch().items()}
    gap, _ = cql_module.conservative_gap(critic, actor, b, critic(b["obs"], b["action"]), cfg)
    assert gap.device.type == "meta" and gap.shape == (2,)
    assert perturb(b["obs"], 3, 0.1).device.type == "meta"


def test_act_runs_on_the_learner_s_device(monkeypatch):
    import agent.nets

    def act(actor, normalizer, obs, deterministic, device):  # a meta-device action has no values to return
        return None

    monkeypatch.setattr(agent.nets, "act", act)
    calls = spy(monkeypatch, agent.nets, "act")
    learner = make_learner("sac", config("sac"), OBS, ACT, device="meta")
    learner.act(np.zeros(OBS), deterministic=False)
    (call,) = calls
    assert (call["actor"], call["normalizer"], call["deterministic"], call["device"]) == \
        (learner.actor, learner.normalizer, False, torch.device("meta"))


@pytest.mark.parametrize("algo", ["sac", "sacn", "cql", "calql", "rlpd", "wsrl", "ro2o"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_layer_norm_follows_the_config(algo, layer_norm):
    learner = make_learner(algo, config(algo, layer_norm=layer_norm), OBS, ACT)
    assert learner.critic.layer_norm is layer_norm and learner.critic_target.layer_norm is layer_norm


def test_cql_lagrange_parts_live_with_the_learner():
    learner = make_learner("cql", config("cql", lagrange=True), OBS, ACT, device="meta")
    assert set(learner.parts) == SAC_PARTS | {"multiplier", "multiplier_opt"}
    assert learner.parts["multiplier"] is learner.multiplier and learner.parts["multiplier_opt"] is learner.multiplier_opt
    assert learner.multiplier.log_value.device.type == "meta"
    assert learner.multiplier_opt.param_groups[0]["params"] == [learner.multiplier.log_value]
    assert learner.multiplier_opt.param_groups[0]["lr"] == learner.cfg.critic_lr
    assert make_learner("cql", config("cql"), OBS, ACT).multiplier is None


def test_cql_critic_loss_passes_the_lower_bound_to_the_gap():
    learner = _cql_learner(False, alpha_cql=1.0)
    b, y = batch(), torch.randn(B)
    bound = torch.full((B,), 40.0)
    torch.manual_seed(2)
    loss, _, metrics = cql_critic_loss(learner.critic, learner.actor, y, b, learner.cfg, None, bound)
    torch.manual_seed(2)
    gap, _ = cql_module.conservative_gap(learner.critic, learner.actor, b, learner.critic(b["obs"], b["action"]),
                                         learner.cfg, bound)
    q = reference_ensemble(learner.critic, b["obs"], b["action"])
    torch.testing.assert_close(loss, (((q - y) ** 2).mean(1) + gap).sum())
    assert metrics["cql_gap"] > 30  # the bound lifted the policy-action values


@pytest.mark.parametrize("backup", [False, True])
def test_h2o_update_wiring(backup, monkeypatch):
    """The target gets the temperature and the entropy switch; the dynamics model and the
    weights see the sim rows only."""
    learner = _h2o(backup_entropy=backup, gamma=0.9)
    with torch.no_grad():
        learner.temperature.log_alpha.fill_(math.log(0.2))
    targets = spy(monkeypatch, h2o_module, "soft_target")
    model_losses = spy(monkeypatch, learner.model, "loss")
    omegas = spy(monkeypatch, h2o_module, "omega_weights")
    b = batch()
    b["obs"][~b["is_real"]] += 100.0  # sim rows are recognisable: the normalizer clips them to exactly +10
    learner.update(b)
    (target,), (model_loss,), (omega,) = targets, model_losses, omegas
    assert float(target["alpha"]) == pytest.approx(0.2) and target["gamma"] == 0.9 and target["entropy"] is backup
    sim_obs = model_loss["obs"]
    assert torch.equal(sim_obs, omega["sim"]["obs"]) and sim_obs.shape[0] == B - B // 2 and torch.all(sim_obs == 10.0)


def test_h2o_critic_loss_metrics():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=3)
    b, y = batch(), torch.randn(B)
    n_sim = int((~b["is_real"]).sum())
    _, metrics = h2o_module.critic_loss(critic, y, b, torch.rand(n_sim), torch.full((n_sim,), 1 / n_sim), 0.1)
    q = reference_ensemble(critic, b["obs"], b["action"])
    torch.testing.assert_close(metrics["q_std"], q.std(0).mean())
    torch.testing.assert_close(metrics["q_mean"], q.mean())
    torch.testing.assert_close(metrics["td_real"], ((q[:, b["is_real"]] - y[b["is_real"]]) ** 2).mean())


def test_h2o_statistics_stay_on_the_learner_s_device():
    learner = H2O(config("h2o"), OBS, ACT, device="meta")
    learner.fit_normalizer(np.zeros(OBS), np.full(OBS, 4.0))
    assert learner.discriminators.next_obs_std.device.type == "meta"
    out = _percentiles("w", torch.rand(10, device="meta"))
    assert {v.device.type for v in out.values()} == {"meta"}
