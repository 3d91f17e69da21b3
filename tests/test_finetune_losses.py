"""The fine-tuning losses against plain-tensor formulations written here: WSRL's
REDQ-style target, H2O's dynamics ratio and weighted critic loss, RO2O's smoothness,
out-of-distribution and policy-smoothness terms."""
import math

import pytest
import torch

from agent.learners.common import subset_min_target
from agent.learners.h2o import H2O, H2OConfig, critic_loss as h2o_critic_loss, omega_weights
from agent.learners.ro2o import ood_loss, policy_smoothness, q_smoothness
from agent.learners.wsrl import WSRL, WSRLConfig, matching_config
from agent.nets import CriticEnsemble, TanhGaussianActor, VectorizedLayerNorm, VectorizedLinear
from test_learners import ACT, OBS, B, batch, plain_tanh_gaussian_sample, reference_ensemble


def reference_layer_norm_ensemble(critic: CriticEnsemble, obs, action):
    """Member by member, with LayerNorm written out: (h - mean) / sqrt(var + 1e-5) * g + b."""
    x = torch.cat([obs, action], -1)
    outs = []
    for e in range(critic.ensemble_size):
        h = x
        for layer in critic.net:
            if isinstance(layer, VectorizedLinear):
                h = h @ layer.weight[e] + layer.bias[e, 0]
            elif isinstance(layer, VectorizedLayerNorm):
                mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
                h = (h - mean) / torch.sqrt(var + 1e-5) * layer.weight[e, 0] + layer.bias[e, 0]
            else:
                h = torch.clamp(h, min=0)
        outs.append(h[..., 0])
    return torch.stack(outs)


def test_wsrl_target_is_the_min_of_two_random_members_without_entropy():
    torch.manual_seed(0)
    learner = WSRL(WSRLConfig(hidden_dims=[16], num_critics=10), OBS, ACT)
    b = batch()
    torch.manual_seed(4)
    y = subset_min_target(learner.critic_target, learner.actor, torch.tensor(0.5), b, 0.99, 2, entropy=False)
    torch.manual_seed(4)
    a, _ = plain_tanh_gaussian_sample(learner.actor, b["next_obs"], torch.randn(B, ACT))
    pair = torch.randperm(10)[:2].tolist()
    assert learner.cfg.layer_norm  # the authors' setting: 10 LayerNorm critics
    q = reference_layer_norm_ensemble(learner.critic_target, b["next_obs"], a)
    expected = b["reward"] + 0.99 * (~b["terminated"]).float() * torch.minimum(q[pair[0]], q[pair[1]])
    torch.testing.assert_close(y, expected)
    # the min of two members lies between the min and the max over all ten
    not_done = ~b["terminated"]
    assert torch.all(y[not_done] >= (b["reward"] + 0.99 * q.min(0).values)[not_done] - 1e-5)
    assert torch.all(y[not_done] <= (b["reward"] + 0.99 * q.max(0).values)[not_done] + 1e-5)


def test_wsrl_takes_the_pretrained_shape_and_weights():
    from agent.learners.calql import CalQL, CalQLConfig

    pre = CalQL(CalQLConfig(hidden_dims=[16, 16], num_critics=10, layer_norm=True), OBS, ACT)
    cfg = matching_config(WSRLConfig(), "calql", {"hidden_dims": [16, 16], "num_critics": 10, "layer_norm": True})
    learner = WSRL(cfg, OBS, ACT)
    learner.load_pretrained(pre.state_dict())
    obs = torch.randn(4, OBS).numpy()
    assert (learner.act(obs) == pre.act(obs)).all()
    assert learner.actor_opt.param_groups[0]["lr"] == cfg.actor_lr
    with pytest.raises(ValueError, match="calql, cql"):
        matching_config(WSRLConfig(), "iql", {})


def test_h2o_dynamics_ratio_matches_plain_softmaxes():
    torch.manual_seed(0)
    learner = H2O(H2OConfig(ratio="classifier", hidden_dims=[8], discriminator_dims=[8]), OBS, ACT)
    b = batch()
    d = learner.discriminators
    l_sa = 2 * torch.tanh(d.sa(torch.cat([b["obs"], b["action"]], -1)))
    l_sas = 2 * torch.tanh(d.sas(torch.cat([b["obs"], b["action"], b["next_obs"]], -1)))
    p_sas, p_sa = torch.softmax(l_sas + l_sa, -1), torch.softmax(l_sa, -1)
    expected = (p_sas[:, 1] / p_sas[:, 0]) * (p_sa[:, 0] / p_sa[:, 1])
    torch.testing.assert_close(d.log_ratio(b["obs"], b["action"], b["next_obs"]).exp(), expected)


