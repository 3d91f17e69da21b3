"""Behaviour cloning.

Gaussian head: maximize the log-likelihood of dataset actions under a Gaussian policy
with a tanh-bounded mean, ``L = -E_(s,a)~D [ log N(a; tanh(mu(s)), sigma(s)^2) ]``.
(A tanh-squashed Gaussian would need ``atanh`` of dataset actions, which explodes for
noisy demonstrations clipped to the action bounds and drags the mean with it.)

Deterministic head: regress the action, ``L = E_(s,a)~D || tanh(f(s)) - a ||^2``.

Observations are normalized with the dataset's mean and standard deviation, which
are part of the actor (and so of every checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from agent.config import option
from agent.learners.common import LearnerParts
from agent.nets import DeterministicActor, GaussianActor, ObsNormalizer, mse


@dataclass
class BCConfig:
    head: Literal["gaussian", "deterministic"] = option("gaussian", "policy head: Gaussian likelihood or deterministic regression")
    hidden_dims: list[int] = option([256, 256], "widths of the actor's hidden layers", min=1)
    lr: float = option(3e-4, "Adam learning rate", gt=0)
    weight_decay: float = option(0.0, "Adam weight decay", min=0)


def gaussian_bc_loss(actor: GaussianActor, batch: dict) -> tuple[torch.Tensor, dict]:
    """``batch["obs"]`` is normalized."""
    log_prob = actor.log_prob(batch["obs"], batch["action"])
    loss = -log_prob.mean()
    return loss, {"bc_loss": loss.detach(), "log_prob": log_prob.mean().detach()}


def deterministic_bc_loss(actor: DeterministicActor, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = mse(actor(batch["obs"]), batch["action"])
    return loss, {"bc_loss": loss.detach()}


class BC(LearnerParts):
    algo = "bc"

    def __init__(self, cfg: BCConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        actor_cls = GaussianActor if cfg.head == "gaussian" else DeterministicActor
        self.normalizer = ObsNormalizer(obs_dim).to(self.device)
        self.actor = actor_cls(obs_dim, act_dim, cfg.hidden_dims).to(self.device)
        self.loss_fn = gaussian_bc_loss if cfg.head == "gaussian" else deterministic_bc_loss
        self.optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.parts = {"actor": self.actor, "normalizer": self.normalizer, "optimizer": self.optimizer}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step; metrics are detached tensors (read when logged)."""
        batch = {**batch, "obs": self.normalizer(batch["obs"])}
        loss, metrics = self.loss_fn(self.actor, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return metrics


