"""Implicit Q-learning (Kostrikov et al., 2021).

Value (expectile tau):  L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_e Q'_e(s, a) - V(s)
Critic:                 L_Q = mean_e E[ (Q_e(s, a) - (r + gamma (1 - terminated) V(s')))^2 ]
Actor (AWR):            L_pi = -E[ min(exp(beta (min_e Q'_e(s, a) - V(s))), w_max) log pi(a|s) ]
                        with pi(a|s) = N(a; tanh(mu(s)), sigma(s)^2), as the authors' code
Actor (DDPG+BC):        L_pi = -E[ alpha Q(s, m(s)) / sg(E|Q(s, m(s))|) ] + E[ (m(s) - a)^2 ]
                               - E[ log N(a; sg(m(s)), sigma(s)^2) ],  m = tanh(mu),  Q = min_e Q_e
                        ``extraction="ddpg_bc"``: TD3+BC's actor on IQL's in-sample critic, the
                        extraction "Is Value Learning Really the Main Bottleneck in Offline RL?"
                        (Park et al., 2024) finds ahead of AWR; the last term fits sigma (the
                        exploration noise online) to the data's spread about the mean.

Robust variants (RIQL, ``agent/learners/riql.py``): ``q_aggregate="quantile"`` replaces
min_e Q'_e by the ensemble's ``quantile`` (linear interpolation) in the value target and the
advantage; ``critic_loss="huber"`` replaces the squared TD error by the Huber loss
(0.5 d^2 for |d| <= delta, delta (|d| - delta / 2) beyond).

tau = 0.7 for locomotion, 0.9 for sparse-reward manipulation; beta 3 to 10; w_max = 100.
Targets are never differentiated: the critic target uses V(s') detached, the value and
actor targets use the target critics.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from agent.config import option
from agent.learners.common import LearnerParts, adam, flatten, minibatches, normalize_batch, not_done, step
from agent.nets import CriticEnsemble, GaussianActor, ObsNormalizer, ValueNetwork, soft_update


@dataclass
class IQLConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor, critics and value", min=1)
    num_critics: int = option(2, "critics in the ensemble", min=1)
    expectile: float = option(0.7, "expectile tau of the value regression", gt=0, lt=1)
    beta: float = option(3.0, "inverse temperature of the advantage weights", min=0)
    max_weight: float = option(100.0, "clip of exp(beta * advantage)", gt=0)
    extraction: Literal["awr", "ddpg_bc"] = option("awr", "policy extraction: advantage-weighted regression (the paper) or "
                                                          "DDPG+BC, the actor following the critic's gradient next to a BC term")
    ddpg_alpha: float = option(2.5, "DDPG+BC: weight of the normalized Q term against the BC term (TD3+BC's alpha)", min=0)
    q_aggregate: Literal["min", "quantile"] = option("min", "the target critics' estimate in the value target and the advantage: their min, or their quantile")
    quantile: float = option(0.25, "q_aggregate=quantile: which quantile of the ensemble", min=0, max=1)
    critic_loss: Literal["mse", "huber"] = option("mse", "the critic's TD loss: squared error, or Huber (robust to heavy-tailed targets)")
    huber_delta: float = option(1.0, "critic_loss=huber: where the loss turns from quadratic to linear", gt=0)
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    value_lr: float = option(3e-4, "value learning rate", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def ensemble_estimate(qs: torch.Tensor, cfg: IQLConfig) -> torch.Tensor:
    """[E, B] member values -> [B]: their min (IQL) or their ``quantile`` (RIQL)."""
    if cfg.q_aggregate == "quantile":
        return torch.quantile(qs, cfg.quantile, dim=0)
    return qs.min(0).values


def value_loss(value: ValueNetwork, critic_target: CriticEnsemble, batch: dict, cfg: IQLConfig) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        target_q = ensemble_estimate(critic_target(batch["obs"], batch["action"]), cfg)
    v = value(batch["obs"])
    loss = expectile_loss(target_q - v, cfg.expectile)
    return loss, {"value_loss": loss.detach(), "v_mean": v.mean().detach()}


def critic_loss(critic: CriticEnsemble, value: ValueNetwork, batch: dict, cfg: IQLConfig) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        y = batch["reward"] + cfg.gamma * not_done(batch) * value(batch["next_obs"])
    qs = critic(batch["obs"], batch["action"])
    if cfg.critic_loss == "huber":
        loss = F.huber_loss(qs, y.unsqueeze(0).expand_as(qs), delta=cfg.huber_delta)
    else:
        loss = ((qs - y.unsqueeze(0)) ** 2).mean()
    return loss, {"critic_loss": loss.detach(), "q_mean": qs.mean().detach()}


def actor_loss(actor: GaussianActor, value: ValueNetwork, critic_target: CriticEnsemble, batch: dict,
               cfg: IQLConfig) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        advantage = ensemble_estimate(critic_target(batch["obs"], batch["action"]), cfg) - value(batch["obs"])
        weight = torch.exp(cfg.beta * advantage).clamp(max=cfg.max_weight)
    loss = -(weight * actor.log_prob(batch["obs"], batch["action"])).mean()
    return loss, {"actor_loss": loss.detach(), "adv_weight": weight.mean().detach()}


def ddpg_bc_actor_loss(actor: GaussianActor, critic: CriticEnsemble, batch: dict, cfg: IQLConfig) -> tuple[torch.Tensor, dict]:
    mean, log_std = actor.dist_params(batch["obs"])
    q = critic(batch["obs"], mean).min(0).values
    q_term = -(cfg.ddpg_alpha / q.abs().mean().detach()) * q.mean()
    bc = ((mean - batch["action"]) ** 2).mean()
    z = (batch["action"] - mean.detach()) / log_std.exp()
    sigma_nll = (0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1).mean()
    loss = q_term + bc + sigma_nll
    return loss, {"actor_loss": loss.detach(), "bc_mse": bc.detach(), "q_policy": q.mean().detach()}


class IQL(LearnerParts):
    algo = "iql"

    def __init__(self, cfg: IQLConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.normalizer = ObsNormalizer(obs_dim).to(self.device)
        self.actor = GaussianActor(obs_dim, act_dim, cfg.hidden_dims).to(self.device)
        self.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_dims, cfg.num_critics).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNetwork(obs_dim, cfg.hidden_dims).to(self.device)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)
        self.value_opt = adam(self.value.parameters(), cfg.value_lr, self.device)
        self.parts = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                      "value": self.value, "normalizer": self.normalizer, "actor_opt": self.actor_opt,
                      "critic_opt": self.critic_opt, "value_opt": self.value_opt}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        for mb in minibatches(batch):
            loss, v_metrics = value_loss(self.value, self.critic_target, mb, self.cfg)
            step(self.value_opt, loss, list(self.value.parameters()))
            loss, q_metrics = critic_loss(self.critic, self.value, mb, self.cfg)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            metrics = {**v_metrics, **q_metrics}
        if self.cfg.extraction == "ddpg_bc":
            loss, a_metrics = ddpg_bc_actor_loss(self.actor, self.critic, flatten(batch), self.cfg)
        else:
            loss, a_metrics = actor_loss(self.actor, self.value, self.critic_target, flatten(batch), self.cfg)
        step(self.actor_opt, loss, list(self.actor.parameters()))
        return {**metrics, **a_metrics}
