"""PRDC: Policy Regularization with Dataset Constraint (Ran et al., 2023).

TD3+BC's critic and schedule (``agent/learners/td3bc.py``); the actor is pulled toward the
action of the *nearest* dataset pair rather than the batch's own action:
    L_pi = -lambda E[ Q_1(s, pi(s)) ] + E[ (pi(s) - a_nn)^2 ],  lambda = alpha / E|Q_1(s, a)| (detached),
    (s_nn, a_nn) = argmin over the dataset's (s_i, a_i) of || (beta s, pi(s)) - (beta s_i, a_i) ||,
states normalized as the learner normalizes them; the search sees pi(s) detached. A large
beta makes the nearest pair the one at the same state (TD3+BC's constraint); a small one lets
the policy take any action the dataset holds anywhere near, which is how PRDC avoids
being tied to bad actions in mixed data.

The dataset comes from ``prepare(cache)`` (pretraining calls it), searched exhaustively in
blocks on the learner's device (in 35 dimensions a KD-tree is no help: scipy's took 10 to
28 times longer for 20k to 200k pairs). Without it, each minibatch is its own dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from agent.config import option
from agent.learners.td3bc import TD3BC, TD3BCConfig

CHUNK = 65_536  # dataset rows per distance block of the exhaustive search


@dataclass
class PRDCConfig(TD3BCConfig):
    beta: float = option(2.0, "weight of the state in the nearest-neighbour search (the paper's beta)", gt=0)


def nearest(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to and index of each query's nearest key (Euclidean), by blocks of ``CHUNK`` keys."""
    best_d = torch.full((query.shape[0],), float("inf"), device=query.device)
    best_i = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    for start in range(0, keys.shape[0], CHUNK):
        d, i = torch.cdist(query, keys[start:start + CHUNK]).min(1)
        closer = d < best_d
        best_d, best_i = torch.where(closer, d, best_d), torch.where(closer, i + start, best_i)
    return best_d, best_i


def nearest_exhaustive(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Index of each query's nearest key."""
    return nearest(keys, query)[1]


class PRDC(TD3BC):
    algo = "prdc"

    def __init__(self, cfg: PRDCConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        super().__init__(cfg, obs_dim, act_dim, device)
        self.cfg: PRDCConfig = cfg
        self.keys: torch.Tensor | None = None   # (beta s, a) of the dataset, on the learner's device

    def prepare(self, cache) -> dict:
        """Index the dataset's (beta s, a) pairs; no per-transition extras."""
        with torch.no_grad():
            obs = self.normalizer(torch.as_tensor(cache.obs, device=self.device))
            action = torch.as_tensor(cache.action, device=self.device)
            self.keys = torch.cat([self.cfg.beta * obs, action], -1)
        return {}

    def nearest_actions(self, obs: torch.Tensor, pi: torch.Tensor, batch_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest dataset pair's action for each (beta s, pi(s)), and the distance to it."""
        query = torch.cat([self.cfg.beta * obs, pi], -1).detach()
        keys = self.keys if self.keys is not None else torch.cat([self.cfg.beta * obs, batch_action], -1)
        with torch.no_grad():
            dist, idx = nearest(keys, query)
        return keys[idx, obs.shape[-1]:], dist

    def actor_objective(self, batch: dict) -> tuple[torch.Tensor, dict]:
        pi = self.actor(batch["obs"])
        q = self.critic(batch["obs"], pi)[0]
        lam = self.cfg.alpha / q.abs().mean().detach()
        target, dist = self.nearest_actions(batch["obs"], pi, batch["action"])
        bc = ((pi - target) ** 2).mean()
        loss = -lam * q.mean() + bc
        return loss, {"actor_loss": loss.detach(), "bc_mse": bc.detach(), "nn_distance": dist.mean().detach()}
