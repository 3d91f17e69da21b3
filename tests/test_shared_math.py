"""The SAC-family math the learners share (agent/learners/common.py, agent/nets.py), each
piece against a plain formulation written here: the lean Adam step against
``torch.optim.Adam`` and the textbook update, the temperature loss and the direction it
moves alpha, the actor loss with its entropy term, the soft and REDQ targets with their
done/truncation masking, the Polyak step, the ensemble TD loss; and a whole fused SAC-N
update against the same update written as a plain loop."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from agent.learners import common, make_learner
from agent.learners.common import (_LeanAdam, actor_temperature_step, ensemble_td_loss, flatten, minibatches,
                                   normalize_batch, not_done, sac_actor_loss, soft_target, step, subset_min_target)
from agent.nets import CriticEnsemble, ObsNormalizer, TanhGaussianActor, Temperature, module_params, soft_update
from test_learners import ACT, OBS, B, batch, plain_tanh_gaussian_sample, reference_ensemble, small_config


# -- the lean Adam step ---------------------------------------------------------------
def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _loss(net: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    return ((net(x) - y) ** 2).mean()


def _count_steps(opt: torch.optim.Optimizer) -> list[int]:
    """Wrap ``opt.step`` to count the calls that go through ``torch.optim``."""
    calls, inner = [0], opt.step

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    opt.step = counted
    return calls


def plain_adam(params, grads, state, t, lr, betas, eps, weight_decay, maximize):
    """The textbook Adam step (Kingma and Ba) with L2 weight decay, in float64."""
    b1, b2 = betas
    out = []
    for p, g, (m, v) in zip(params, grads, state):
        p, g = p.double(), g.double()
        if maximize:
            g = -g
        g = g + weight_decay * p
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        out.append(p - lr * m_hat / (v_hat.sqrt() + eps))
    return out


OPTIONS = [{}, {"weight_decay": 0.1}, {"betas": (0.8, 0.95), "eps": 1e-6}, {"maximize": True},
           {"weight_decay": 0.01, "maximize": True, "betas": (0.5, 0.9)}]


@pytest.mark.parametrize("options", OPTIONS)
def test_lean_adam_is_bit_identical_to_torch_adam_over_many_steps(options):
    """``common.step`` on the learners' fused Adam (the lean step after the first) against
    ``optimizer.step()`` of the same Adam: equal bits in parameters and state at every step,
    also across a learning-rate change."""
    lean_net, ref_net = _net(0), _net(0)
    lean = common.adam(lean_net.parameters(), 1e-2, torch.device("cpu"))
    for key, value in options.items():
        lean.param_groups[0][key] = value
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-2, fused=True, **options)
    through_torch = _count_steps(lean)
    params = list(lean_net.parameters())
    for i in range(60):
        if i == 30:
            for opt in (lean, ref):
                opt.param_groups[0]["lr"] = 3e-3
        step(lean, _loss(lean_net, i), params)
        ref.zero_grad(set_to_none=True)
        _loss(ref_net, i).backward()
        ref.step()
        for a, b in zip(lean_net.parameters(), ref_net.parameters()):
            assert torch.equal(a, b), f"step {i}"
    assert through_torch[0] == 1, "only the first step (which creates the state) goes through torch.optim"
    assert _LeanAdam.of(lean) is not None
    for a, b in zip(lean_net.parameters(), ref_net.parameters()):
        sa, sb = lean.state[a], ref.state[b]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert float(sa["step"]) == float(sb["step"]) == 60
    assert lean._opt_called  # what LR schedulers check


@pytest.mark.parametrize("options", OPTIONS)
def test_lean_adam_follows_the_textbook_update(options):
    net = _net(1)
    opt = common.adam(net.parameters(), 5e-3, torch.device("cpu"))
    for key, value in options.items():
        opt.param_groups[0][key] = value
    group = opt.param_groups[0]
    params = list(net.parameters())
    state = [(torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)) for p in params]
    for t in range(1, 41):
        loss = _loss(net, t)
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        expected = plain_adam([p.detach() for p in params], grads, state, t, group["lr"], group["betas"], group["eps"],
                              group["weight_decay"], group["maximize"])
        step(opt, loss, params)
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options", [{"amsgrad": True}, {"fused": False}, {"decoupled_weight_decay": True, "weight_decay": 0.1},
                                     {"fused": False, "foreach": False}])
def test_adam_variants_the_lean_step_does_not_cover_fall_back_to_torch(options):
    """AMSGrad, decoupled weight decay and the non-fused Adams keep ``optimizer.step()``
    (the lean plan refuses them) and so give exactly torch's results."""
    kwargs = {"fused": True, **options}
    lean_net, ref_net = _net(2), _net(2)
    lean = torch.optim.Adam(lean_net.parameters(), lr=1e-2, **kwargs)
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-2, **kwargs)
    calls = _count_steps(lean)
    for i in range(10):
        step(lean, _loss(lean_net, i), list(lean_net.parameters()))
        ref.zero_grad(set_to_none=True)
        _loss(ref_net, i).backward()
        ref.step()
    assert _LeanAdam.of(lean) is None and calls[0] == 10
    for a, b in zip(lean_net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b)


