"""The conditional dynamics ratio: about 1 where the simulator moves as the real data did,
far below 1 under gravity x2, measured on held-out rows after a realistic fit; the model
fallback and the classifier's loss against plain formulations."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from agent.learners.dynamics_ratio import ConditionalRatio, RealDynamics, weights

ENV = "sims/ArmReach-v0"


@pytest.fixture(scope="module")
def real():
    """30 noisy-expert reach episodes (1,500 rows), normalized, split 80/20, with a real
    dynamics ensemble fitted for 2,000 updates on the training rows."""
    import tempfile

    from agent.collect import CollectConfig, collect
    from agent.store import Store
    from agent.store.cache import sim_state_transitions

    out = tempfile.mkdtemp() + "/real.zarr"
    collect(CollectConfig(env=ENV, policy="scripted", epsilon=0.3, episodes=30, seed=1, out=out), progress=False)
    data = sim_state_transitions(Store.open(out))
    mean, std = data["obs"].mean(0), data["obs"].std(0) + 1e-3
    norm = lambda x: torch.as_tensor((x - mean) / std, dtype=torch.float32)  # noqa: E731
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(data["obs"]))
    train, test = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
    obs, action, next_obs = norm(data["obs"]), torch.as_tensor(data["action"]), norm(data["next_obs"])
    torch.manual_seed(0)
    model = RealDynamics(obs.shape[1], action.shape[1], [128, 128], members=5)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2000):
        idx = torch.as_tensor(rng.choice(train, size=(5, 256)))  # a bootstrap draw per member
        loss = model.loss(obs[idx], action[idx], next_obs[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"data": data, "norm": norm, "train": train, "test": torch.as_tensor(test), "obs": obs, "action": action,
            "next_obs": next_obs, "model": model, "rng": rng}


def held_out_log_w(real, variant: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the ratio at the sim (s, a) of the training rows (the simulator restored to each
    real state replays the real action), then read it on the held-out rows."""
    from sims.gaps import replay

    sim_next = real["norm"](replay(ENV, variant, real["data"]["sim_state"], real["data"]["action"]))
    obs, action, model = real["obs"], real["action"], real["model"]
    torch.manual_seed(1)
    ratio = ConditionalRatio(obs.shape[1], action.shape[1], [128, 128])
    opt = torch.optim.Adam(ratio.parameters(), 3e-4)
    for _ in range(2000):
        idx = torch.as_tensor(real["rng"].choice(real["train"], size=256))
        with torch.no_grad():
            model_next = model.sample(obs[idx], action[idx])
        loss, _ = ratio.loss(obs[idx], action[idx], sim_next[idx], model_next)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = real["test"]
    with torch.no_grad():
        log_w = ratio(obs[t], action[t], sim_next[t]).clamp(max=0.0)
    return log_w, weights(model, ratio, obs[t], action[t], sim_next[t])[0]


def test_ratio_is_about_one_for_the_real_dynamics_and_departs_under_gravity_x2(real):
    same, w_same = held_out_log_w(real, {})
    heavy, w_heavy = held_out_log_w(real, {"gravity_scale": 2.0})
    assert abs(float(same.median())) < 0.5, float(same.median())
    assert float(w_same.median()) > 0.6
    assert float(heavy.median()) < float(same.median()) - 1.0, (float(heavy.median()), float(same.median()))
    assert float(w_heavy.median()) < 0.2


def test_weights_fall_back_to_one_where_the_members_disagree_more_than_the_gap():
    torch.manual_seed(0)
    model = RealDynamics(3, 2, [16], members=4)
    ratio = ConditionalRatio(3, 2, [16])
    obs, action = torch.randn(64, 3), torch.randn(64, 2)
    mean, _ = model(obs, action)
    spread = mean.std(0, unbiased=False).pow(2).mean(-1).sqrt()
    # one half of the rows lands exactly on the ensemble mean (gap 0 < spread), the other far off it
    sim_next = mean.mean(0).detach().clone()
    sim_next[32:] += 100.0
    w, metrics = weights(model, ratio, obs, action, sim_next)
    log_w = ratio(obs, action, sim_next).detach().clamp(max=0.0)
    assert torch.equal(w[:32], torch.ones(32))
    torch.testing.assert_close(w[32:], log_w[32:].exp().clamp(min=1e-5))
    assert float(metrics["ratio_unsure"]) == 0.5 and bool((spread > 0).all())


