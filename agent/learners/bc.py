"""Behaviour cloning.

Gaussian head: maximize the log-likelihood of dataset actions under a tanh-Gaussian
policy, ``L = -E_(s,a)~D [ log pi(a|s) ]``, with ``log pi`` including the tanh
change of variables (dataset actions are clipped to (-1, 1) before ``atanh``).

Deterministic head: regress the action, ``L = E_(s,a)~D || tanh(f(s)) - a ||^2``.

Observations are normalized with the dataset's mean and standard deviation, which
are part of the actor (and so of every checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from agent.config import option
from agent.nets import DeterministicActor, TanhGaussianActor, mse


@dataclass
class BCConfig:
    head: Literal["gaussian", "deterministic"] = option("gaussian", "policy head: tanh-Gaussian likelihood or deterministic regression")
    hidden_dims: list[int] = option([256, 256], "widths of the actor's hidden layers")
    lr: float = option(3e-4, "Adam learning rate")
    weight_decay: float = option(0.0, "Adam weight decay")


def gaussian_bc_loss(actor: TanhGaussianActor, batch: dict) -> tuple[torch.Tensor, dict]:
    log_prob = actor.log_prob(batch["obs"], batch["action"])
    loss = -log_prob.mean()
    return loss, {"bc_loss": loss.detach(), "log_prob": log_prob.mean().detach()}


def deterministic_bc_loss(actor: DeterministicActor, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = mse(actor(batch["obs"]), batch["action"])
    return loss, {"bc_loss": loss.detach()}


class BC:
    algo = "bc"

    def __init__(self, cfg: BCConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        actor_cls = TanhGaussianActor if cfg.head == "gaussian" else DeterministicActor
        self.actor = actor_cls(obs_dim, act_dim, cfg.hidden_dims).to(self.device)
        self.loss_fn = gaussian_bc_loss if cfg.head == "gaussian" else deterministic_bc_loss
        self.optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def fit_normalizer(self, mean: np.ndarray, var: np.ndarray) -> None:
        self.actor.normalizer.fit(mean, var)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        loss, metrics = self.loss_fn(self.actor, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = obs_t.ndim == 1
        action = self.actor(obs_t[None] if single else obs_t, deterministic=deterministic)
        action = action.cpu().numpy()
        return action[0] if single else action

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])
