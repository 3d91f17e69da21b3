"""Pieces several learners share: SAC-style actor and temperature losses, the soft
Bellman target, the K-minibatch split of a fused update, optimizer construction."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim.optimizer import (
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
)

from agent.nets import CriticEnsemble, TanhGaussianActor, Temperature, module_params


def adam(params: Iterable[torch.Tensor], lr: float, device: torch.device) -> torch.optim.Adam:
    # The fused kernel updates every tensor in one call: on CPU it removes most of the
    # per-parameter overhead of small updates, and on CUDA it can be graph-captured.
    return torch.optim.Adam(params, lr=lr, fused=True)


def normalize_batch(batch: dict[str, torch.Tensor], normalizer: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(batch)
    out["obs"] = normalizer(batch["obs"])
    if "next_obs" in batch:
        out["next_obs"] = normalizer(batch["next_obs"])
    return out


def minibatches(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A fused batch carries a leading K dim ([K, B, ...]); a plain one is K = 1."""
    if batch["obs"].dim() == 2:
        return [batch]
    return [{k: v[i] for k, v in batch.items()} for i in range(batch["obs"].shape[0])]


def flatten(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if batch["obs"].dim() == 2:
        return batch
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


def not_done(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 - terminated: a truncated transition still bootstraps."""
    return 1.0 - batch["terminated"].float()


def soft_target(critic_target: CriticEnsemble, actor: TanhGaussianActor, alpha: torch.Tensor,
                batch: dict, gamma: float, entropy: bool = True) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_e Q'_e(s', a') - alpha log pi(a'|s')), a' ~ pi(s')."""
    with torch.no_grad():
        next_action, next_log_prob = actor.sample(batch["next_obs"])
        next_q = critic_target(batch["next_obs"], next_action).min(0).values
        if entropy:
            next_q = next_q - alpha * next_log_prob
        return batch["reward"] + gamma * not_done(batch) * next_q


def sac_actor_loss(actor: TanhGaussianActor, critic: CriticEnsemble, alpha: torch.Tensor, obs: torch.Tensor,
                   reduce: str = "min") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """L = E[ alpha log pi(a|s) - Q(s, a) ], a ~ pi(s), Q the min (or mean) over the ensemble."""
    action, log_prob = actor.sample(obs)
    qs = critic(obs, action)
    q = qs.min(0).values if reduce == "min" else qs.mean(0)
    loss = (alpha.detach() * log_prob - q).mean()
    return loss, log_prob, {"actor_loss": loss.detach(), "entropy": -log_prob.mean().detach()}


def actor_temperature_step(learner: "LearnerParts", actor_loss: torch.Tensor, log_prob: torch.Tensor) -> dict:
    """The actor step and the temperature step from one backward pass. The actor loss
    sees alpha detached and the temperature loss sees log pi detached, so the joint
    backward gives each parameter exactly its own loss's gradient (bit-identical to two
    separate steps) for one autograd call instead of two."""
    temperature = learner.temperature
    alpha_loss = temperature.loss(log_prob, learner.target_entropy)
    actor_plan, alpha_plan = _LeanAdam.of(learner.actor_opt), _LeanAdam.of(learner.alpha_opt)
    inputs = [*module_params(learner.actor), temperature.log_alpha]
    if actor_plan is None or alpha_plan is None or not actor_plan.covers(inputs[:-1]) or not alpha_plan.covers(inputs[-1:]):
        learner.actor_opt.zero_grad(set_to_none=True)
        learner.alpha_opt.zero_grad(set_to_none=True)
        (actor_loss + alpha_loss).backward(inputs=inputs)
        learner.actor_opt.step()
        learner.alpha_opt.step()
    else:
        _clear_grads(inputs)
        (actor_loss + alpha_loss).backward(inputs=inputs)
        actor_plan.step()
        alpha_plan.step()
    return {"alpha": temperature().detach(), "alpha_loss": alpha_loss.detach()}


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """One optimizer step whose gradients land only on ``params`` (e.g. an actor loss
    that runs through the critic leaves the critic's gradients untouched)."""
    plan = _LeanAdam.of(optimizer)
    if plan is None or not plan.covers(params):
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        optimizer.step()
        return
    _clear_grads(params)
    loss.backward(inputs=params)
    plan.step()


def _clear_grads(params: list[torch.Tensor]) -> None:
    """``zero_grad(set_to_none=True)`` for these parameters (the ones an optimizer holds)."""
    for p in params:
        p.grad = None


class _LeanAdam:
    """``optimizer.step()`` of a fused, single-group Adam without the per-call Python
    work of ``torch.optim`` (hook and profiler wrappers, per-parameter state lookups,
    grouping by device): the step counters' +1 and the ``_fused_adam_`` kernel it ends
    in, on lists gathered once, so the result is bit-identical. Used only while that
    holds: one param group, no amsgrad, differentiable, capturable or decoupled weight
    decay, no step hooks, state on every parameter; a ``load_state_dict`` (new state)
    or a new param group rebuilds it, and a parameter without a gradient falls back to
    ``optimizer.step()``. The optimizer stays a ``torch.optim.Adam`` (its state_dict,
    checkpoints and hyperparameters, read at every step, are the usual ones)."""

    __slots__ = ("exp_avg_sqs", "exp_avgs", "group", "opt", "params", "state", "step_counts", "steps")

    def __init__(self, opt: torch.optim.Adam):
        group = opt.param_groups[0]
        self.opt, self.state, self.group = opt, opt.state, group
        self.params = list(group["params"])
        states = [opt.state[p] for p in self.params]
        self.exp_avgs = [s["exp_avg"] for s in states]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        # the per-parameter step counters become views of one tensor, so that counting a
        # step is one add instead of a per-tensor loop (what _foreach_add_ is on CPU)
        self.step_counts = torch.stack([s["step"] for s in states])
        for i, s in enumerate(states):
            s["step"] = self.step_counts[i]
        self.steps = [s["step"] for s in states]

    @staticmethod
    def of(opt: torch.optim.Optimizer) -> _LeanAdam | None:
        plan = opt.__dict__.get("_lean_adam")
        if plan is not None and plan.state is opt.state and len(opt.param_groups) == 1 and plan.group is opt.param_groups[0] \
                and len(plan.group["params"]) == len(plan.params):
            hooked = _global_optimizer_pre_hooks or _global_optimizer_post_hooks \
                or opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks  # hooks added after the plan
            return None if hooked else plan
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1 or opt._optimizer_step_pre_hooks \
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks \
                or opt._optimizer_step_post_hooks:
            return None
        group = opt.param_groups[0]
        if not group["fused"] or group["amsgrad"] or group["differentiable"] or group["capturable"] \
                or group.get("decoupled_weight_decay", False):
            return None
        params = group["params"]
        if not params or any(len(opt.state.get(p, ())) == 0 for p in params):
            return None  # before the first step: torch.optim creates the state
        first, step0 = params[0], opt.state[params[0]]["step"]
        if any(p.device != first.device or p.dtype != first.dtype or torch.is_complex(p)
               or opt.state[p]["step"].device != step0.device or opt.state[p]["step"].dtype != step0.dtype for p in params):
            return None
        plan = _LeanAdam(opt)
        opt.__dict__["_lean_adam"] = plan
        return plan

    def covers(self, params: list[torch.Tensor]) -> bool:
        mine = self.params
        return len(params) == len(mine) and all(a is b for a, b in zip(params, mine))

    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if any(g is None or g.is_sparse for g in grads):
            self.opt.step()
            return
        group = self.group
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            self.step_counts.add_(1)
            torch._fused_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
                               amsgrad=False, lr=group["lr"], beta1=float(beta1), beta2=float(beta2),
                               weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                               grad_scale=None, found_inf=None)
        self.opt._opt_called = True  # what the step wrapper records (LR schedulers check it)



class LearnerParts:
    """What every learner does the same way: normalizer fitting, acting, and a
    checkpoint that lists its parts. A learner sets ``self.parts`` to a dict of its
    modules and optimizers (including ``normalizer``) and ``self.actor``."""

    parts: dict[str, nn.Module | torch.optim.Optimizer]
    actor: nn.Module
    normalizer: nn.Module
    device: torch.device

    def fit_normalizer(self, mean, var) -> None:
        self.normalizer.fit(mean, var)

    def act(self, obs, deterministic: bool = True):
        from agent.nets import act

        return act(self.actor, self.normalizer, obs, deterministic, self.device)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.parts) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks part(s) {', '.join(missing)}")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


