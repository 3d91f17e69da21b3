"""agent/nets.py against plain formulations: the actors' distributions (sampling, clamps,
log-probabilities with the tanh Jacobian), the observation normalizer, initialization,
LayerNorm ensembles with non-trivial affine parameters, leading member dims; and the
one-node fast paths: bit-identical to the per-layer graph (operand layouts included),
chosen exactly when documented, and skipping the gradients nobody asked for."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from agent import nets
from agent.nets import (LOG_STD_MAX, LOG_STD_MIN, CriticEnsemble, DeterministicActor, GaussianActor, ObsNormalizer,
                        TanhGaussianActor, Temperature, ValueNetwork, VectorizedLayerNorm, VectorizedLinear, mlp, mse)

OBS, ACT, B = 5, 3, 16


def _gauss(u, mu, log_std):
    return -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


def _extreme_head(actor: nn.Module, act_dim: int) -> None:
    """Make the log-std half of the last layer's output -20 for the first action dim and
    +20 for the second, whatever the input: the clamps must bound them."""
    last = actor.net[-1]
    with torch.no_grad():
        last.weight[act_dim:].zero_()
        last.bias[act_dim:] = torch.tensor([-20.0, 20.0] + [0.0] * (act_dim - 2))


# -- actors ------------------------------------------------------------------------------
def test_tanh_gaussian_sample_and_log_prob_match_plain_formulas():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, [16])
    obs = torch.randn(B, OBS)
    torch.manual_seed(1)
    action, log_prob = actor.sample(obs)
    torch.manual_seed(1)
    noise = torch.randn(B, ACT)
    mu, log_std = actor.net(obs).chunk(2, -1)
    log_std = log_std.clamp(-5, 2)
    u = mu + log_std.exp() * noise
    expected_action = torch.tanh(u)
    expected = (_gauss(u, mu, log_std) - torch.log(1 - expected_action**2 + 1e-6)).sum(-1)
    torch.testing.assert_close(action, expected_action)
    torch.testing.assert_close(log_prob, expected)
    # log_prob of given actions inverts the squashing: the same values, up to atanh's rounding
    torch.testing.assert_close(actor.log_prob(obs, action.detach()), expected.detach(), rtol=1e-4, atol=1e-4)
    # a bound action is pulled inside (-1, 1) before atanh, so its log-probability is finite
    edge = torch.tensor([[1.0, -1.0, 0.0]]).expand(B, ACT)
    lp_edge = actor.log_prob(obs, edge)
    inside = edge.clamp(-(1 - 1e-6), 1 - 1e-6)
    expected_edge = (_gauss(torch.atanh(inside), mu, log_std) - torch.log1p(-inside**2 + 1e-6)).sum(-1)
    assert torch.isfinite(lp_edge).all()
    torch.testing.assert_close(lp_edge, expected_edge)
    # forward: the mean squashed when deterministic, a fresh sample otherwise
    torch.testing.assert_close(actor(obs, deterministic=True), torch.tanh(mu))
    torch.manual_seed(1)
    torch.testing.assert_close(actor(obs), expected_action)


def test_gaussian_actor_matches_plain_formulas():
    torch.manual_seed(0)
    actor = GaussianActor(OBS, ACT, [16])
    obs = torch.randn(B, OBS)
    mu, log_std = actor.net(obs).chunk(2, -1)
    mean, log_std = torch.tanh(mu), log_std.clamp(-5, 2)
    action = torch.rand(B, ACT) * 2 - 1
    torch.testing.assert_close(actor.log_prob(obs, action), _gauss(action, mean, log_std).sum(-1))
    torch.testing.assert_close(actor(obs, deterministic=True), mean)
    torch.manual_seed(3)
    sample = actor(obs)  # stochastic by default
    torch.manual_seed(3)
    torch.testing.assert_close(sample, (mean + log_std.exp() * torch.randn(B, ACT)).clamp(-1, 1))
    with torch.no_grad():  # a wide policy: samples outside the bounds are clipped to them
        actor.net[-1].bias[ACT:] = 2.0
    wide = torch.stack([actor(obs) for _ in range(20)])
    assert wide.min() == -1.0 and wide.max() == 1.0


def test_deterministic_actor_is_tanh_of_the_network():
    torch.manual_seed(0)
    actor = DeterministicActor(OBS, ACT, [16])
    obs = torch.randn(B, OBS)
    torch.testing.assert_close(actor(obs), torch.tanh(actor.net(obs)))
    assert actor.net[-1].out_features == ACT


@pytest.mark.parametrize("cls", [TanhGaussianActor, GaussianActor])
def test_log_std_is_clamped_to_its_bounds(cls):
    torch.manual_seed(0)
    actor = cls(OBS, ACT, [16])
    _extreme_head(actor, ACT)
    _, log_std = actor.dist_params(torch.randn(B, OBS))
    assert log_std.shape == (B, ACT)
    assert torch.all(log_std[:, 0] == LOG_STD_MIN) and torch.all(log_std[:, 1] == LOG_STD_MAX)
    assert (LOG_STD_MIN, LOG_STD_MAX) == (-5.0, 2.0)


@pytest.mark.parametrize("cls", [TanhGaussianActor, GaussianActor])
def test_actors_take_a_leading_sample_dim(cls):
    """[n, B, obs] in, [n, B] log-probabilities out (RO2O's perturbed states)."""
    torch.manual_seed(0)
    actor = cls(OBS, ACT, [16])
    obs = torch.randn(4, B, OBS)
    action = torch.rand(4, B, ACT) * 1.8 - 0.9
    lp = actor.log_prob(obs, action)
    assert lp.shape == (4, B)
    torch.testing.assert_close(lp[2], actor.log_prob(obs[2], action[2]))
    if cls is TanhGaussianActor:
        a, lp = actor.sample(obs)
        assert a.shape == (4, B, ACT) and lp.shape == (4, B)


@pytest.mark.parametrize("cls", [TanhGaussianActor, GaussianActor, DeterministicActor])
def test_actor_layer_norm_switch(cls):
    assert not any(isinstance(m, nn.LayerNorm) for m in cls(OBS, ACT, [8, 8]).modules())
    with_ln = cls(OBS, ACT, [8, 8], layer_norm=True)
    assert sum(isinstance(m, nn.LayerNorm) for m in with_ln.modules()) == 2


def test_value_network():
    torch.manual_seed(0)
    value = ValueNetwork(OBS, [8])
    obs = torch.randn(3, B, OBS)
    assert value(obs[0]).shape == (B,) and value(obs).shape == (3, B)
    torch.testing.assert_close(value(obs[1]), value.net(obs[1])[:, 0])
    assert not any(isinstance(m, nn.LayerNorm) for m in value.modules())
    assert any(isinstance(m, nn.LayerNorm) for m in ValueNetwork(OBS, [8], layer_norm=True).modules())


def test_mse_is_the_mean_squared_error():
    pred, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 0.0, 1.0])
    assert mse(pred, target).item() == pytest.approx((0 + 4 + 9) / 3)