def test_ratio_loss_and_model_likelihood_match_plain_formulations():
    torch.manual_seed(0)
    ratio = ConditionalRatio(3, 2, [16], noise=0.0)
    obs, action, a, b = torch.randn(8, 3), torch.randn(8, 2), torch.randn(8, 3), torch.randn(8, 3)
    loss, _ = ratio.loss(obs, action, sim_next=a, model_next=b)
    logits = torch.cat([ratio(obs, action, b), ratio(obs, action, a)])
    labels = torch.cat([torch.ones(8), torch.zeros(8)])
    torch.testing.assert_close(loss, 2 * F.binary_cross_entropy_with_logits(logits, labels))
    model = RealDynamics(3, 2, [16], members=2)
    mean, log_std = model(obs, action)
    plain = -torch.distributions.Normal(mean, log_std.exp()).log_prob(a.unsqueeze(0)).sum(-1).mean()
    torch.testing.assert_close(model.loss(obs, action, a), plain - 0.5 * np.log(2 * np.pi) * 3)


def test_h2o_conditional_ratio_trains_the_model_and_classifier_and_weights_the_sim_rows(monkeypatch):
    import agent.learners.h2o as h2o
    from test_learners import ACT, OBS, batch

    torch.manual_seed(0)
    cfg = h2o.H2OConfig(hidden_dims=[16], discriminator_dims=[16], model_dims=[16], ratio="conditional", real_model_members=3)
    learner = h2o.H2O(cfg, OBS, ACT)
    assert {"real_model", "ratio_net", "real_model_opt", "ratio_opt"} <= set(learner.parts)
    assert not {"discriminators", "disc_opt"} & set(learner.parts)
    b = batch()
    seen = {}
    real_weights, real_omega, real_critic_loss = h2o.conditional_weights, h2o.omega_weights, h2o.critic_loss

    def spy_weights(*args):
        seen["w"] = real_weights(*args)[0]
        return real_weights(*args)

    def spy_omega(log_ratio, sim, samples):
        seen["log_ratio"] = log_ratio
        return real_omega(log_ratio, sim, samples)

    def spy_critic(critic, y, mb, w, omega, penalty_weight):
        seen["critic_w"] = w
        return real_critic_loss(critic, y, mb, w, omega, penalty_weight)

    monkeypatch.setattr(h2o, "conditional_weights", spy_weights)
    monkeypatch.setattr(h2o, "omega_weights", spy_omega)
    monkeypatch.setattr(h2o, "critic_loss", spy_critic)
    before = {name: [p.clone() for p in getattr(learner, name).parameters()] for name in ("real_model", "ratio_net", "discriminators")}
    metrics = learner.update(b)
    assert {"ratio_loss", "ratio_acc", "ratio_unsure", "log_w_mean", "real_model_loss"} <= set(metrics)
    assert not any(k.startswith("disc_") for k in metrics)
    moved = {name: any(not torch.equal(a, p) for a, p in zip(ps, getattr(learner, name).parameters())) for name, ps in before.items()}
    assert moved == {"real_model": True, "ratio_net": True, "discriminators": False}
    assert torch.equal(seen["critic_w"], seen["w"])
    assert seen["log_ratio"].__func__ is h2o.H2O.log_ratio and learner.log_ratio.__self__ is learner
    obs, action = torch.randn(4, OBS), torch.randn(4, ACT)
    torch.testing.assert_close(learner.log_ratio(obs, action, obs), learner.ratio_net(obs, action, obs))
    restored = h2o.H2O(cfg, OBS, ACT)
    restored.load_state_dict(learner.state_dict())
    torch.testing.assert_close(restored.log_ratio(obs, action, obs), learner.log_ratio(obs, action, obs))
