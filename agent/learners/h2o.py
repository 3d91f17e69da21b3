"""H2O: dynamics-aware hybrid offline-and-online RL (Niu et al., 2022). No pretraining.

Data: a fixed dataset from the *real* dynamics plus online rollouts in a *simulator*
whose dynamics differ; each batch is half real, half sim (``batch["is_real"]`` marks
the rows; the fine-tuning loop draws it).

Discriminators (label 1 = real, 0 = sim), 2 logits each squashed by 2 tanh, Gaussian
input noise ``discriminator_noise`` while training, trained every critic update by
cross-entropy:
    D_sa(s, a) -> l_sa,   D_sas(s, a, s') -> l_sas, whose class scores are l_sas + l_sa
    (l_sa detached while D_sas trains: this only keeps D_sas's loss from moving D_sa; it does
    not make l_sas the part that s' adds, which the ratio below reads it as only when D_sa
    is the Bayes-optimal (s, a) classifier and the real and sim (s, a) supports overlap).
Dynamics ratio:
    log P_real(s'|s,a) / P_sim(s'|s,a) = log[p_sas(real) / p_sas(sim)] - log[p_sa(real) / p_sa(sim)],
    p_sas = softmax(l_sas + l_sa), p_sa = softmax(l_sa);  w = clip(ratio, 1e-5, 1).
Critic, for each member e:
    L_Q,e = E_real[(Q_e - y)^2] + E_sim[w (Q_e - y)^2]
            + beta (logsumexp_{i in sim}(Q_e(s_i, a_i) + log omega_i) - E_real[Q_e(s, a)]),
    y = r + gamma (1 - terminated) min_e' Q'_e'(s', a')  [- alpha log pi(a'|s') with backup_entropy],
    u(s, a) = clamp(mean_{j=1..n} log(P_sim / P_real)(s, a, s'_j), 1e-45, 10),  omega = u / sum_sim u,
    s'_j from a Gaussian dynamics model of the simulator fitted online (the paper;
    ``omega_next_states="model"``) or the sim next state plus Gaussian noise with the
    real data's std (the released code; ``"noise"``).
Actor and temperature: SAC on the whole mixed batch (min over the ensemble).

``ratio="conditional"`` (the default) replaces both discriminators with the conditional
estimate of ``agent.learners.dynamics_ratio`` (H2O+'s idea): a model of the real dynamics
fitted on the real rows, and a classifier trained only at the sim rows' (s, a) between that
model's s' and the simulator's; it gives w (1 where the model's members disagree more than
the gap) and the log-ratio in u(s, a). It is the default because it passes ``bench/h2o.py``'s
gates on arm reach (200 real episodes, 10k sim steps, 3 seeds, w on 1000 held-out sim
transitions of the final policy): with nominal physics its median w is 1.00 on every seed
(mean log w -0.003), and under gravity x1.6 (a paired gap of 0.057 data stds) the mean
log w falls by 3.9 nats. The paper's two classifiers (``ratio="classifier"``) give a median
w of 0.05 with nominal physics, and their mean log w falls by only 0.45 nats under the gap.

``target="mixed"`` is H2O+'s value update in place of the omega penalty: an in-sample value
V trained by expectile regression on the real rows, L_V = E_real[ |k - 1(u < 0)| u^2 ],
u = min_e Q'_e(s, a) - V(s), and every row's target blends it with the online one,
    y = lambda (r + gamma (1 - terminated) V(s')) + (1 - lambda) y_soft,
y_soft the target above; the sim rows' TD errors keep their weight w.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from agent.config import option
from agent.learners.common import (LearnerParts, adam, flatten, minibatches, normalize_batch, not_done, sac_actor_loss,
                                   soft_target, step, actor_temperature_step)
from agent.learners.dynamics_ratio import ConditionalRatio, RealDynamics, weights as conditional_weights
from agent.learners.iql import expectile_loss
from agent.nets import CriticEnsemble, ObsNormalizer, TanhGaussianActor, Temperature, ValueNetwork, mlp, soft_update


@dataclass
class H2OConfig:
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(2, "critics in the ensemble", min=1)
    discriminator_dims: list[int] = option([256, 256], "hidden widths of both discriminators", min=1)
    discriminator_noise: float = option(0.1, "std of Gaussian noise on the discriminators' (normalized) inputs while training", min=0)
    discriminator_lr: float = option(3e-4, "discriminator learning rate", gt=0)
    penalty_weight: float = option(0.01, "beta: weight of the sim-vs-real value gap penalty", min=0)
    omega_samples: int = option(10, "n: next states sampled per (s, a) for u(s, a)", min=1)
    omega_next_states: Literal["model", "noise"] = option(
        "model", "where u's next states come from: a learned sim dynamics model (paper) or sim s' + data-std noise (released code)")
    model_dims: list[int] = option([256, 256], "hidden widths of the dynamics model (omega_next_states=model)", min=1)
    model_lr: float = option(1e-3, "dynamics model learning rate", gt=0)
    ratio_min: float = option(1e-5, "lower clip of the sim TD weight w (upper clip is 1; 0: no lower clip)", min=0, max=1)
    ratio: Literal["classifier", "conditional"] = option(
        "conditional", "dynamics ratio: a model of the real dynamics and a classifier at sim (s, a) (H2O+; passes "
                       "bench/h2o.py's gates) or two classifiers on (s, a) and (s, a, s') (the paper)")
    real_model_members: int = option(5, "conditional ratio: members of the real-dynamics ensemble", min=1)
    ratio_noise: float = option(0.1, "conditional ratio: std of the noise on both classes' s' (normalized) while it trains", min=0)
    backup_entropy: bool = option(False, "subtract alpha log pi(a'|s') in the target")
    target: Literal["penalty", "mixed"] = option(
        "penalty", "value update: the omega-weighted penalty (the paper) or H2O+'s target blended with an in-sample value")
    exploit_weight: float = option(0.5, "mixed target: lambda, the in-sample value's share of each target", min=0, max=1)
    value_expectile: float = option(0.7, "mixed target: expectile k of the in-sample value's regression", gt=0, lt=1)
    actor_lr: float = option(3e-4, "actor learning rate", gt=0)
    critic_lr: float = option(3e-4, "critic learning rate", gt=0)
    alpha_lr: float = option(3e-4, "temperature learning rate", gt=0)
    initial_alpha: float = option(1.0, "initial temperature", gt=0)
    gamma: float = option(0.99, "discount", min=0, max=1)
    tau: float = option(5e-3, "target update rate", gt=0, max=1)


class Discriminators(nn.Module):
    """D_sa and D_sas, and the dynamics ratio they give; holds the real data's next-state
    std (in normalized units) for the released code's noise samples."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int], noise: float):
        super().__init__()
        self.sa = mlp(obs_dim + act_dim, hidden_dims, 2)
        self.sas = mlp(2 * obs_dim + act_dim, hidden_dims, 2)
        self.noise = noise
        self.register_buffer("next_obs_std", torch.ones(obs_dim))

    def logits(self, obs, action, next_obs, noisy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        sa_in, sas_in = torch.cat([obs, action], -1), torch.cat([obs, action, next_obs], -1)
        if noisy:
            sa_in = sa_in + self.noise * torch.randn_like(sa_in)
            sas_in = sas_in + self.noise * torch.randn_like(sas_in)
        return 2.0 * torch.tanh(self.sa(sa_in)), 2.0 * torch.tanh(self.sas(sas_in))

    def log_ratio(self, obs, action, next_obs) -> torch.Tensor:
        """log P_real(s'|s,a) / P_sim(s'|s,a) per row."""
        l_sa, l_sas = self.logits(obs, action, next_obs)
        log_p_sas, log_p_sa = F.log_softmax(l_sas + l_sa, -1), F.log_softmax(l_sa, -1)
        return (log_p_sas[..., 1] - log_p_sas[..., 0]) - (log_p_sa[..., 1] - log_p_sa[..., 0])

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        label = batch["is_real"].long()
        l_sa, l_sas = self.logits(batch["obs"], batch["action"], batch["next_obs"], noisy=True)
        combined = l_sas + l_sa.detach()
        loss = F.cross_entropy(l_sa, label) + F.cross_entropy(combined, label)
        return loss, {"disc_loss": loss.detach(), "disc_sa_acc": (l_sa.argmax(-1) == label).float().mean().detach(),
                      "disc_sas_acc": ((l_sas + l_sa).argmax(-1) == label).float().mean().detach()}


class DynamicsModel(nn.Module):
    """Gaussian s' ~ N(s + mu(s, a), sigma(s, a)) in normalized units, fitted on sim data."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden_dims, 2 * obs_dim)

    def forward(self, obs, action) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(torch.cat([obs, action], -1)).chunk(2, -1)
        return obs + mu, log_std.clamp(-5.0, 1.0)

    def loss(self, obs, action, next_obs) -> torch.Tensor:
        mean, log_std = self(obs, action)
        return (0.5 * ((next_obs - mean) / log_std.exp()) ** 2 + log_std).sum(-1).mean()


def omega_weights(log_ratio, sim: dict, next_samples: torch.Tensor) -> torch.Tensor:
    """omega over the sim rows from ``next_samples`` [n, B_sim, obs]: u normalized to sum 1.
    ``log_ratio(obs, action, next_obs)``: log P_real(s'|s,a) / P_sim(s'|s,a) per row."""
    n = next_samples.shape[0]
    obs = sim["obs"].unsqueeze(0).expand(n, -1, -1)
    action = sim["action"].unsqueeze(0).expand(n, -1, -1)
    u = (-log_ratio(obs, action, next_samples)).mean(0).clamp(1e-45, 10.0)
    return u / u.sum()


def critic_loss(critic: CriticEnsemble, y: torch.Tensor, batch: dict, w: torch.Tensor, omega: torch.Tensor,
                penalty_weight: float) -> tuple[torch.Tensor, dict]:
    """Real TD + w-weighted sim TD + beta (logsumexp_sim(Q + log omega) - mean_real Q), summed over members."""
    real = batch["is_real"]
    qs = critic(batch["obs"], batch["action"])  # [E, B]
    sq = (qs - y.unsqueeze(0)) ** 2
    td_real, td_sim = sq[:, real].mean(1), (w.unsqueeze(0) * sq[:, ~real]).mean(1)
    gap = torch.logsumexp(qs[:, ~real] + omega.log().unsqueeze(0), dim=1) - qs[:, real].mean(1)
    loss = (td_real + td_sim + penalty_weight * gap).sum()
    return loss, {"critic_loss": loss.detach(), "td_real": td_real.mean().detach(), "td_sim": td_sim.mean().detach(),
                  "h2o_gap": gap.mean().detach(), "q_mean": qs.mean().detach(), "q_std": qs.std(0).mean().detach()}


def _percentiles(name: str, x: torch.Tensor) -> dict:
    q = torch.quantile(x.detach().float(), torch.tensor([0.1, 0.5, 0.9], device=x.device))
    return {f"{name}_mean": x.mean().detach(), f"{name}_p10": q[0], f"{name}_p50": q[1], f"{name}_p90": q[2]}


class H2O(LearnerParts):
    algo = "h2o"

    def __init__(self, cfg: H2OConfig, obs_dim: int, act_dim: int, device: str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.target_entropy = -float(act_dim)
        self.normalizer = ObsNormalizer(obs_dim).to(self.device)
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden_dims).to(self.device)
        self.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_dims, cfg.num_critics).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.temperature = Temperature(cfg.initial_alpha).to(self.device)
        self.discriminators = Discriminators(obs_dim, act_dim, cfg.discriminator_dims, cfg.discriminator_noise).to(self.device)
        self.model = DynamicsModel(obs_dim, act_dim, cfg.model_dims).to(self.device)
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)
        self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)
        self.alpha_opt = adam(self.temperature.parameters(), cfg.alpha_lr, self.device)
        self.disc_opt = adam(self.discriminators.parameters(), cfg.discriminator_lr, self.device)
        self.model_opt = adam(self.model.parameters(), cfg.model_lr, self.device)
        self.parts = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                      "temperature": self.temperature, "normalizer": self.normalizer,
                      "discriminators": self.discriminators, "model": self.model, "actor_opt": self.actor_opt,
                      "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt, "disc_opt": self.disc_opt,
                      "model_opt": self.model_opt}
        if cfg.target == "mixed":  # the sim dynamics model serves only the penalty's omega: neither trained nor saved
            for name in ("model", "model_opt"):
                del self.parts[name]
            self.value = ValueNetwork(obs_dim, cfg.hidden_dims).to(self.device)
            self.value_opt = adam(self.value.parameters(), cfg.critic_lr, self.device)
            self.parts.update(value=self.value, value_opt=self.value_opt)
        if cfg.ratio == "conditional":  # the discriminators are neither trained nor saved (they keep next_obs_std)
            for name in ("discriminators", "disc_opt"):
                del self.parts[name]
            self.real_model = RealDynamics(obs_dim, act_dim, cfg.model_dims, cfg.real_model_members).to(self.device)
            self.ratio_net = ConditionalRatio(obs_dim, act_dim, cfg.discriminator_dims, cfg.ratio_noise).to(self.device)
            self.real_model_opt = adam(self.real_model.parameters(), cfg.model_lr, self.device)
            self.ratio_opt = adam(self.ratio_net.parameters(), cfg.discriminator_lr, self.device)
            self.parts.update(real_model=self.real_model, ratio_net=self.ratio_net, real_model_opt=self.real_model_opt,
                              ratio_opt=self.ratio_opt)

    def fit_normalizer(self, mean, var) -> None:
        """Statistics of the real data; also the noise scale of the released code's s' samples."""
        self.normalizer.fit(mean, var)
        std = torch.as_tensor(var, dtype=torch.float32, device=self.device).sqrt()
        self.discriminators.next_obs_std.copy_(std / self.normalizer.std)

    def next_state_samples(self, sim: dict) -> torch.Tensor:
        n = self.cfg.omega_samples
        with torch.no_grad():
            if self.cfg.omega_next_states == "noise":
                mean = sim["next_obs"].unsqueeze(0).expand(n, -1, -1)
                return mean + self.discriminators.next_obs_std * torch.randn_like(mean)
            mean, log_std = self.model(sim["obs"], sim["action"])
            mean, std = mean.unsqueeze(0).expand(n, -1, -1), log_std.exp().unsqueeze(0)
            return mean + std * torch.randn_like(mean)

    def log_ratio(self, obs, action, next_obs) -> torch.Tensor:
        """log P_real(s'|s,a) / P_sim(s'|s,a) for normalized transitions, by the configured estimator."""
        if self.cfg.ratio == "conditional":
            return self.ratio_net(obs, action, next_obs)
        return self.discriminators.log_ratio(obs, action, next_obs)

    def dynamics_ratio(self, obs, action, next_obs) -> torch.Tensor:
        """P_real(s'|s,a) / P_sim(s'|s,a) for raw (unnormalized) transitions."""
        with torch.no_grad():
            return self.log_ratio(self.normalizer(obs), action, self.normalizer(next_obs)).exp()

    def td_weights(self, obs, action, next_obs) -> torch.Tensor:
        """The weight w the critic gives raw (unnormalized) simulated transitions: the clipped
        ratio, and 1 where the conditional estimate's model is unsure."""
        obs, next_obs = self.normalizer(obs), self.normalizer(next_obs)
        with torch.no_grad():
            if self.cfg.ratio == "conditional":
                return conditional_weights(self.real_model, self.ratio_net, obs, action, next_obs, self.cfg.ratio_min)[0]
            return self.discriminators.log_ratio(obs, action, next_obs).exp().clamp(self.cfg.ratio_min, 1.0)

    def _train_ratio(self, mb: dict, sim: dict) -> tuple[torch.Tensor, dict]:
        """One step of the configured estimator on a minibatch; w for its sim rows."""
        if self.cfg.ratio == "classifier":
            disc_loss, metrics = self.discriminators.loss(mb)
            step(self.disc_opt, disc_loss, list(self.discriminators.parameters()))
            with torch.no_grad():
                w = self.discriminators.log_ratio(sim["obs"], sim["action"], sim["next_obs"]).exp()
            return w.clamp(self.cfg.ratio_min, 1.0), metrics
        real = mb["is_real"]
        n_real = int(real.sum())  # one host sync; the boolean indexing below needs the count anyway
        rows = torch.randint(n_real, (self.cfg.real_model_members, n_real), device=self.device)
        obs, action, next_obs = (mb[k][real][rows] for k in ("obs", "action", "next_obs"))  # a bootstrap draw per member
        model_loss = self.real_model.loss(obs, action, next_obs)
        step(self.real_model_opt, model_loss, list(self.real_model.parameters()))
        with torch.no_grad():
            model_next = self.real_model.sample(sim["obs"], sim["action"])
        ratio_loss, metrics = self.ratio_net.loss(sim["obs"], sim["action"], sim["next_obs"], model_next)
        step(self.ratio_opt, ratio_loss, list(self.ratio_net.parameters()))
        w, w_metrics = conditional_weights(self.real_model, self.ratio_net, sim["obs"], sim["action"], sim["next_obs"],
                                           self.cfg.ratio_min)
        return w, {**metrics, **w_metrics, "real_model_loss": model_loss.detach()}

    def _mixed_target(self, mb: dict, y_soft: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """One expectile step of the in-sample value on the real rows; the blended target."""
        real = mb["is_real"]
        with torch.no_grad():
            q_real = self.critic_target(mb["obs"][real], mb["action"][real]).min(0).values
        v = self.value(mb["obs"][real])
        value_loss = expectile_loss(q_real - v, self.cfg.value_expectile)
        step(self.value_opt, value_loss, list(self.value.parameters()))
        with torch.no_grad():
            y_value = mb["reward"] + self.cfg.gamma * not_done(mb) * self.value(mb["next_obs"])
        lam = self.cfg.exploit_weight
        return lam * y_value + (1.0 - lam) * y_soft, {"value_loss": value_loss.detach(), "v_mean": v.mean().detach(),
                                                       "y_value_mean": y_value.mean().detach()}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "is_real" not in batch:
            raise ValueError("H2O needs batches that mark real rows (is_real); fine-tune it with a real dataset "
                             "(--real-data) and a simulator env.")
        batch = normalize_batch(batch, self.normalizer)
        metrics: dict[str, torch.Tensor] = {}
        alpha = self.temperature().detach()
        for mb in minibatches(batch):
            real = mb["is_real"]
            sim = {k: v[~real] for k, v in mb.items()}
            w, ratio_metrics = self._train_ratio(mb, sim)
            if self.cfg.target == "mixed":
                y = soft_target(self.critic_target, self.actor, alpha, mb, self.cfg.gamma, entropy=self.cfg.backup_entropy)
                y, value_metrics = self._mixed_target(mb, y)
                uniform = torch.full_like(w, 1.0 / max(w.numel(), 1))
                loss, metrics = critic_loss(self.critic, y, mb, w, uniform, 0.0)
                ratio_metrics = {**ratio_metrics, **value_metrics}
            else:
                if self.cfg.omega_next_states == "model":
                    step(self.model_opt, self.model.loss(sim["obs"], sim["action"], sim["next_obs"]),
                         list(self.model.parameters()))
                with torch.no_grad():
                    omega = omega_weights(self.log_ratio, sim, self.next_state_samples(sim))
                y = soft_target(self.critic_target, self.actor, alpha, mb, self.cfg.gamma, entropy=self.cfg.backup_entropy)
                loss, metrics = critic_loss(self.critic, y, mb, w, omega, self.cfg.penalty_weight)
            step(self.critic_opt, loss, list(self.critic.parameters()))
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            metrics = {**metrics, **ratio_metrics, **_percentiles("w", w)}
            if self.cfg.target == "penalty":
                metrics.update(_percentiles("omega_x_batch", omega * omega.numel()))
        loss, log_prob, actor_metrics = sac_actor_loss(self.actor, self.critic, self.temperature(), flatten(batch)["obs"])
        return {**metrics, **actor_metrics, **actor_temperature_step(self, loss, log_prob)}