def test_darc_reward_correction_matches_plain_softmaxes():
    from agent.learners.darc import DARC, DARCConfig, corrected_reward

    torch.manual_seed(0)
    learner = DARC(DARCConfig(hidden_dims=[8], discriminator_dims=[8]), OBS, ACT)
    b = batch()
    d = learner.discriminators
    l_sa = 2 * torch.tanh(d.sa(torch.cat([b["obs"], b["action"]], -1)))
    l_sas = 2 * torch.tanh(d.sas(torch.cat([b["obs"], b["action"], b["next_obs"]], -1)))
    p_sas, p_sa = torch.softmax(l_sas + l_sa, -1), torch.softmax(l_sa, -1)
    delta = torch.log(p_sas[:, 1]) - torch.log(p_sas[:, 0]) - torch.log(p_sa[:, 1]) + torch.log(p_sa[:, 0])
    torch.testing.assert_close(corrected_reward(d, b, 0.5), b["reward"] + 0.5 * delta)


def test_darc_learns_values_from_the_sim_rows_only():
    """The real rows train the classifiers; their rewards never reach the critic."""
    from agent.learners.darc import DARC, DARCConfig

    def critic_after(b):
        torch.manual_seed(0)
        learner = DARC(DARCConfig(hidden_dims=[8], discriminator_dims=[8]), OBS, ACT)
        torch.manual_seed(1)
        learner.update(b)
        return [p.detach().clone() for p in learner.critic.parameters()]

    b = batch()
    real = b["is_real"]
    assert real.any() and (~real).any()
    base = critic_after(b)
    other_real = critic_after({**b, "reward": torch.where(real, b["reward"] + 100.0, b["reward"])})
    other_sim = critic_after({**b, "reward": torch.where(real, b["reward"], b["reward"] + 100.0)})
    assert all(torch.equal(p, q) for p, q in zip(base, other_real))
    assert not all(torch.equal(p, q) for p, q in zip(base, other_sim))


def test_h2o_critic_loss_matches_plain_weighting():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=2)
    b = batch()
    real = b["is_real"]
    y = torch.randn(B)
    w = torch.rand(int((~real).sum())).clamp(1e-5, 1)
    omega = torch.rand(int((~real).sum()))
    omega = omega / omega.sum()
    loss, _ = h2o_critic_loss(critic, y, b, w, omega, 0.01)
    q = reference_ensemble(critic, b["obs"], b["action"])
    expected = 0.0
    for e in range(2):
        qr, qs = q[e][real], q[e][~real]
        td_real = ((qr - y[real]) ** 2).mean()
        td_sim = (w * (qs - y[~real]) ** 2).mean()
        soft_max = torch.log(torch.sum(omega * torch.exp(qs)))  # logsumexp(Q + log omega)
        expected = expected + td_real + td_sim + 0.01 * (soft_max - qr.mean())
    torch.testing.assert_close(loss, expected)


def test_h2o_omega_is_the_clamped_mean_log_inverse_ratio_normalized():
    torch.manual_seed(0)
    learner = H2O(H2OConfig(ratio="classifier", hidden_dims=[8], discriminator_dims=[8]), OBS, ACT)
    b = batch()
    sim = {k: v[~b["is_real"]] for k, v in b.items()}
    samples = torch.randn(5, sim["obs"].shape[0], OBS)
    omega = omega_weights(learner.discriminators.log_ratio, sim, samples)
    u = torch.stack([-learner.discriminators.log_ratio(sim["obs"], sim["action"], s) for s in samples]).mean(0)
    u = u.clamp(1e-45, 10)
    torch.testing.assert_close(omega, u / u.sum())


def test_ro2o_q_smoothness_matches_a_loop_over_perturbations():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=3)
    b = batch()
    noisy = b["obs"].unsqueeze(0) + (torch.rand(4, B, OBS) * 2 - 1) * 0.01
    loss = q_smoothness(critic, b["obs"], b["action"], noisy, 0.8)
    q = reference_ensemble(critic, b["obs"], b["action"])
    expected = 0.0
    for e in range(3):
        per_d = []
        for d in range(4):
            diff = reference_ensemble(critic, noisy[d], b["action"])[e] - q[e]
            per_d.append(torch.where(diff > 0, 0.8 * diff**2, 0.2 * diff**2))
        expected = expected + torch.stack(per_d).max(0).values.mean()
    torch.testing.assert_close(loss, expected)


def test_ro2o_ood_term_pushes_toward_q_minus_lambda_std():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=4)
    actor = TanhGaussianActor(OBS, ACT, [8])
    noisy = torch.randn(3, B, OBS)
    torch.manual_seed(5)
    loss, _ = ood_loss(critic, actor, noisy, 0.7)
    torch.manual_seed(5)
    flat = noisy.reshape(-1, OBS)
    a, _ = plain_tanh_gaussian_sample(actor, flat, torch.randn(flat.shape[0], ACT))
    q = reference_ensemble(critic, flat, a)
    std = q.std(0)  # unbiased, over the ensemble
    # the target is detached, so the loss is sum_e mean (lambda std)^2
    torch.testing.assert_close(loss, 4 * ((0.7 * std) ** 2).mean())
    loss.backward()
    assert all(p.grad is None for p in actor.parameters())


