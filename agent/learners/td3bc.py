"""TD3+BC (Fujimoto and Gu, 2021).

Critic, each member e:  L_Q,e = E[ (Q_e(s, a) - y)^2 ],
    y = r + gamma (1 - terminated) min_e' Q'_e'(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)),
    eps ~ N(0, sigma^2)  (target policy smoothing, sigma 0.2, c 0.5)
Actor, every ``policy_freq`` critic updates:
    L_pi = -lambda E[ Q_1(s, pi(s)) ] + E[ (pi(s) - a)^2 ],  lambda = alpha / E|Q_1(s, a)| (detached)
with alpha = 2.5; the actor and critic targets follow by Polyak averaging.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from agent.config import option
from agent.learners.common import LearnerParts, adam, flatten, minibatches, normalize_batch, not_done, step
from agent.nets import CriticEnsemble, DeterministicActor, ObsNormalizer, soft_update


@dataclass
class TD3BCConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(2, "critics in the ensemble", min=1)
    alpha: float = option(2.5, "weight of the Q term relative to behaviour cloning", min=0)
    policy_noise: float = option(0.2, "std of the target policy smoothing noise", min=0)
    noise_clip: float = option(0.5, "clip of the target policy smoothing noise", min=0)
    policy_freq: int = option(2, "critic updates per actor update", min=1)
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


def td3_target(critic_target: CriticEnsemble, actor_target: DeterministicActor, batch: dict, cfg: TD3BCConfig) -> torch.Tensor:
    with torch.no_grad():
        next_action = actor_target(batch["next_obs"])
        noise = (torch.randn_like(next_action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        next_action = (next_action + noise).clamp(-1.0, 1.0)
        next_q = critic_target(batch["next_obs"], next_action).min(0).values
        return batch["reward"] + cfg.gamma * not_done(batch) * next_q


def critic_loss(critic: CriticEnsemble, y: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    qs = critic(batch["obs"], batch["action"])
    loss = ((qs - y.unsqueeze(0)) ** 2).mean(1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": qs.mean().detach()}


def actor_loss(actor: DeterministicActor, critic: CriticEnsemble, batch: dict, cfg: TD3BCConfig) -> tuple[torch.Tensor, dict]:
    pi = actor(batch["obs"])
    q = critic(batch["obs"], pi)[0]
    lam = cfg.alpha / q.abs().mean().detach()
    bc = ((pi - batch["action"]) ** 2).mean()
    loss = -lam * q.mean() + bc
    return loss, {"actor_loss": loss.detach(), "bc_mse": bc.detach()}


class TD3BC(LearnerParts):
    algo = "td3bc"

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.normalizer = ObsNormalizer(obs_dim).to(self.device)
        self.actor = DeterministicActor(obs_dim, act_dim, cfg.hidden_dims).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_dims, cfg.num_critics).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)
        self.critic_updates = torch.zeros((), dtype=torch.long)  # host-side counter, saved
        self.parts = {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                      "critic_target": self.critic_target, "normalizer": self.normalizer,
                      "actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        for mb in minibatches(batch):
            loss, metrics = critic_loss(self.critic, td3_target(self.critic_target, self.actor_target, mb, self.cfg), mb)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            self.critic_updates += 1
        if int(self.critic_updates) % self.cfg.policy_freq == 0 or batch["obs"].dim() == 3:
            loss, actor_metrics = self.actor_objective(flatten(batch))
            step(self.actor_opt, loss, list(self.actor.parameters()))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            metrics = {**metrics, **actor_metrics}
        return metrics

    def actor_objective(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The actor's loss on a (normalized) batch: TD3+BC's; PRDC regularizes toward another action."""
        return actor_loss(self.actor, self.critic, batch, self.cfg)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic_updates": self.critic_updates.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic_updates = state["critic_updates"].clone()
