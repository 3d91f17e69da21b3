"""Network pieces shared by every learner: MLPs, the observation normalizer, actors."""
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
        layers.append(nn.ReLU())
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


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)); log-probabilities include the tanh Jacobian."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_dim)
        self.net = mlp(obs_dim, hidden_dims, 2 * act_dim)

    def _dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(self.normalizer(obs)).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of given actions in (-1, 1), summed over action dims."""
        mu, log_std = self._dist_params(obs)
        action = action.clamp(-_ATANH_LIMIT, _ATANH_LIMIT)
        u = torch.atanh(action)
        gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        jacobian = torch.log1p(-action.pow(2) + 1e-6)
        return (gauss - jacobian).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mu, log_std = self._dist_params(obs)
        if deterministic:
            return torch.tanh(mu)
        return torch.tanh(mu + log_std.exp() * torch.randn_like(mu))


class DeterministicActor(nn.Module):
    """a = tanh(f(s))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_dim)
        self.net = mlp(obs_dim, hidden_dims, act_dim)

    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.net(self.normalizer(obs)))


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)