def test_ro2o_policy_smoothness_is_the_worst_symmetric_kl():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [8])
    obs = torch.randn(B, OBS)
    noisy = obs.unsqueeze(0) + (torch.rand(5, B, OBS) * 2 - 1) * 0.3
    got = policy_smoothness(actor, obs, noisy)
    mu, log_std = actor.dist_params(obs)
    p = torch.distributions.Normal(mu, log_std.exp())
    kls = []
    for d in range(5):
        mu_d, log_std_d = actor.dist_params(noisy[d])
        q = torch.distributions.Normal(mu_d, log_std_d.exp())
        kls.append((torch.distributions.kl_divergence(p, q) + torch.distributions.kl_divergence(q, p)).sum(-1))
    torch.testing.assert_close(got, torch.stack(kls).max(0).values.mean())
    assert math.isclose(policy_smoothness(actor, obs, obs.unsqueeze(0).repeat(3, 1, 1)).item(), 0.0, abs_tol=1e-6)


def test_ro2o_lambda_decays_offline_and_is_fixed_online():
    from agent.learners.ro2o import RO2O, RO2OConfig

    learner = RO2O(RO2OConfig(hidden_dims=[8], num_critics=2, ood_lambda_updates=10, num_perturbations=2), OBS, ACT)
    assert learner.ood_lambda() == 1.0
    learner.update(batch(k=5))
    assert learner.ood_lambda() == pytest.approx(1.0 - 0.9 * 5 / 10)
    learner.start_online()
    assert learner.ood_lambda() == 0.1 and learner.regularized()
    dropped = RO2O(RO2OConfig(hidden_dims=[8], num_critics=2, online_regularizers="drop"), OBS, ACT)
    dropped.start_online()
    assert not dropped.regularized() and "ood_loss" not in dropped.update(batch())
    # the schedule survives a checkpoint
    restored = RO2O(RO2OConfig(hidden_dims=[8], num_critics=2, ood_lambda_updates=10, num_perturbations=2), OBS, ACT)
    restored.load_state_dict(learner.state_dict())
    assert int(restored.schedule.updates) == 5 and bool(restored.schedule.online)


def test_ro2o_lambda_meets_its_online_value_at_the_switch():
    """Left at 0, the decay spans the loop's offline phase, so lambda does not jump when the run
    goes online (a 100k-update decay cut at 5k updates jumped from 0.95 to 0.1, and Q with it)."""
    from agent.finetune import FinetuneConfig
    from agent.finetune.loop import _build_learner

    cfg = FinetuneConfig(algo="ro2o", offline_steps=6)
    cfg.ro2o.hidden_dims, cfg.ro2o.num_critics, cfg.ro2o.num_perturbations = [8], 2, 2
    learner = _build_learner(cfg, OBS, ACT, "cpu", None)
    assert learner.cfg.ood_lambda_updates == 6
    learner.update(batch(k=6))
    at_switch = learner.ood_lambda()
    learner.start_online()
    assert at_switch == pytest.approx(learner.ood_lambda()) == pytest.approx(cfg.ro2o.online_ood_lambda)
    cfg.ro2o.ood_lambda_updates = 100  # an explicit length is kept
    assert _build_learner(cfg, OBS, ACT, "cpu", None).cfg.ood_lambda_updates == 100
    cfg.ro2o.ood_lambda_updates = -5
    with pytest.raises(ValueError, match="ood_lambda_updates must be >= 0 .* got -5"):
        _build_learner(cfg, OBS, ACT, "cpu", None)


def test_wsrl_target_entropy_scale():
    assert WSRL(WSRLConfig(hidden_dims=[8], num_critics=2), OBS, ACT).target_entropy == -float(ACT)
    assert WSRL(WSRLConfig(hidden_dims=[8], num_critics=2, target_entropy_scale=0.5), OBS, ACT).target_entropy == -ACT / 2
    with pytest.raises(ValueError, match="target_entropy_scale must be positive, got 0"):
        WSRL(WSRLConfig(hidden_dims=[8], num_critics=2, target_entropy_scale=0.0), OBS, ACT)


