"""WSRL: warm-start reinforcement learning (Zhou et al., 2024).

Fine-tunes a pretrained policy online *without keeping the offline data*. The actor,
critic ensemble, temperature and optimizer states of a Cal-QL or CQL run are loaded
into a plain SAC agent (:meth:`WSRL.load_pretrained`); the fine-tuning loop then runs
a warm-up of ``warmup_steps`` environment steps with the pretrained stochastic policy
and no updates, which seeds the online buffer, and afterwards samples the online buffer
only (its ``offline_ratio`` 0; other values exist for ablations).

Critic, for each member e of E (10, LayerNorm, the authors' usual setting):
    L_Q = sum_e E[ (Q_e(s, a) - y)^2 ],
    y = r + gamma (1 - terminated) min_{e' in M} Q'_e'(s', a'),  a' ~ pi(s')
    M: 2 members drawn at random each update (REDQ); no entropy term in the target
       (``backup_entropy`` switches it on).
Actor:  L_pi = E[ alpha log pi(a|s) - Q(s, a) ],  Q = min over all E members
        (docs/algorithms.md); ``actor_reduce="mean"`` is REDQ's mean, which the SAC agent of
        the authors' robot release (wsrl-robot) also uses.
Temperature: L_alpha = -E[ log alpha (log pi(a|s) + H_target) ],  H_target = -scale |A|
             (scale 1, SAC's; ``target_entropy_scale`` 0.5 is the wsrl-robot SAC agent's and RLPD's).

UTD 4: a batch [K=4, B=256, ...] runs 4 critic (+ target) updates, then one actor and
temperature update on the 4 minibatches concatenated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from agent.config import option
from agent.learners.common import (build_sac_parts, LearnerParts, ensemble_td_loss, flatten, minibatches, normalize_batch,
                                   sac_actor_loss, step, subset_min_target, actor_temperature_step)
from agent.nets import soft_update

# what a pretrained checkpoint must hold, and the algorithms whose checkpoints hold it
PRETRAINED_PARTS = ("actor", "critic", "critic_target", "temperature", "normalizer", "actor_opt", "critic_opt", "alpha_opt")
PRETRAINED_ALGOS = ("calql", "cql", "sacn")


@dataclass
class WSRLConfig:
    hidden_dims: list[int] = option([256, 256, 256], "hidden widths of actor and critics (taken from the pretrained run)", min=1)
    num_critics: int = option(10, "critics in the ensemble (taken from the pretrained run)", min=1)
    layer_norm: bool = option(True, "LayerNorm in the critics (taken from the pretrained run)")
    actor_layer_norm: bool = option(False, "LayerNorm in the actor (the pretrained CQL/Cal-QL actors have none)")
    target_subset: int = option(2, "members drawn at random whose min forms the target (REDQ)", min=1)
    actor_reduce: Literal["min", "mean"] = option("min", "actor loss over the ensemble: min or mean (REDQ)")
    target_entropy_scale: float = option(1.0, "target entropy = -scale * |A| (1.0 as in SAC, 0.5 in the "
                                                   "wsrl-robot release and RLPD)", gt=0)
    backup_entropy: bool = option(False, "subtract alpha log pi(a'|s') in the target (WSRL does not)")
    actor_lr: float = option(1e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(1e-4, "temperature learning rate (the papers'; runs of a few thousand updates need ~3e-3, "
                                   "or the entropy bonus widens the pretrained policy before the temperature falls)", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


def matching_config(cfg: WSRLConfig, pretrained_algo: str, pretrained_config: dict) -> WSRLConfig:
    """``cfg`` with the network shape of a pretrained run, so that its weights load unchanged."""
    if pretrained_algo not in PRETRAINED_ALGOS:
        raise ValueError(f"WSRL starts from a {', '.join(PRETRAINED_ALGOS)} checkpoint, got one of {pretrained_algo!r}; "
                         f"pretrain with `agent pretrain --algo calql` first.")
    return dataclasses.replace(cfg, hidden_dims=list(pretrained_config["hidden_dims"]),
                               num_critics=int(pretrained_config["num_critics"]),
                               layer_norm=bool(pretrained_config.get("layer_norm", False)), actor_layer_norm=False)


class WSRL(LearnerParts):
    algo = "wsrl"

    def __init__(self, cfg: WSRLConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        if not 1 <= cfg.target_subset <= cfg.num_critics:
            raise ValueError(f"target_subset must lie in [1, num_critics={cfg.num_critics}], got {cfg.target_subset}.")
        if not cfg.target_entropy_scale > 0:
            raise ValueError(f"target_entropy_scale must be positive, got {cfg.target_entropy_scale}.")
        build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=1.0, actor_layer_norm=cfg.actor_layer_norm,
                        target_entropy=-cfg.target_entropy_scale * float(act_dim))

    def load_pretrained(self, learner_state: dict) -> None:
        """Take networks, temperature, normalizer and optimizer moments from a Cal-QL/CQL
        learner's state; learning rates stay this config's."""
        missing = [p for p in PRETRAINED_PARTS if p not in learner_state]
        if missing:
            raise ValueError(f"the pretrained checkpoint lacks {', '.join(missing)}; WSRL needs a Cal-QL or CQL run.")
        self.load_state_dict({name: learner_state[name] for name in PRETRAINED_PARTS})
        for opt, lr in ((self.actor_opt, self.cfg.actor_lr), (self.critic_opt, self.cfg.critic_lr),
                        (self.alpha_opt, self.cfg.alpha_lr)):
            for group in opt.param_groups:
                group["lr"] = lr

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        alpha = self.temperature().detach()
        for mb in minibatches(batch):
            y = subset_min_target(self.critic_target, self.actor, alpha, mb, self.cfg.gamma, self.cfg.target_subset,
                                  self.cfg.backup_entropy)
            loss, metrics = ensemble_td_loss(self.critic, y, mb)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), flatten(batch)["obs"],
                                                       reduce=self.cfg.actor_reduce)
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
