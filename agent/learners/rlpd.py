"""RLPD: reinforcement learning with prior data (Ball et al., 2023), from scratch.

SAC with a LayerNorm critic ensemble (E = 10), a high update-to-data ratio and
symmetric sampling (each batch half offline, half online; the fine-tuning loop
draws it, ``offline_ratio`` 0.5). Nothing is pretrained.

Critic, for each member e:
    L_Q = sum_e E[ (Q_e(s, a) - y)^2 ],
    y = r + gamma (1 - terminated) ( min_{e' in M} Q'_e'(s', a') - alpha log pi(a'|s') ),
    M: ``target_subset`` (2) members drawn at random each update, a' ~ pi(s')
Actor:        L_pi = E[ alpha log pi(a|s) - mean_e Q_e(s, a) ],  a ~ pi(s)  (``actor_reduce``)
Temperature:  L_alpha = -E[ log alpha (log pi(a|s) + H_target) ],  H_target = -|A| / 2
    (the authors' released code halves the usual target entropy; ``target_entropy_scale``)

A batch with a leading K dim ([K, B, ...]) runs K critic (+ target) updates, then one
actor and temperature update on the K minibatches concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from agent.config import option
from agent.learners.common import (build_sac_parts, LearnerParts, ensemble_td_loss, flatten, minibatches, normalize_batch,
                                   sac_actor_loss, step, subset_min_target, actor_temperature_step)
from agent.nets import soft_update


@dataclass
class RLPDConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(10, "critics in the ensemble", min=1)
    layer_norm: bool = option(True, "LayerNorm after each hidden layer of the critics (RLPD's key stabilizer)")
    target_subset: int = option(2, "members drawn at random whose min forms the target", min=1)
    actor_reduce: Literal["mean", "min"] = option("mean", "how the actor loss reduces the ensemble")
    target_entropy_scale: float = option(0.5, "target entropy = -scale * |A| (0.5 in the released code, 1.0 in SAC)", min=0)
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(3e-4, "temperature learning rate", gt=0)
    initial_alpha: float = option(1.0, "initial temperature", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


class RLPD(LearnerParts):
    algo = "rlpd"

    def __init__(self, cfg: RLPDConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        if not 1 <= cfg.target_subset <= cfg.num_critics:
            raise ValueError(f"target_subset must lie in [1, num_critics={cfg.num_critics}], got {cfg.target_subset}.")
        build_sac_parts(self, cfg, obs_dim, act_dim, device, target_entropy=-cfg.target_entropy_scale * float(act_dim))

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        alpha = self.temperature().detach()
        for mb in minibatches(batch):
            y = subset_min_target(self.critic_target, self.actor, alpha, mb, self.cfg.gamma, self.cfg.target_subset, True)
            loss, metrics = ensemble_td_loss(self.critic, y, mb)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), flatten(batch)["obs"],
                                                       reduce=self.cfg.actor_reduce)
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