def test_lean_adam_refuses_what_it_cannot_reproduce():
    net = _net(3)
    params = list(net.parameters())
    opt = common.adam(params, 1e-3, torch.device("cpu"))
    assert _LeanAdam.of(opt) is None  # before the first step: no state yet
    step(opt, _loss(net, 0), params)
    plan = _LeanAdam.of(opt)
    assert plan is not None and _LeanAdam.of(opt) is plan  # built once, then reused
    assert plan.covers(params) and not plan.covers(params[:-1]) and not plan.covers(params[::-1])

    hooked = common.adam(net.parameters(), 1e-3, torch.device("cpu"))
    step(hooked, _loss(net, 0), params)
    handle = hooked.register_step_pre_hook(lambda *args: None)
    assert _LeanAdam.of(hooked) is None
    handle.remove()
    assert _LeanAdam.of(hooked) is not None
    # a hook added once the plan exists is run too: the step goes through torch.optim again
    calls = []
    for register in (hooked.register_step_pre_hook, hooked.register_step_post_hook):
        handle = register(lambda *args: calls.append(1))
        step(hooked, _loss(net, 1), params)
        handle.remove()
    assert calls == [1, 1] and _LeanAdam.of(hooked) is not None
    handle = register_optimizer_step_post_hook(lambda *args: None)
    try:
        assert _LeanAdam.of(hooked) is None  # also once the plan exists
    finally:
        handle.remove()
    for register in (register_optimizer_step_pre_hook, register_optimizer_step_post_hook):
        fresh = common.adam(net.parameters(), 1e-3, torch.device("cpu"))
        step(fresh, _loss(net, 0), params)  # state, but no plan yet
        handle = register(lambda *args: None)
        try:
            assert _LeanAdam.of(fresh) is None
        finally:
            handle.remove()
    for register in ("register_step_pre_hook", "register_step_post_hook"):  # hooks there before the plan
        fresh = common.adam(net.parameters(), 1e-3, torch.device("cpu"))
        step(fresh, _loss(net, 0), params)
        calls = []
        getattr(fresh, register)(lambda *args: calls.append(1))
        step(fresh, _loss(net, 1), params)
        assert calls == [1] and _LeanAdam.of(fresh) is None

    class NotAdam(torch.optim.Adam):
        pass

    other = NotAdam(net.parameters(), lr=1e-3, fused=True)
    step(other, _loss(net, 0), params)
    assert _LeanAdam.of(other) is None
    two_groups = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-3, fused=True)
    step(two_groups, _loss(net, 0), params)
    assert _LeanAdam.of(two_groups) is None


@pytest.mark.parametrize("kind", ["capturable", "mixed_dtypes"])
def test_lean_adam_leaves_other_fused_adams_to_torch(kind):
    """A capturable Adam, or one over parameters of mixed dtypes, steps through
    torch.optim: the lean kernel call takes one dtype and no capture flag."""
    def make():
        torch.manual_seed(0)
        if kind == "mixed_dtypes":
            return [nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3, dtype=torch.float64))]
        return [nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(3))]

    lean_params, ref_params = make(), make()
    options = {"lr": 1e-2, "fused": True, "capturable": kind == "capturable"}
    lean, ref = torch.optim.Adam(lean_params, **options), torch.optim.Adam(ref_params, **options)
    calls = _count_steps(lean)
    for i in range(4):
        for params, opt in ((lean_params, lean), (ref_params, ref)):
            loss = sum((p ** 2).sum() * (i + 1) for p in params)
            if opt is lean:
                step(opt, loss, params)
            else:
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert _LeanAdam.of(lean) is None and calls[0] == 4
    for a, b in zip(lean_params, ref_params):
        assert torch.equal(a, b)


