"""Conservative Q-learning (Kumar et al., 2020), continuous actions, CQL(H) with
importance-sampled log-sum-exp.

Critic, for each member e:
    L_Q,e = E[ (Q_e(s, a) - y)^2 ] + alpha_cql * (E_s[ T log sum_j exp(Q_e(s, a_j) - log mu(a_j)) / T ] - E[Q_e(s, a)])
    y = r + gamma (1 - terminated) min_e' Q'_e'(s', a'),  a' ~ pi(s')   (optionally max over
        n sampled a' -- the max-backup -- and optionally minus alpha log pi(a'|s'))
    a_j: n uniform actions (log mu = -|A| log 2), n from pi(.|s) and n from pi(.|s')
        (log mu = their log-probabilities), all evaluated at s.
Lagrange variant: alpha_cql is scaled by alpha' = exp(log alpha') clipped to [0, 1e6],
    tuned to keep the gap at ``target_action_gap``: L(alpha') = -alpha' alpha_cql (gap - target).
Actor and temperature: SAC, with the min over the ensemble.

Cal-QL (``agent/learners/calql.py``) passes a lower bound: the Q-values of the policy's
actions inside the log-sum-exp are clamped from below by the Monte-Carlo return.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from agent.config import option
from agent.learners.common import (build_sac_parts, LearnerParts, adam, flatten, minibatches, normalize_batch, not_done, sac_actor_loss,
                                   step, actor_temperature_step)
from agent.nets import CriticEnsemble, TanhGaussianActor, soft_update


@dataclass
class CQLConfig:
    hidden_dims: list[int] = option([256, 256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(2, "critics in the ensemble", min=1)
    layer_norm: bool = option(False, "LayerNorm after each hidden layer of the critics")
    alpha_cql: float = option(5.0, "weight of the conservative penalty", min=0)
    num_sampled_actions: int = option(10, "actions sampled per source (uniform, pi(s), pi(s')) for the log-sum-exp", min=1)
    cql_temperature: float = option(1.0, "temperature T of the log-sum-exp", gt=0)
    lagrange: bool = option(False, "tune the penalty weight to keep the gap at target_action_gap")
    target_action_gap: float = option(5.0, "target of the Lagrange variant", min=0)
    max_backup: bool = option(False, "target: max over sampled next actions of the ensemble min")
    backup_entropy: bool = option(False, "subtract alpha log pi(a'|s') in the target")
    actor_lr: float = option(1e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(1e-4, "temperature learning rate (the Lagrange multiplier uses critic_lr, as in the reference code)", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat_interleave(n, dim=0)


def bellman_target(critic_target: CriticEnsemble, actor: TanhGaussianActor, alpha: torch.Tensor, batch: dict,
                   cfg: CQLConfig) -> torch.Tensor:
    with torch.no_grad():
        next_obs = batch["next_obs"]
        if cfg.max_backup:
            n = cfg.num_sampled_actions
            action, log_prob = actor.sample(_repeat(next_obs, n))
            q = critic_target(_repeat(next_obs, n), action).min(0).values.view(-1, n)
            best = q.argmax(1, keepdim=True)
            next_q = q.gather(1, best).squeeze(1)
            next_log_prob = log_prob.view(-1, n).gather(1, best).squeeze(1)
        else:
            action, next_log_prob = actor.sample(next_obs)
            next_q = critic_target(next_obs, action).min(0).values
        if cfg.backup_entropy:
            next_q = next_q - alpha * next_log_prob
        return batch["reward"] + cfg.gamma * not_done(batch) * next_q


def conservative_gap(critic: CriticEnsemble, actor: TanhGaussianActor, batch: dict, q_data: torch.Tensor,
                     cfg: CQLConfig, lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Per-member gap [E]: E_s[T logsumexp_j((Q(s, a_j) - log mu(a_j)) / T)] - E[Q(s, a)]."""
    obs, next_obs, n = batch["obs"], batch["next_obs"], cfg.num_sampled_actions
    batch_size, act_dim = obs.shape[0], batch["action"].shape[-1]
    obs_rep = _repeat(obs, n)
    with torch.no_grad():
        random_actions = torch.rand(batch_size * n, act_dim, device=obs.device) * 2 - 1
        pi_actions, pi_log_prob = actor.sample(obs_rep)
        next_pi_actions, next_pi_log_prob = actor.sample(_repeat(next_obs, n))
    q_rand = critic(obs_rep, random_actions).view(-1, batch_size, n)
    q_pi = critic(obs_rep, pi_actions).view(-1, batch_size, n)
    q_next_pi = critic(obs_rep, next_pi_actions).view(-1, batch_size, n)
    if lower_bound is not None:  # Cal-QL: policy-action values no lower than the MC return
        bound = lower_bound.view(1, batch_size, 1)
        q_pi, q_next_pi = torch.maximum(q_pi, bound), torch.maximum(q_next_pi, bound)
    cat = torch.cat([
        q_rand + act_dim * math.log(2.0),
        q_pi - pi_log_prob.view(1, batch_size, n),
        q_next_pi - next_pi_log_prob.view(1, batch_size, n),
    ], dim=-1)
    ood = torch.logsumexp(cat / cfg.cql_temperature, dim=-1) * cfg.cql_temperature  # [E, B]
    gap = (ood - q_data).mean(1)
    return gap, {"cql_ood_q": ood.mean().detach(), "cql_gap": gap.mean().detach()}


