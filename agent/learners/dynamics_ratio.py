"""A conditional estimate of the dynamics ratio P_real(s'|s,a) / P_sim(s'|s,a) (the idea of
H2O+, Niu et al. 2023), for weighting simulated transitions by how the real robot would
have moved.

The two-classifier ratio (DARC, H2O) divides a (s, a, s') classifier by a (s, a) one; it
identifies the dynamics only when the (s, a) classifier is Bayes-optimal and the real and
simulated (s, a) overlap. Here both classes share the same (s, a), so no (s, a) term is
needed:

* ``RealDynamics``: an ensemble of K Gaussian models s' ~ N(s + mu_k(s, a), sigma_k(s, a)^2)
  fitted on the real data (normalized units), each member on its own bootstrap draw;
* ``ConditionalRatio``: a classifier C(s, a, s') trained only at simulated (s, a), label 1
  for s' sampled from the model of the real dynamics there, label 0 for the simulator's s'.
  With balanced classes its logit at the optimum is log P_real(s'|s,a) - log P_sim(s'|s,a).
  Gaussian noise of std ``noise`` is added to both classes' s' while it trains, so that a
  deterministic simulator's s' (a point) and the model's samples overlap when they agree;
* ``weights``: w = clip(exp(logit), w_min, 1), except where the ensemble's disagreement at
  (s, a) (the std of its members' means) exceeds the gap it predicts (the distance from
  its mean to the simulator's s'): there the model cannot tell, and w = 1.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from agent.nets import VectorizedLinear, mlp

LOG_STD_MIN, LOG_STD_MAX = -6.0, 1.0


class RealDynamics(nn.Module):
    """forward(obs [B, o], action [B, a]) -> mean, log_std, each [K, B, o]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], members: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim + act_dim
        for width in hidden_dims:
            layers += [VectorizedLinear(last, width, members), nn.SiLU()]
            last = width
        layers.append(VectorizedLinear(last, 2 * obs_dim, members))
        self.net = nn.Sequential(*layers)
        self.members = members

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], -1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        delta, log_std = self.net(x).chunk(2, -1)
        base = obs if obs.dim() == 3 else obs.unsqueeze(0)
        return base + delta, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def loss(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Gaussian negative log-likelihood; inputs [K, B, .] give each member its own rows."""
        mean, log_std = self(obs, action)
        target = next_obs if next_obs.dim() == 3 else next_obs.unsqueeze(0)
        return (0.5 * ((target - mean) / log_std.exp()) ** 2 + log_std).sum(-1).mean()

    def sample(self, obs: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One s' per row [B, o] from a member drawn uniformly for that row."""
        mean, log_std = self(obs, action)
        pick = torch.randint(self.members, (obs.shape[0],), device=obs.device, generator=generator)
        rows = torch.arange(obs.shape[0], device=obs.device)
        noise = torch.randn(mean.shape[1:], device=obs.device, generator=generator)
        return mean[pick, rows] + log_std[pick, rows].exp() * noise

    def disagreement_and_gap(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the RMS over dims of the members' spread of means, and of the ensemble
        mean's distance to ``next_obs``."""
        mean, _ = self(obs, action)
        spread = mean.std(0, unbiased=False).pow(2).mean(-1).sqrt()
        gap = (mean.mean(0) - next_obs).pow(2).mean(-1).sqrt()
        return spread, gap


class ConditionalRatio(nn.Module):
    """logit(s, a, s') ~ log P_real(s'|s,a) / P_sim(s'|s,a), trained at simulated (s, a)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], noise: float = 0.1):
        super().__init__()
        self.net = mlp(2 * obs_dim + act_dim, hidden_dims, 1)
        self.noise = noise

    def forward(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action, next_obs], -1)).squeeze(-1)

    def loss(self, obs: torch.Tensor, action: torch.Tensor, sim_next: torch.Tensor, model_next: torch.Tensor
             ) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of model samples (label 1) against the simulator's s' (label 0)."""
        real_in = model_next + self.noise * torch.randn_like(model_next)
        sim_in = sim_next + self.noise * torch.randn_like(sim_next)
        logit_real, logit_sim = self(obs, action, real_in), self(obs, action, sim_in)
        loss = F.softplus(-logit_real).mean() + F.softplus(logit_sim).mean()
        accuracy = 0.5 * ((logit_real > 0).float().mean() + (logit_sim < 0).float().mean())
        return loss, {"ratio_loss": loss.detach(), "ratio_acc": accuracy.detach()}


def weights(model: RealDynamics, ratio: ConditionalRatio, obs: torch.Tensor, action: torch.Tensor,
            sim_next: torch.Tensor, w_min: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """w for simulated rows (normalized units), with the fallback to 1 where the model is unsure."""
    with torch.no_grad():
        log_w = ratio(obs, action, sim_next).clamp(max=0.0)
        spread, gap = model.disagreement_and_gap(obs, action, sim_next)
        unsure = spread > gap
        w = torch.where(unsure, torch.ones_like(log_w), log_w.exp().clamp(min=w_min))
    return w, {"ratio_unsure": unsure.float().mean(), "log_w_mean": torch.where(unsure, 0.0, log_w).mean()}
