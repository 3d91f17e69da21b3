"""The one-autograd-node networks (agent.nets: MLP via _MLPFunction, CriticEnsemble via
_EnsembleMLP) against the plain per-layer graph of the same modules: outputs and every
gradient equal, also when only some gradients are asked for; and the critic's action
gradient against finite differences."""
import pytest
import torch
from torch import nn

from agent.nets import CriticEnsemble, mlp


def _plain(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for module in seq:  # module by module: the per-layer autograd graph
        x = module(x)
    return x


@pytest.mark.parametrize("batch", [1, 4, 257])
def test_mlp_one_node_equals_per_layer_graph(batch):
    torch.manual_seed(batch)
    net = mlp(7, [32, 16], 3)
    x = torch.randn(batch, 7, requires_grad=True)
    out = net(x)
    out_ref = _plain(net, x.clone())
    assert torch.equal(out, out_ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *net.parameters()], g)
    x_ref = x.detach().clone().requires_grad_(True)
    grads_ref = torch.autograd.grad(_plain(net, x_ref), [x_ref, *net.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("members,batch", [(1, 3), (10, 4), (5, 128)])
def test_critic_ensemble_one_node_equals_per_layer_graph(members, batch):
    torch.manual_seed(members * 100 + batch)
    critic = CriticEnsemble(6, 2, [16, 16], ensemble_size=members)
    obs, action = torch.randn(batch, 6), torch.randn(batch, 2, requires_grad=True)
    q = critic(obs, action)
    x = torch.cat([obs, action], -1).unsqueeze(0).expand(members, -1, -1)
    q_ref = _plain(critic.net, x).squeeze(-1)
    assert q.shape == (members, batch)
    assert torch.equal(q, q_ref)
    g = torch.randn_like(q)
    params = list(critic.parameters())
    grads = torch.autograd.grad(q, [action, *params], g)
    grads_ref = torch.autograd.grad(q_ref, [action, *params], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_critic_gradient_reaches_only_what_is_asked():
    """Under an actor loss the critic is frozen: the action gets its gradient, the
    critic's parameters none."""
    torch.manual_seed(0)
    critic = CriticEnsemble(6, 2, [16, 16], ensemble_size=3)
    for p in critic.parameters():
        p.requires_grad_(False)
    action = torch.randn(5, 2, requires_grad=True)
    critic(torch.randn(5, 6), action).min(0).values.sum().backward()
    assert action.grad is not None and torch.isfinite(action.grad).all() and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_action_gradient_matches_finite_differences(layer_norm):
    """The gradient an actor follows, dQ/da, checked against central differences in float64
    (the one-node backward without LayerNorm, the per-layer graph with it)."""
    torch.manual_seed(3)
    critic = CriticEnsemble(6, 2, [16, 16], ensemble_size=5, layer_norm=layer_norm).double()
    obs, action = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    g = torch.randn(5, 7, dtype=torch.float64)
    a = action.clone().requires_grad_(True)
    grad = torch.autograd.grad((critic(obs, a) * g).sum(), a)[0]
    eps, fd = 1e-6, torch.zeros_like(action)
    with torch.no_grad():
        for i in range(action.shape[0]):
            for j in range(action.shape[1]):
                up, down = action.clone(), action.clone()
                up[i, j] += eps
                down[i, j] -= eps
                fd[i, j] = ((critic(obs, up) - critic(obs, down)) * g).sum() / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-7)