def test_lean_adam_rebuilds_after_load_state_dict_and_new_groups():
    lean_net, ref_net = _net(4), _net(4)
    lean = common.adam(lean_net.parameters(), 1e-2, torch.device("cpu"))
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-2, fused=True)
    params = list(lean_net.parameters())

    def both(i):
        step(lean, _loss(lean_net, i), params)
        ref.zero_grad(set_to_none=True)
        _loss(ref_net, i).backward()
        ref.step()

    for i in range(5):
        both(i)
    old_plan = _LeanAdam.of(lean)
    saved = copy.deepcopy(lean.state_dict())
    for i in range(5, 8):  # three steps that the reload takes back
        step(lean, _loss(lean_net, i), params)
    with torch.no_grad():
        for a, b in zip(lean_net.parameters(), ref_net.parameters()):
            a.copy_(b)
    lean.load_state_dict(saved)
    plan = _LeanAdam.of(lean)
    assert plan is not None and plan is not old_plan
    for i in range(5, 20):
        both(i)
        for a, b in zip(lean_net.parameters(), ref_net.parameters()):
            assert torch.equal(a, b), f"step {i}"
    assert lean.state_dict()["state"][0]["step"] == 20

    extra = nn.Parameter(torch.zeros(3))
    lean.add_param_group({"params": [extra]})
    assert _LeanAdam.of(lean) is None