# -- normalizer, temperature, initialization -------------------------------------------------
def test_obs_normalizer():
    norm = ObsNormalizer(3)
    obs = torch.randn(4, 3)
    torch.testing.assert_close(norm(obs), obs)  # unfitted: identity
    norm.fit(np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 0.0]))
    std = torch.tensor([2.0, 0.5, 0.0]) + 1e-3
    torch.testing.assert_close(norm.std, std)
    torch.testing.assert_close(norm(obs), ((obs - torch.tensor([1.0, -2.0, 0.5])) / std).clamp(-10.0, 10.0))
    # a state far outside the data (the dimension with no spread) stops at +-10 deviations; others pass unchanged
    far = torch.tensor([[1.0 + 2.0 * 9.99, -2.0 - 0.5 * 9.99, 0.5 + 7.0], [1.0, -2.0, 0.5 - 7.0]])
    out = norm(far)
    torch.testing.assert_close(out[:, :2], torch.tensor([[9.99 * 2.0 / 2.001, -9.99 * 0.5 / 0.501], [0.0, 0.0]]))
    assert out[0, 2].item() == 10.0 and out[1, 2].item() == -10.0 and ObsNormalizer.CLIP == 10.0
    norm.fit(np.zeros(3), np.ones(3), eps=0.5)
    torch.testing.assert_close(norm.std, torch.full((3,), 1.5))
    assert norm.mean.dtype == norm.std.dtype == torch.float32
    assert set(norm.state_dict()) == {"mean", "std"}