# -- pieces of the online fine-tuning learners (SAC, RLPD, WSRL, H2O, RO2O) --------------
def ensemble_td_loss(critic: CriticEnsemble, target_q: torch.Tensor, batch: dict,
                     weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """L = sum_e E[ w (Q_e(s, a) - y)^2 ] (w = 1 without ``weight``); metrics include the
    ensemble's spread (std over members, averaged over the batch)."""
    qs = critic(batch["obs"], batch["action"])  # [E, B]
    sq = (qs - target_q.unsqueeze(0)) ** 2
    if weight is not None:
        sq = sq * weight.unsqueeze(0)
    loss = sq.mean(1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": qs.mean().detach(), "q_std": qs.std(0).mean().detach()}


def subset_min_target(critic_target: CriticEnsemble, actor: TanhGaussianActor, alpha: torch.Tensor, batch: dict,
                      gamma: float, subset: int, entropy: bool) -> torch.Tensor:
    """REDQ-style target: y = r + gamma (1 - terminated) (min over ``subset`` members drawn
    at random without replacement of Q'_e(s', a') [- alpha log pi(a'|s')]), a' ~ pi(s')."""
    with torch.no_grad():
        next_action, next_log_prob = actor.sample(batch["next_obs"])
        members = torch.randperm(critic_target.ensemble_size, device=next_action.device)[:subset]
        next_q = critic_target(batch["next_obs"], next_action)[members].min(0).values
        if entropy:
            next_q = next_q - alpha * next_log_prob
        return batch["reward"] + gamma * not_done(batch) * next_q


def build_sac_parts(learner, cfg, obs_dim: int, act_dim: int, device: str, *, target_entropy: float | None = None,
                    initial_alpha: float | None = None, actor_layer_norm: bool = False) -> None:
    """Give ``learner`` the parts every SAC-family learner has, built one way: a
    normalizer, a tanh-Gaussian actor, a critic ensemble (``cfg.num_critics``,
    ``cfg.layer_norm``) with its target, a temperature, their Adam optimizers and the
    ``parts`` dict that checkpoints list. ``cfg`` needs hidden_dims, num_critics,
    actor_lr, critic_lr and alpha_lr."""
    import copy

    from agent.nets import ObsNormalizer

    learner.cfg, learner.device = cfg, torch.device(device)
    learner.obs_dim, learner.act_dim = obs_dim, act_dim
    learner.target_entropy = -float(act_dim) if target_entropy is None else target_entropy
    dev = learner.device
    learner.normalizer = ObsNormalizer(obs_dim).to(dev)
    learner.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden_dims, actor_layer_norm).to(dev)
    learner.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_dims, cfg.num_critics,
                                    getattr(cfg, "layer_norm", False)).to(dev)
    learner.critic_target = copy.deepcopy(learner.critic).requires_grad_(False)
    alpha = getattr(cfg, "initial_alpha", 1.0) if initial_alpha is None else initial_alpha
    learner.temperature = Temperature(alpha).to(dev)
    learner.actor_opt = adam(learner.actor.parameters(), cfg.actor_lr, dev)
    learner.critic_opt = adam(learner.critic.parameters(), cfg.critic_lr, dev)
    learner.alpha_opt = adam(learner.temperature.parameters(), cfg.alpha_lr, dev)
    learner.parts = {"actor": learner.actor, "critic": learner.critic, "critic_target": learner.critic_target,
                     "temperature": learner.temperature, "normalizer": learner.normalizer,
                     "actor_opt": learner.actor_opt, "critic_opt": learner.critic_opt, "alpha_opt": learner.alpha_opt}