def test_h2o_update_reports_discriminator_and_weight_statistics():
    torch.manual_seed(0)
    learner = H2O(H2OConfig(ratio="classifier", hidden_dims=[8], discriminator_dims=[8], model_dims=[8], omega_samples=3), OBS, ACT)
    out = learner.update(batch(k=2))
    for key in ("disc_sa_acc", "disc_sas_acc", "w_mean", "w_p10", "w_p90", "omega_x_batch_p50", "td_real", "td_sim"):
        assert torch.isfinite(out[key])
    assert 1e-5 <= out["w_p10"] <= out["w_p90"] <= 1.0
    with pytest.raises(ValueError, match="is_real"):
        learner.update({k: v for k, v in batch().items() if k != "is_real"})
    noise = H2O(H2OConfig(ratio="classifier", hidden_dims=[8], discriminator_dims=[8], omega_next_states="noise"), OBS, ACT)
    assert torch.isfinite(noise.update(batch())["omega_x_batch_mean"])


@pytest.mark.parametrize("ratio", ["classifier", "conditional"])
def test_h2o_td_weights_are_the_weights_the_critic_used(ratio, monkeypatch):
    """What bench/h2o.py reads on held-out rows is the w the critic multiplies the sim TD errors by."""
    import agent.learners.h2o as h2o

    torch.manual_seed(0)
    cfg = H2OConfig(hidden_dims=[8], discriminator_dims=[8], model_dims=[8], omega_samples=2, ratio=ratio, real_model_members=2)
    learner = H2O(cfg, OBS, ACT)
    learner.fit_normalizer(torch.full((OBS,), 0.3), torch.full((OBS,), 2.0))
    seen, real_critic_loss = {}, h2o.critic_loss

    def spy(critic, y, mb, w, omega, penalty_weight):
        seen["w"] = w
        return real_critic_loss(critic, y, mb, w, omega, penalty_weight)

    monkeypatch.setattr(h2o, "critic_loss", spy)
    b = batch()
    learner.update(b)
    sim = ~b["is_real"]
    torch.testing.assert_close(learner.td_weights(b["obs"][sim], b["action"][sim], b["next_obs"][sim]), seen["w"])
    trusting = H2O(H2OConfig(hidden_dims=[8], discriminator_dims=[8], model_dims=[8], ratio=ratio, ratio_min=1.0), OBS, ACT)
    assert (trusting.td_weights(b["obs"], b["action"], b["next_obs"]) == 1).all()  # bench/h2o.py's "w fixed at 1"


def test_h2o_mixed_target_blends_the_in_sample_value_trained_on_real_rows():
    """H2O+'s target: y = lambda (r + gamma (1 - terminated) V(s')) + (1 - lambda) y_soft, with V
    one expectile step further on the real rows only."""
    torch.manual_seed(0)
    learner = H2O(H2OConfig(hidden_dims=[8], discriminator_dims=[8], target="mixed", exploit_weight=0.3,
                            value_expectile=0.8), OBS, ACT)
    assert {"value", "value_opt"} <= set(learner.parts) and not {"model", "model_opt"} & set(learner.parts)
    b = batch()
    real = b["is_real"]
    y_soft = torch.randn(B)
    with torch.no_grad():
        u = reference_ensemble(learner.critic_target, b["obs"][real], b["action"][real]).min(0).values - learner.value(b["obs"][real])
    expected_loss = torch.mean(torch.where(u > 0, 0.8, 0.2) * u**2)
    y, metrics = learner._mixed_target(b, y_soft)
    torch.testing.assert_close(metrics["value_loss"], expected_loss)
    with torch.no_grad():
        y_value = b["reward"] + 0.99 * (~b["terminated"]).float() * learner.value(b["next_obs"])
    torch.testing.assert_close(y, 0.3 * y_value + 0.7 * y_soft)

    def value_after(batch_):
        torch.manual_seed(0)
        fresh = H2O(H2OConfig(hidden_dims=[8], discriminator_dims=[8], target="mixed"), OBS, ACT)
        fresh._mixed_target(batch_, y_soft)
        return [p.detach().clone() for p in fresh.value.parameters()]

    moved_sim = {**b, "obs": torch.where(real.unsqueeze(-1), b["obs"], b["obs"] + 5.0)}
    moved_real = {**b, "obs": torch.where(real.unsqueeze(-1), b["obs"] + 5.0, b["obs"])}
    assert all(torch.equal(p, q) for p, q in zip(value_after(b), value_after(moved_sim)))
    assert not all(torch.equal(p, q) for p, q in zip(value_after(b), value_after(moved_real)))


def test_h2o_mixed_target_drops_the_penalty():
    def critic_after(penalty_weight):
        torch.manual_seed(0)
        learner = H2O(H2OConfig(hidden_dims=[8], discriminator_dims=[8], target="mixed", penalty_weight=penalty_weight), OBS, ACT)
        torch.manual_seed(1)
        metrics = learner.update(batch())
        assert "value_loss" in metrics and not any(k.startswith("omega") for k in metrics)
        return [p.detach().clone() for p in learner.critic.parameters()]

    assert all(torch.equal(p, q) for p, q in zip(critic_after(0.01), critic_after(10.0)))