def test_temperature_defaults():
    t = Temperature()
    assert t().item() == 1.0 and t.log_alpha.dtype == torch.float32 and t.log_alpha.requires_grad
    assert Temperature(0.2)().item() == pytest.approx(0.2)


def test_vectorized_linear_initialization_is_nn_linear_s():
    torch.manual_seed(0)
    layer = VectorizedLinear(64, 32, 5)
    bound = 1 / math.sqrt(64)
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= bound
        assert p.min() < -0.8 * bound and p.max() > 0.8 * bound
    assert layer.weight.shape == (5, 64, 32) and layer.bias.shape == (5, 1, 32)
    torch.testing.assert_close(layer(torch.ones(5, 2, 64)), torch.ones(5, 2, 64) @ layer.weight + layer.bias)


def test_layer_norm_ensemble_with_trained_affine_parameters():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8, 8], ensemble_size=3, layer_norm=True)
    with torch.no_grad():
        for m in critic.modules():
            if isinstance(m, VectorizedLayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    obs, action = torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1
    x = torch.cat([obs, action], -1)
    expected = []
    for e in range(3):
        h = x
        for layer in critic.net:
            if isinstance(layer, VectorizedLinear):
                h = h @ layer.weight[e] + layer.bias[e, 0]
            elif isinstance(layer, VectorizedLayerNorm):
                h = F.layer_norm(h, h.shape[-1:]) * layer.weight[e, 0] + layer.bias[e, 0]
            else:
                h = h.clamp(min=0)
        expected.append(h[:, 0])
    torch.testing.assert_close(critic(obs, action), torch.stack(expected))


def test_critic_defaults():
    critic = CriticEnsemble(OBS, ACT, [8])
    assert critic.ensemble_size == 2 and not critic.layer_norm and critic.net[0].weight.shape == (2, OBS + ACT, 8)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_takes_one_batch_per_member(layer_norm):
    """Inputs with a leading member dim [E, B, .]: member e sees its own batch."""
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=3, layer_norm=layer_norm)
    obs, action = torch.randn(3, B, OBS), torch.rand(3, B, ACT)
    q = critic(obs, action)
    assert q.shape == (3, B)
    for e in range(3):
        torch.testing.assert_close(q[e], critic(obs[e], action[e])[e])


