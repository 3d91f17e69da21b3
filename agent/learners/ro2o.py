"""RO2O: robust offline-to-online RL via ensemble uncertainty and smoothness
(Yang et al., 2024; the RORL regularizers on a SAC-N base). Pretrains itself offline
(the fine-tuning loop's ``offline_steps``), then fine-tunes online after
:meth:`RO2O.start_online`.

With E critics (10), n = 20 perturbations d ~ U[-eps, eps]^|S| (eps 0.01, normalized
states), Q_e the critics and Q'_e the targets:
    y = r + gamma (1 - terminated) ( min_e Q'_e(s', a') - alpha log pi(a'|s') ),  a' ~ pi(s')
    L_TD     = sum_e E[ (Q_e(s, a) - y)^2 ]
    L_smooth = sum_e E_s[ max_d  c(Delta) Delta^2 ],  Delta = Q_e(s + d, a) - Q_e(s, a),
               c = 0.8 when Delta > 0 else 0.2                                   (eta 1e-4)
    L_ood    = sum_e E_{s, d}[ (Q_e(s + d, a~) - sg[Q_e(s + d, a~) - lambda std_e' Q_e'(s + d, a~)])^2 ],
               a~ ~ pi(s + d); lambda decays linearly from 1.0 to 0.1 offline       (beta_ood 0.1)
    L_Q      = L_TD + eta L_smooth + beta_ood L_ood
    L_pi     = E[ alpha log pi(a|s) - min_e Q_e(s, a) ] + beta_policy E_s[ max_d KLsym(pi(s), pi(s + d)) ]
               (KL of the pre-tanh Gaussians, closed form)                        (beta_policy 1.0)
    L_alpha  = -E[ log alpha (log pi(a|s) + H_target) ],  H_target = -|A|
Online: the regularizers stay, with lambda fixed at ``online_ood_lambda`` (the paper);
``online_regularizers="drop"`` removes them online as the released code does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from agent.config import option
from agent.learners.common import (build_sac_parts, LearnerParts, ensemble_td_loss, flatten, minibatches, normalize_batch,
                                   sac_actor_loss, soft_target, step, actor_temperature_step)
from agent.nets import CriticEnsemble, TanhGaussianActor, soft_update


@dataclass
class RO2OConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(10, "critics in the ensemble", min=1)
    layer_norm: bool = option(False, "LayerNorm after each hidden layer of the critics")
    perturb_eps: float = option(0.01, "radius of the L-inf ball of state perturbations (normalized states)", min=0)
    num_perturbations: int = option(20, "perturbations sampled per state; the worst one is penalized", min=1)
    q_smooth_weight: float = option(1e-4, "eta: weight of the Q smoothness term", min=0)
    q_smooth_tau: float = option(0.8, "weight of a positive Q difference (1 - tau for a negative one)", min=0, max=1)
    ood_weight: float = option(0.1, "beta_ood: weight of the out-of-distribution term", min=0)
    ood_lambda_start: float = option(1.0, "lambda (std multiplier of the OOD target) at the first offline update", min=0)
    ood_lambda_end: float = option(0.1, "lambda after ood_lambda_updates offline updates", min=0)
    ood_lambda_updates: int = option(0, "offline updates over which lambda decays linearly; 0: the whole offline phase "
                                        "(the loop's offline_steps), so that lambda meets online_ood_lambda at the switch", min=0)
    online_ood_lambda: float = option(0.1, "fixed lambda online", min=0)
    policy_smooth_weight: float = option(1.0, "beta_policy: weight of the policy smoothness term", min=0)
    online_regularizers: Literal["keep", "drop"] = option("keep", "online: keep the regularizers (paper) or drop them (released code)")
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(3e-4, "temperature learning rate", gt=0)
    initial_alpha: float = option(1.0, "initial temperature", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


class Schedule(nn.Module):
    """Update count and phase, saved with the learner so that a resumed run keeps lambda."""

    def __init__(self):
        super().__init__()
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("online", torch.zeros((), dtype=torch.bool))


def perturb(obs: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """[n, B, obs]: n uniform perturbations of each state in the L-inf ball of radius eps."""
    return obs.unsqueeze(0) + (torch.rand(n, *obs.shape, device=obs.device) * 2 - 1) * eps


def q_smoothness(critic: CriticEnsemble, obs: torch.Tensor, action: torch.Tensor, noisy_obs: torch.Tensor,
                 tau: float) -> torch.Tensor:
    """sum_e mean_s max_d of the asymmetric squared difference Q_e(s + d, a) - Q_e(s, a)."""
    n, b = noisy_obs.shape[:2]
    q = critic(obs, action)  # [E, B]
    q_noisy = critic(noisy_obs.reshape(n * b, -1), action.repeat(n, 1)).view(-1, n, b)
    diff = q_noisy - q.unsqueeze(1)
    weighted = torch.where(diff > 0, tau, 1.0 - tau) * diff**2
    return weighted.max(1).values.mean(1).sum()


def ood_loss(critic: CriticEnsemble, actor: TanhGaussianActor, noisy_obs: torch.Tensor, lam: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Q at perturbed states with policy actions regressed toward sg(Q - lambda std_ensemble)."""
    flat = noisy_obs.reshape(-1, noisy_obs.shape[-1])
    with torch.no_grad():
        action, _ = actor.sample(flat)
    q = critic(flat, action)  # [E, nB]
    std = q.std(0)
    target = (q - lam * std.unsqueeze(0)).detach()
    return ((q - target) ** 2).mean(1).sum(), std.mean().detach()