def test_lean_adam_step_without_a_gradient_falls_back_to_torch():
    """A parameter without a gradient: torch.optim skips it, and so does the lean step."""
    lean_net, ref_net = _net(5), _net(5)
    lean = common.adam(lean_net.parameters(), 1e-2, torch.device("cpu"))
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-2, fused=True)
    for net, opt in ((lean_net, lean), (ref_net, ref)):
        opt.zero_grad()
        _loss(net, 0).backward()
        opt.step()
    plan = _LeanAdam.of(lean)
    calls = _count_steps(lean)
    for net, opt in ((lean_net, lean), (ref_net, ref)):
        loss = (net[0](torch.randn(4, 4, generator=torch.Generator().manual_seed(1))) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        plan.step() if opt is lean else opt.step()
    assert calls[0] == 1
    for a, b in zip(lean_net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b)
    assert float(lean.state[lean_net[2].weight]["step"]) == 1  # not counted for the skipped layer


def test_step_sends_gradients_only_to_the_given_parameters():
    net = _net(6)
    params = list(net.parameters())
    opt = common.adam(params[:2], 1e-2, torch.device("cpu"))  # the first layer only
    other = [p.clone() for p in params[2:]]
    for i in range(3):
        step(opt, _loss(net, i), params[:2])
        assert all(p.grad is None for p in params[2:])
        assert all(torch.equal(p, o) for p, o in zip(params[2:], other))
    before = [p.clone() for p in params[:2]]
    step(opt, _loss(net, 9), params[:2])
    assert all(not torch.equal(p, b) for p, b in zip(params[:2], before))


# -- temperature -----------------------------------------------------------------------
def test_temperature_loss_and_the_direction_it_moves_alpha():
    temperature = Temperature(0.5)
    assert temperature().item() == pytest.approx(0.5)
    log_prob = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    loss = temperature.loss(log_prob, -1.0)
    expected = -(math.log(0.5) * (log_prob.detach() + -1.0)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert log_prob.grad is None  # the policy gets nothing from the temperature loss
    # d/d log_alpha = -E[log pi + H_target]: entropy (-E log pi = -1.17) below the target (-1)
    torch.testing.assert_close(temperature.log_alpha.grad, -(log_prob.detach() - 1.0).mean())
    assert temperature.log_alpha.grad < 0  # so gradient descent raises alpha

    for entropy, target, rises in ((-2.0, 0.0, True), (3.0, 0.0, False)):
        t = Temperature(1.0)
        opt = torch.optim.Adam(t.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            t.loss(torch.full((8,), -entropy), target).backward()
            opt.step()
        assert (t().item() > 1.0) == rises


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_must_start_positive_and_finite(bad):
    with pytest.raises(ValueError, match="initial temperature"):
        Temperature(bad)


# -- actor loss ------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["min", "mean"])
def test_sac_actor_loss_matches_plain_formulation(reduce):
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    critic = CriticEnsemble(OBS, ACT, [16], ensemble_size=3)
    log_alpha = torch.tensor(math.log(0.3), requires_grad=True)
    obs = batch()["obs"]
    torch.manual_seed(2)
    loss, log_prob, metrics = sac_actor_loss(actor, critic, log_alpha.exp(), obs, reduce=reduce)
    torch.manual_seed(2)
    a, lp = plain_tanh_gaussian_sample(actor, obs, torch.randn(B, ACT))
    qs = reference_ensemble(critic, obs, a)
    q = qs.min(0).values if reduce == "min" else qs.mean(0)
    expected = (0.3 * lp - q).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(log_prob, lp)
    assert set(metrics) == {"actor_loss", "entropy"}
    torch.testing.assert_close(metrics["actor_loss"], expected.detach())
    torch.testing.assert_close(metrics["entropy"], -lp.mean().detach())
    assert not metrics["actor_loss"].requires_grad and not metrics["entropy"].requires_grad
    # the entropy term: d loss / d alpha would be E[log pi]; alpha is detached in this loss
    loss.backward()
    assert log_alpha.grad is None
    # the gradient on the actor's parameters is that of the plain loss
    actor_grads = [p.grad.clone() for p in actor.parameters()]
    actor.zero_grad()
    torch.manual_seed(2)
    a, lp = plain_tanh_gaussian_sample(actor, obs, torch.randn(B, ACT))
    qs = reference_ensemble(critic, obs, a)
    ((0.3 * lp - (qs.min(0).values if reduce == "min" else qs.mean(0))).mean()).backward()
    for g, p in zip(actor_grads, actor.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_sac_actor_loss_takes_the_min_by_default():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    critic = CriticEnsemble(OBS, ACT, [16], ensemble_size=3)
    obs = batch()["obs"]
    torch.manual_seed(2)
    default = sac_actor_loss(actor, critic, torch.tensor(0.1), obs)[0]
    torch.manual_seed(2)
    assert torch.equal(default, sac_actor_loss(actor, critic, torch.tensor(0.1), obs, reduce="min")[0])
    torch.manual_seed(2)
    assert not torch.equal(default, sac_actor_loss(actor, critic, torch.tensor(0.1), obs, reduce="mean")[0])


def test_sac_actor_loss_entropy_term_has_weight_alpha():
    """Raising alpha by d raises the loss by d * E[log pi]: the entropy bonus with its sign."""
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    critic = CriticEnsemble(OBS, ACT, [16], ensemble_size=2)
    obs = batch()["obs"]
    out = {}
    for alpha in (0.1, 0.6):
        torch.manual_seed(4)
        out[alpha] = sac_actor_loss(actor, critic, torch.tensor(alpha), obs)
    torch.testing.assert_close(out[0.6][0] - out[0.1][0], 0.5 * out[0.1][1].mean(), rtol=1e-5, atol=1e-6)


# -- targets ---------------------------------------------------------------------------
def _mixed_ends(b: dict) -> dict:
    """A batch with terminated, truncated and running rows."""
    b = dict(b)
    b["terminated"] = torch.arange(B) % 4 == 0
    b["truncated"] = torch.arange(B) % 4 == 1
    return b


@pytest.mark.parametrize("entropy", [True, False])
def test_soft_target_masks_terminated_rows_only(entropy):
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    target = CriticEnsemble(OBS, ACT, [16], ensemble_size=3)
    b = _mixed_ends(batch())
    torch.manual_seed(3)
    y = soft_target(target, actor, torch.tensor(0.2), b, 0.9, entropy=entropy)
    torch.manual_seed(3)
    a, lp = plain_tanh_gaussian_sample(actor, b["next_obs"], torch.randn(B, ACT))
    next_v = reference_ensemble(target, b["next_obs"], a).min(0).values - (0.2 * lp if entropy else 0.0)
    mask = torch.where(b["terminated"], 0.0, 1.0)  # a truncated row still bootstraps
    torch.testing.assert_close(y, b["reward"] + 0.9 * mask * next_v)
    torch.testing.assert_close(y[b["terminated"]], b["reward"][b["terminated"]])
    assert not y.requires_grad
    torch.testing.assert_close(not_done(b), mask)


@pytest.mark.parametrize("entropy", [True, False])
def test_subset_min_target_matches_plain_formulation(entropy):
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    target = CriticEnsemble(OBS, ACT, [16], ensemble_size=5)
    b = _mixed_ends(batch())
    for subset in (1, 3, 5):
        torch.manual_seed(8)
        y = subset_min_target(target, actor, torch.tensor(0.4), b, 0.8, subset, entropy)
        torch.manual_seed(8)
        a, lp = plain_tanh_gaussian_sample(actor, b["next_obs"], torch.randn(B, ACT))
        members = torch.randperm(5)[:subset]
        q = reference_ensemble(target, b["next_obs"], a)[members].min(0).values
        expected = b["reward"] + 0.8 * (~b["terminated"]).float() * (q - (0.4 * lp if entropy else 0.0))
        torch.testing.assert_close(y, expected)
        assert not y.requires_grad
    torch.manual_seed(8)
    full = subset_min_target(target, actor, torch.tensor(0.4), b, 0.8, 5, entropy)
    torch.manual_seed(8)
    torch.testing.assert_close(full, soft_target(target, actor, torch.tensor(0.4), b, 0.8, entropy=entropy))


# -- Polyak step and ensemble TD loss --------------------------------------------------
@pytest.mark.parametrize("tau", [0.0, 0.005, 0.3, 1.0])
def test_soft_update_moves_the_target_tau_of_the_way(tau):
    torch.manual_seed(0)
    source, target = CriticEnsemble(OBS, ACT, [8], 2), CriticEnsemble(OBS, ACT, [8], 2)
    before = [p.clone() for p in target.parameters()]
    soft_update(target, source, tau)
    for t, s, b in zip(target.parameters(), source.parameters(), before):
        torch.testing.assert_close(t, (1 - tau) * b + tau * s)
    if tau == 1.0:
        assert all(torch.equal(t, s) for t, s in zip(target.parameters(), source.parameters()))


@pytest.mark.parametrize("weighted", [False, True])
def test_ensemble_td_loss_sums_members_of_batch_means(weighted):
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=4)
    b = batch()
    y = torch.randn(B)
    w = torch.rand(B) if weighted else None
    loss, metrics = ensemble_td_loss(critic, y, b, w)
    q = reference_ensemble(critic, b["obs"], b["action"])
    expected = sum(((w if weighted else 1.0) * (q[e] - y) ** 2).mean() for e in range(4))
    torch.testing.assert_close(loss, expected)
    assert set(metrics) == {"critic_loss", "q_mean", "q_std"}
    torch.testing.assert_close(metrics["critic_loss"], expected.detach())
    torch.testing.assert_close(metrics["q_mean"], q.mean().detach())
    torch.testing.assert_close(metrics["q_std"], q.std(0, unbiased=True).mean().detach())
    assert not any(v.requires_grad for v in metrics.values())


def test_batch_helpers():
    b = batch(k=3)
    mbs = minibatches(b)
    assert len(mbs) == 3 and all(torch.equal(mb["obs"], b["obs"][i]) for i, mb in enumerate(mbs))
    plain = batch()
    assert minibatches(plain) == [plain] and flatten(plain) is plain
    flat = flatten(b)
    assert flat["obs"].shape == (3 * B, OBS) and flat["reward"].shape == (3 * B,)
    torch.testing.assert_close(flat["obs"][B:2 * B], b["obs"][1])
    norm = ObsNormalizer(OBS)
    norm.fit(torch.arange(OBS).float().numpy(), torch.full((OBS,), 4.0).numpy())
    out = normalize_batch(plain, norm)
    torch.testing.assert_close(out["obs"], (plain["obs"] - torch.arange(OBS)) / (2 + 1e-3))
    torch.testing.assert_close(out["next_obs"], (plain["next_obs"] - torch.arange(OBS)) / (2 + 1e-3))
    assert out["action"] is plain["action"] and plain["obs"] is not out["obs"]
    no_next = normalize_batch({"obs": plain["obs"]}, norm)
    assert set(no_next) == {"obs"}


# -- actor + temperature in one backward ---------------------------------------------------
def test_joint_actor_temperature_step_equals_two_separate_steps():
    torch.manual_seed(0)
    learner = make_learner("sacn", small_config("sacn"), OBS, ACT)
    ref = copy.deepcopy(learner)
    for i in range(4):
        obs = batch(i)["obs"]
        torch.manual_seed(10 + i)
        loss, log_prob, _ = sac_actor_loss(learner.actor, learner.critic, learner.temperature(), obs)
        out = actor_temperature_step(learner, loss, log_prob)
        torch.manual_seed(10 + i)
        ref_loss, ref_log_prob, _ = sac_actor_loss(ref.actor, ref.critic, ref.temperature(), obs)
        ref.actor_opt.zero_grad(set_to_none=True)
        ref_loss.backward(inputs=list(ref.actor.parameters()))
        ref.actor_opt.step()
        alpha_loss = -(ref.temperature.log_alpha * (ref_log_prob.detach() + ref.target_entropy)).mean()
        ref.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        ref.alpha_opt.step()
        for a, b in zip(learner.actor.parameters(), ref.actor.parameters()):
            assert torch.equal(a, b), f"update {i}"
        assert torch.equal(learner.temperature.log_alpha, ref.temperature.log_alpha)
        assert set(out) == {"alpha", "alpha_loss"}
        torch.testing.assert_close(out["alpha"], ref.temperature().detach())
        torch.testing.assert_close(out["alpha_loss"], alpha_loss.detach())
        assert all(p.grad is None for p in learner.critic.parameters())
    assert _LeanAdam.of(learner.actor_opt) is not None and _LeanAdam.of(learner.alpha_opt) is not None


def test_joint_step_takes_the_lean_path_only_when_both_plans_cover_their_parameters():
    """The lean steps need a plan for each optimizer covering exactly its parameters;
    otherwise both go through torch.optim. The result is the same either way."""
    def learner_with(alpha_fused=True, actor_subset=False):
        torch.manual_seed(0)
        learner = make_learner("sacn", small_config("sacn"), OBS, ACT)
        if not alpha_fused:
            learner.alpha_opt = torch.optim.Adam(learner.temperature.parameters(), lr=learner.cfg.alpha_lr, foreach=False)
        if actor_subset:  # an actor optimizer over all but the last layer
            learner.actor_opt = torch.optim.Adam(list(learner.actor.parameters())[:-2], lr=learner.cfg.actor_lr, fused=True)
        return learner

    def run(learner, n):
        counts = [_count_steps(learner.actor_opt), _count_steps(learner.alpha_opt)]
        for i in range(n):
            torch.manual_seed(20 + i)
            loss, log_prob, _ = sac_actor_loss(learner.actor, learner.critic, learner.temperature(), batch(i)["obs"])
            actor_temperature_step(learner, loss, log_prob)
        return [c[0] for c in counts]

    assert run(learner_with(), 3) == [1, 1]  # the first step builds the state, then lean
    reference = learner_with()
    run(reference, 3)
    for variant in (learner_with(alpha_fused=False), learner_with(actor_subset=True)):
        assert run(variant, 3) == [3, 3]
        if variant.actor_opt.param_groups[0]["params"] == list(variant.actor.parameters()):
            for a, b in zip(variant.actor.parameters(), reference.actor.parameters()):
                assert torch.equal(a, b)
    # only the alpha optimizer has a plan (its state came first): both still go through torch
    learner = learner_with()
    learner.temperature.loss(torch.zeros(3), 0.0).backward()
    learner.alpha_opt.step()
    learner.alpha_opt.zero_grad()
    step(learner.alpha_opt, learner.temperature.loss(torch.zeros(3), 0.0), [learner.temperature.log_alpha])
    assert _LeanAdam.of(learner.alpha_opt) is not None and _LeanAdam.of(learner.actor_opt) is None
    assert run(learner, 1) == [1, 1]


# -- a whole fused update against a plain loop ---------------------------------------------
def _plain_sac_update(parts, b, gamma, tau, target_entropy, subset=None, entropy_backup=True, actor_reduce="min"):
    """K critic updates then one actor and temperature update, written with plain tensors,
    a member-by-member critic and ``torch.optim.Adam``'s textbook loop."""
    actor, critic, target, log_alpha, opts = parts
    alpha = log_alpha.exp().detach()
    for i in range(b["obs"].shape[0]):
        mb = {k: v[i] for k, v in b.items()}
        with torch.no_grad():
            a, lp = plain_tanh_gaussian_sample(actor, mb["next_obs"], torch.randn(B, ACT))
            qs = reference_ensemble(target, mb["next_obs"], a)
            if subset is not None:
                qs = qs[torch.randperm(critic.ensemble_size)[:subset]]
            v = qs.min(0).values - (alpha * lp if entropy_backup else 0.0)
            y = mb["reward"] + gamma * (1.0 - mb["terminated"].float()) * v
        q = reference_ensemble(critic, mb["obs"], mb["action"])
        loss = sum(((q[e] - y) ** 2).mean() for e in range(critic.ensemble_size))
        opts["critic"].zero_grad()
        loss.backward()
        opts["critic"].step()
        with torch.no_grad():
            for pt, p in zip(target.parameters(), critic.parameters()):
                pt.copy_((1 - tau) * pt + tau * p)
    obs = b["obs"].reshape(-1, OBS)
    a, lp = plain_tanh_gaussian_sample(actor, obs, torch.randn(obs.shape[0], ACT))
    qs = reference_ensemble(critic, obs, a)
    q = qs.min(0).values if actor_reduce == "min" else qs.mean(0)
    actor_loss = (alpha * lp - q).mean()
    alpha_loss = -(log_alpha * (lp.detach() + target_entropy)).mean()
    opts["actor"].zero_grad()
    actor_loss.backward(inputs=list(actor.parameters()))
    opts["actor"].step()
    opts["alpha"].zero_grad()
    alpha_loss.backward()
    opts["alpha"].step()
    return actor_loss.detach(), alpha_loss.detach()


def _plain_parts(learner):
    actor, critic, target = (copy.deepcopy(m) for m in (learner.actor, learner.critic, learner.critic_target))
    log_alpha = learner.temperature.log_alpha.detach().clone().requires_grad_(True)
    cfg = learner.cfg
    opts = {"actor": torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=False),
            "critic": torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=False),
            "alpha": torch.optim.Adam([log_alpha], lr=cfg.alpha_lr, foreach=False)}
    return actor, critic, target, log_alpha, opts


def _fast_batch(seed: int, k: int) -> dict:
    b = batch(seed, k=k)
    return {key: b[key] for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}


@pytest.mark.parametrize("algo", ["sacn", "rlpd", "wsrl"])
def test_fused_update_equals_the_plain_loop(algo):
    """The learner's update (fused ensemble, one-node networks, lean Adam, joint
    actor/temperature backward, fused Polyak lerp) against the same K = 2 update written
    plainly; three updates, so the lean steps and the moments are exercised."""
    torch.manual_seed(0)
    cfg = small_config(algo)
    cfg.actor_lr = cfg.critic_lr = cfg.alpha_lr = 1e-3
    cfg.tau = 0.1
    if algo == "rlpd":
        cfg.layer_norm = False
    if algo == "wsrl":
        cfg.layer_norm, cfg.actor_reduce = False, "mean"
    learner = make_learner(algo, cfg, OBS, ACT)
    parts = _plain_parts(learner)
    subset = getattr(cfg, "target_subset", None)
    reduce = getattr(cfg, "actor_reduce", "min")
    backup = getattr(cfg, "backup_entropy", True)
    for i in range(3):
        b = _fast_batch(i, 2)
        torch.manual_seed(100 + i)
        out = learner.update(b)
        torch.manual_seed(100 + i)
        actor_loss, alpha_loss = _plain_sac_update(parts, b, cfg.gamma, cfg.tau, learner.target_entropy, subset,
                                                   backup, reduce)
        torch.testing.assert_close(out["actor_loss"], actor_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["alpha_loss"], alpha_loss, rtol=1e-4, atol=1e-5)
        for mine, plain in zip((learner.actor, learner.critic, learner.critic_target), parts[:3]):
            for p, q in zip(mine.parameters(), plain.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(learner.temperature.log_alpha, parts[3], rtol=1e-5, atol=1e-6)


def test_module_params_is_the_parameter_list_gathered_once():
    net = _net(7)
    params = module_params(net)
    assert params == list(net.parameters()) and module_params(net) is params