# -- the one-node fast paths -------------------------------------------------------------
def _per_layer(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for module in seq:
        x = module(x)
    return x


def _layouts(t: torch.Tensor):
    """The same values in row-major and column-major storage."""
    return [t, t.t().contiguous().t()]


@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("column_major_x", [False, True])
@pytest.mark.parametrize("column_major_w", [False, True])
def test_mlp_one_node_is_bit_identical_in_every_layout(batch, column_major_x, column_major_w):
    torch.manual_seed(batch)
    net = mlp(6, [16, 8], 3)
    if column_major_w:
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight = nn.Parameter(_layouts(m.weight.detach())[1])
        net.__dict__.pop("_linear_params", None)
        net.__dict__.pop("_params_list", None)
    x0 = torch.randn(batch, 6)
    x = _layouts(x0)[int(column_major_x)].requires_grad_(True)
    out = net(x)
    assert type(out.grad_fn).__name__ == "_MLPFunctionBackward"
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _per_layer(net, x_ref)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    params = list(net.parameters())
    grads = torch.autograd.grad(out, [x, *params], g)
    grads_ref = torch.autograd.grad(ref, [x_ref, *params], g)
    for a, b in zip(grads, grads_ref):
        assert torch.equal(a, b)
    # each parameter alone: the node computes what the engine asks for
    for p in params:
        (alone,) = torch.autograd.grad(net(x), [p], g)
        (alone_ref,) = torch.autograd.grad(_per_layer(net, x_ref), [p], g)
        assert torch.equal(alone, alone_ref)


@pytest.mark.parametrize("members,batch", [(1, 3), (4, 9)])
def test_critic_one_node_is_bit_identical_for_each_parameter(members, batch):
    torch.manual_seed(members)
    critic = CriticEnsemble(OBS, ACT, [16, 8], ensemble_size=members)
    obs, action = torch.randn(batch, OBS), torch.randn(batch, ACT, requires_grad=True)
    q = critic(obs, action)
    assert type(q.grad_fn.next_functions[0][0]).__name__ == "_EnsembleMLPBackward"
    x = torch.cat([obs, action], -1).unsqueeze(0).expand(members, -1, -1)
    g = torch.randn_like(q)
    for p in [action, *critic.parameters()]:
        (alone,) = torch.autograd.grad(critic(obs, action), [p], g)
        (alone_ref,) = torch.autograd.grad(_per_layer(critic.net, x).squeeze(-1), [p], g)
        assert torch.equal(alone, alone_ref)


def test_fast_paths_are_taken_exactly_where_documented():
    torch.manual_seed(0)
    x = torch.randn(4, 6)  # an input that needs no gradient: the parameters do
    assert type(mlp(6, [8], 2)(x).grad_fn).__name__ == "_MLPFunctionBackward"
    assert type(mlp(6, [8], 2, layer_norm=True)(x).grad_fn).__name__ != "_MLPFunctionBackward"
    others = [nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)),
              nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),  # not in place
              nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(inplace=True), nn.Linear(8, 2)),
              nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.Linear(8, 2)),
              nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True))]
    for seq in others:
        net = nets.MLP(*seq)
        out = net(x)
        assert type(out.grad_fn).__name__ != "_MLPFunctionBackward"
        assert torch.equal(out, _per_layer(seq, x))
    net = mlp(6, [8], 2)
    assert type(net(torch.randn(3, 4, 6)).grad_fn).__name__ != "_MLPFunctionBackward"  # [.., B, in]: per layer
    with torch.no_grad():
        assert torch.equal(net(x), _per_layer(net, x))
    net(x)
    assert net.__dict__["_linear_params"] == list(net.parameters())  # gathered once
    assert nets.MLP(*others[0]).__dict__.get("_linear_params") is None
    plain = nets.MLP(*others[0])
    plain(x)
    assert plain.__dict__["_linear_params"] == []
    critic = CriticEnsemble(OBS, ACT, [8], ensemble_size=2)
    q = critic(torch.randn(4, OBS), torch.randn(4, ACT))  # the action needs no gradient: the parameters do
    assert type(q.grad_fn.next_functions[0][0]).__name__ == "_EnsembleMLPBackward"


def test_backward_skips_the_gradients_nobody_asked_for(monkeypatch):
    """An actor loss through the critic asks for the action's gradient only: no weight
    gradient of the critic is computed, and a loss on the last layer alone computes no
    input gradients at all."""
    calls = {"weight": 0, "input": 0}
    for name, key in (("_ensemble_weight_grad", "weight"), ("_ensemble_input_grad", "input"),
                      ("_mlp_weight_grad", "weight"), ("_mlp_input_grad", "input")):
        inner = getattr(nets, name)

        def counted(*args, _inner=inner, _key=key):
            calls[_key] += 1
            return _inner(*args)

        monkeypatch.setattr(nets, name, counted)
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, [8, 8], ensemble_size=3)
    action = torch.randn(4, ACT, requires_grad=True)
    critic(torch.randn(4, OBS), action).sum().backward(inputs=[action])
    assert calls == {"weight": 0, "input": 3}
    calls.update(weight=0, input=0)
    last = critic.net[-1].weight
    critic(torch.randn(4, OBS), action).sum().backward(inputs=[last])
    assert calls == {"weight": 1, "input": 0}
    calls.update(weight=0, input=0)
    net = mlp(6, [8, 8], 2)
    net(torch.randn(4, 6)).sum().backward(inputs=[net[-1].bias])
    assert calls == {"weight": 0, "input": 0}
    x = torch.randn(4, 6, requires_grad=True)
    net(x).sum().backward(inputs=[x])
    assert calls == {"weight": 0, "input": 3}