class LagrangeMultiplier(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_value = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.Tensor:
        return self.log_value.exp().clamp(0.0, 1e6)


def critic_loss(critic: CriticEnsemble, actor: TanhGaussianActor, y: torch.Tensor, batch: dict, cfg: CQLConfig,
                multiplier: LagrangeMultiplier | None, lower_bound: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Returns the critic loss, the Lagrange multiplier's loss (or None) and metrics."""
    qs = critic(batch["obs"], batch["action"])  # [E, B]
    td = ((qs - y.unsqueeze(0)) ** 2).mean(1)  # [E]
    gap, metrics = conservative_gap(critic, actor, batch, qs, cfg, lower_bound)
    if multiplier is None:
        penalty, multiplier_loss = cfg.alpha_cql * gap, None
    else:
        weight = multiplier()
        penalty = weight.detach() * cfg.alpha_cql * (gap - cfg.target_action_gap)
        multiplier_loss = -(weight * cfg.alpha_cql * (gap.detach() - cfg.target_action_gap)).mean()
        metrics["cql_multiplier"] = weight.detach()
    loss = (td + penalty).sum()
    return loss, multiplier_loss, {**metrics, "critic_loss": loss.detach(), "td_loss": td.mean().detach(),
                                   "q_mean": qs.mean().detach()}


class CQL(LearnerParts):
    algo = "cql"

    def __init__(self, cfg: CQLConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=1.0)
        self.multiplier: LagrangeMultiplier | None = None
        if cfg.lagrange:
            self.multiplier = LagrangeMultiplier().to(self.device)
            self.multiplier_opt = adam(self.multiplier.parameters(), cfg.critic_lr, self.device)
            self.parts.update(multiplier=self.multiplier, multiplier_opt=self.multiplier_opt)

    def lower_bound(self, batch: dict) -> torch.Tensor | None:
        return None

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        for mb in minibatches(batch):
            y = bellman_target(self.critic_target, self.actor, self.temperature().detach(), mb, self.cfg)
            loss, multiplier_loss, metrics = critic_loss(self.critic, self.actor, y, mb, self.cfg, self.multiplier,
                                                         self.lower_bound(mb))
            step(self.critic_opt, loss, list(self.critic.parameters()))
            if self.multiplier is not None and multiplier_loss is not None:
                step(self.multiplier_opt, multiplier_loss, [self.multiplier.log_value])
            soft_update(self.critic_target, self.critic, self.cfg.tau)
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), flatten(batch)["obs"])
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
