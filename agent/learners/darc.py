"""DARC: off-dynamics RL by reward correction (Eysenbach et al., 2021), the origin of H2O's
dynamics ratio and the standard off-dynamics baseline next to it.

Data as H2O's: batches half real (a fixed dataset under the real dynamics) and half sim
(online rollouts in a simulator whose dynamics differ), rows marked by ``is_real``. The two
classifiers are H2O's (``agent.learners.h2o.Discriminators``: D_sa and D_sas, label 1 =
real, trained on every row by cross-entropy with Gaussian input noise). The policy learns
from the sim rows only, with the reward corrected by the log dynamics ratio they give:

    delta_r(s, a, s') = log p_sas(real) - log p_sas(sim) - log p_sa(real) + log p_sa(sim)
    r~ = r + eta delta_r        (eta = ``correction_weight``; the ratio is not differentiated)

then SAC on the sim rows with r~ (min over the critics in the target and the actor). The real
rows train only the classifiers: a simulated transition that the real robot would not have
produced is penalized through its reward instead of being down-weighted in the TD loss (H2O).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.config import option
from agent.learners.common import (LearnerParts, actor_temperature_step, adam, build_sac_parts, ensemble_td_loss,
                                   minibatches, normalize_batch, sac_actor_loss, soft_target, step)
from agent.learners.h2o import Discriminators
from agent.nets import soft_update


@dataclass
class DARCConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(2, "critics in the ensemble", min=1)
    discriminator_dims: list[int] = option([256, 256], "hidden widths of both classifiers", min=1)
    discriminator_noise: float = option(1.0, "std of Gaussian noise on the classifiers' (normalized) inputs while training "
                                             "(DARC's regularizer)", min=0)
    discriminator_lr: float = option(3e-4, "classifier learning rate", gt=0)
    correction_weight: float = option(1.0, "eta: weight of the reward correction", min=0)
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(3e-4, "temperature learning rate", gt=0)
    initial_alpha: float = option(1.0, "initial temperature", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


def corrected_reward(discriminators: Discriminators, sim: dict, weight: float) -> torch.Tensor:
    """r + eta delta_r for sim rows (normalized obs); the correction is not differentiated."""
    with torch.no_grad():
        return sim["reward"] + weight * discriminators.log_ratio(sim["obs"], sim["action"], sim["next_obs"])


class DARC(LearnerParts):
    algo = "darc"

    def __init__(self, cfg: DARCConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        build_sac_parts(self, cfg, obs_dim, act_dim, device)
        self.discriminators = Discriminators(obs_dim, act_dim, cfg.discriminator_dims, cfg.discriminator_noise).to(self.device)
        self.disc_opt = adam(self.discriminators.parameters(), cfg.discriminator_lr, self.device)
        self.parts.update(discriminators=self.discriminators, disc_opt=self.disc_opt)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "is_real" not in batch:
            raise ValueError("DARC needs batches that mark real rows (is_real); fine-tune it with a real dataset "
                             "(--real-data) and a simulator env.")
        batch = normalize_batch(batch, self.normalizer)
        cfg = self.cfg
        metrics: dict[str, torch.Tensor] = {}
        alpha = self.temperature().detach()
        sim_obs = []
        for mb in minibatches(batch):
            disc_loss, disc_metrics = self.discriminators.loss(mb)
            step(self.disc_opt, disc_loss, list(self.discriminators.parameters()))
            sim = {k: v[~mb["is_real"]] for k, v in mb.items()}
            sim["reward"] = corrected_reward(self.discriminators, sim, cfg.correction_weight)
            y = soft_target(self.critic_target, self.actor, alpha, sim, cfg.gamma)
            loss, metrics = ensemble_td_loss(self.critic, y, sim)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, cfg.tau)
            metrics = {**metrics, **disc_metrics, "reward_correction": (sim["reward"] - mb["reward"][~mb["is_real"]]).mean()}
            sim_obs.append(sim["obs"])
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), torch.cat(sim_obs))
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
