"""SAC-N: soft actor-critic with N critics and no other conservatism (An et al., 2021).

Critic, for each member e:  L_Q = E[ (Q_e(s, a) - y)^2 ],
    y = r + gamma (1 - terminated) ( min_{e'} Q'_{e'}(s', a') - alpha log pi(a'|s') ),  a' ~ pi(s')
Actor:        L_pi = E[ alpha log pi(a|s) - min_e Q_e(s, a) ],  a ~ pi(s)
Temperature:  L_alpha = -E[ log alpha (log pi(a|s) + H_target) ],  H_target = -|A|

A fused update takes a batch with a leading K dim: K critic (+ target) updates, then
one actor and temperature update on the K minibatches concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.config import option
from agent.learners.common import (build_sac_parts, ensemble_td_loss, LearnerParts, flatten, minibatches, normalize_batch, sac_actor_loss, soft_target,
                                   step, actor_temperature_step)
from agent.nets import module_params, soft_update


@dataclass
class SACNConfig:
    hidden_dims: list[int] = option([256, 256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(10, "critics in the ensemble (N)", min=1)
    layer_norm: bool = option(False, "LayerNorm after each hidden layer of the critics")
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(3e-4, "temperature learning rate", gt=0)
    initial_alpha: float = option(1.0, "initial temperature", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


class SACN(LearnerParts):
    algo = "sacn"

    def __init__(self, cfg: SACNConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        build_sac_parts(self, cfg, obs_dim, act_dim, device)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        for mb in minibatches(batch):
            y = soft_target(self.critic_target, self.actor, self.temperature().detach(), mb, self.cfg.gamma)
            loss, metrics = ensemble_td_loss(self.critic, y, mb)
            step(self.critic_opt, loss, module_params(self.critic))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
        flat = flatten(batch)
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), flat["obs"])
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
