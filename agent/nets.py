"""Network pieces shared by every learner, written once.

* :class:`ObsNormalizer` -- dataset statistics as buffers (saved in checkpoints).
* :class:`CriticEnsemble` -- E critics as stacked weights ``[E, in, out]`` run with one
  batched matmul per layer (no Python loop over members), optional LayerNorm.
* :class:`ValueNetwork` -- V(s) for IQL.
* :class:`TanhGaussianActor` (SAC family), :class:`GaussianActor` (likelihood-based
  imitation), :class:`DeterministicActor`.
* :class:`Temperature` -- auto-tuned entropy coefficient.
* :func:`soft_update` -- one fused lerp over all target parameters.

Networks take already-normalized observations; the learner owns the normalizer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_ATANH_LIMIT = 1.0 - 1e-6


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden_dims:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(nn.ReLU(inplace=True))  # the Linear/LayerNorm output is not kept for backward
        last = width
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class ObsNormalizer(nn.Module):
    """(obs - mean) / std with statistics fixed from the dataset; saved as buffers."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, mean: np.ndarray, var: np.ndarray, eps: float = 1e-3) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.sqrt(var) + eps, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


# -- ensembles -------------------------------------------------------------------------
class VectorizedLinear(nn.Module):
    """E independent linear layers: x [E, B, in] -> [E, B, out] = x @ W[e] + b[e]."""

    def __init__(self, in_features: int, out_features: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        # the same initialization nn.Linear gives each member
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the feature dim with separate affine parameters per member."""

    def __init__(self, features: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """Q_e(s, a) for e = 1..E. forward(obs [B, o], action [B, a]) -> [E, B].

    Inputs may also carry a leading member dim ([E, B, .]) so that each member sees its
    own batch (bootstrapped ensembles)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], ensemble_size: int = 2,
                 layer_norm: bool = False):
        super().__init__()
        self.ensemble_size = ensemble_size
        layers: list[nn.Module] = []
        last = obs_dim + act_dim
        for width in hidden_dims:
            layers.append(VectorizedLinear(last, width, ensemble_size))
            if layer_norm:
                layers.append(VectorizedLayerNorm(width, ensemble_size))
            # in place: the matmul's (or LayerNorm's) output is not kept for backward,
            # so this saves one [E, B, width] allocation per layer
            layers.append(nn.ReLU(inplace=True))
            last = width
        layers.append(VectorizedLinear(last, 1, ensemble_size))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble_size, -1, -1)
        return self.net(x).squeeze(-1)


class ValueNetwork(nn.Module):
    """V(s) -> [B]."""

    def __init__(self, obs_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 1, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# -- actors ----------------------------------------------------------------------------
class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)); log-probabilities include the tanh Jacobian."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim, layer_norm)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of given actions in (-1, 1), summed over action dims."""
        mu, log_std = self.dist_params(obs)
        action = action.clamp(-_ATANH_LIMIT, _ATANH_LIMIT)
        return _squashed_log_prob(torch.atanh(action), action, mu, log_std)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized sample and its log-probability."""
        mu, log_std = self.dist_params(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        action = torch.tanh(u)
        return action, _squashed_log_prob(u, action, mu, log_std)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mu, log_std = self.dist_params(obs)
        if deterministic:
            return torch.tanh(mu)
        return torch.tanh(mu + log_std.exp() * torch.randn_like(mu))


def _squashed_log_prob(u, action, mu, log_std) -> torch.Tensor:
    gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gauss - torch.log1p(-action.pow(2) + 1e-6)).sum(-1)


class GaussianActor(nn.Module):
    """a ~ N(tanh(mu(s)), sigma(s)): a Gaussian over actions whose mean is bounded.

    Unlike the tanh-squashed distribution, its likelihood stays finite for dataset
    actions on the bounds (clipped noisy demonstrations), so it is the head for
    likelihood-based imitation (BC, IQL's advantage-weighted regression)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim, layer_norm)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return torch.tanh(mu), log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.dist_params(obs)
        return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std = self.dist_params(obs)
        if deterministic:
            return mean
        return (mean + log_std.exp() * torch.randn_like(mean)).clamp(-1.0, 1.0)


class DeterministicActor(nn.Module):
    """a = tanh(f(s))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims, act_dim, layer_norm)

    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.net(obs))


# -- temperature and targets -----------------------------------------------------------
class Temperature(nn.Module):
    """alpha = exp(log_alpha), tuned so that the policy entropy tracks ``target_entropy``:
    L(alpha) = -E[ log_alpha * (log pi(a|s) + target_entropy) ]."""

    def __init__(self, initial: float = 1.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def loss(self, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
        return -(self.log_alpha * (log_prob.detach() + target_entropy)).mean()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, one fused lerp over all parameters."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


@torch.no_grad()
def act(actor: nn.Module, normalizer: ObsNormalizer, obs: np.ndarray, deterministic: bool,
        device: torch.device) -> np.ndarray:
    """Numpy in, numpy out, for one observation or a batch."""
    obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=device)
    single = obs_t.ndim == 1
    action = actor(normalizer(obs_t[None] if single else obs_t), deterministic=deterministic).cpu().numpy()
    return action[0] if single else action