def gaussian_symmetric_kl(mu_p, log_std_p, mu_q, log_std_q) -> torch.Tensor:
    """KL(p||q) + KL(q||p) of diagonal Gaussians, summed over dims."""
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    sq = (mu_p - mu_q) ** 2
    return (0.5 * ((var_p + sq) / var_q + (var_q + sq) / var_p) - 1.0).sum(-1)


def policy_smoothness(actor: TanhGaussianActor, obs: torch.Tensor, noisy_obs: torch.Tensor) -> torch.Tensor:
    """mean_s max_d KLsym(pi(.|s), pi(.|s + d)) of the pre-tanh Gaussians."""
    mu, log_std = actor.dist_params(obs)
    mu_n, log_std_n = actor.dist_params(noisy_obs)
    return gaussian_symmetric_kl(mu.unsqueeze(0), log_std.unsqueeze(0), mu_n, log_std_n).max(0).values.mean()


class RO2O(LearnerParts):
    algo = "ro2o"

    def __init__(self, cfg: RO2OConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        if cfg.ood_lambda_updates < 0:
            raise ValueError(f"ood_lambda_updates must be >= 0 (0: the fine-tuning loop's offline phase), "
                             f"got {cfg.ood_lambda_updates}.")
        build_sac_parts(self, cfg, obs_dim, act_dim, device)
        self.schedule = Schedule()  # host-side counters: read every update without a device sync
        self.parts["schedule"] = self.schedule

    def start_online(self) -> None:
        """The offline-to-online switch: lambda is fixed from now on (or the terms dropped)."""
        self.schedule.online.fill_(True)

    def ood_lambda(self) -> float:
        if bool(self.schedule.online):
            return self.cfg.online_ood_lambda
        frac = min(int(self.schedule.updates) / max(self.cfg.ood_lambda_updates, 1), 1.0)
        return self.cfg.ood_lambda_start + (self.cfg.ood_lambda_end - self.cfg.ood_lambda_start) * frac

    def regularized(self) -> bool:
        return not (bool(self.schedule.online) and self.cfg.online_regularizers == "drop")

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        cfg, regularized, lam = self.cfg, self.regularized(), self.ood_lambda()
        metrics: dict[str, torch.Tensor] = {}
        alpha = self.temperature().detach()
        for mb in minibatches(batch):
            y = soft_target(self.critic_target, self.actor, alpha, mb, cfg.gamma)
            loss, metrics = ensemble_td_loss(self.critic, y, mb)
            if regularized:
                noisy = perturb(mb["obs"], cfg.num_perturbations, cfg.perturb_eps)
                smooth = q_smoothness(self.critic, mb["obs"], mb["action"], noisy, cfg.q_smooth_tau)
                ood, ood_std = ood_loss(self.critic, self.actor, noisy, lam)
                loss = loss + cfg.q_smooth_weight * smooth + cfg.ood_weight * ood
                metrics = {**metrics, "q_smooth_loss": smooth.detach(), "ood_loss": ood.detach(), "ood_q_std": ood_std}
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, cfg.tau)
            self.schedule.updates.add_(1)
        obs = flatten(batch)["obs"]
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), obs)
        if regularized:
            kl = policy_smoothness(self.actor, obs, perturb(obs, cfg.num_perturbations, cfg.perturb_eps))
            loss = loss + cfg.policy_smooth_weight * kl
            actor_metrics["policy_smooth_kl"] = kl.detach()
        return {**metrics, **actor_metrics, "ood_lambda": torch.tensor(lam),
                **actor_temperature_step(self, loss, log_prob)}
