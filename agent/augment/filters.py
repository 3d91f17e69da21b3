"""Filters: scores per transition and a verdict per segment.

* :class:`SimReplayFilter` -- validity by replay: restore the simulator state before a
  step, check that it gives the transition's observation, apply the action, and compare
  the next observation, reward and termination with the transition's, within a
  tolerance. Needs ``sim_state`` in the data.
* :class:`DynamicsEnsembleFilter` -- a learned consistency check (after MOREC's dynamics
  reward): an ensemble of small MLPs trained on the source data predicts the change of
  observation from (obs, action). A transition's score is the mean of ensemble error
  and ensemble disagreement, per normalized dimension; the threshold is a quantile of
  the scores of held-out real transitions times a margin. Needs no simulator.

A filter is any object with ``name`` and ``__call__(segment) -> FilterResult`` (and,
optionally, ``batch(segments) -> list[FilterResult]`` to score many at once); the
share of augmented data in training batches is capped by :func:`capped_mixture`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agent.augment.segment import Segment


@dataclass
class FilterResult:
    accepted: bool
    score: float          # the segment's worst transition score (lower is more plausible)
    reason: str = ""      # why it was rejected


class SimReplayFilter:
    """Replay every transition from its simulator state (see the module docstring).

    ``atol`` / ``rtol`` bound the observation mismatch ``|a - b| <= atol + rtol |b|``;
    ``reward_atol`` the reward mismatch.
    """

    name = "sim_replay"

    def __init__(self, env, atol: float = 1e-3, rtol: float = 1e-3, reward_atol: float = 1e-3):
        self.env = env.unwrapped
        self.atol, self.rtol, self.reward_atol = atol, rtol, reward_atol

    def transition_errors(self, seg: Segment) -> np.ndarray:
        """Per transition, the worst normalized mismatch (<= 1 passes)."""
        if not seg.sim_state:
            raise ValueError("the sim_replay filter needs sim_state in the data; collect with save_sim_state or drop the filter.")
        keys = list(seg.sim_state)
        errors = np.empty(len(seg))
        for t in range(len(seg)):
            state = {k: seg.sim_state[k][t] for k in keys}
            obs = self.env.set_sim_state(state)
            next_obs, reward, terminated, _, _ = self.env.step(seg.action[t].astype(np.float32))
            scale_now = self.atol + self.rtol * np.abs(seg.obs[t])
            scale_next = self.atol + self.rtol * np.abs(seg.next_obs[t])
            errors[t] = max(float(np.max(np.abs(obs - seg.obs[t]) / scale_now)),
                            float(np.max(np.abs(next_obs - seg.next_obs[t]) / scale_next)),
                            abs(reward - seg.reward[t]) / self.reward_atol,
                            0.0 if bool(terminated) == bool(seg.terminated[t]) else np.inf)
        return errors

    def __call__(self, seg: Segment) -> FilterResult:
        errors = self.transition_errors(seg)
        worst = float(errors.max())
        return FilterResult(worst <= 1.0, worst, "" if worst <= 1.0 else "sim_replay")


@contextmanager
def _torch_threads(n: int):
    """Small models run fastest on one thread; many threads only contend on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _EnsembleMLP(nn.Module):
    """E MLPs as stacked weights [E, in, out], one batched matmul per layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, members: int):
        super().__init__()
        dims = [in_dim, hidden, hidden, out_dim]
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(members, a, b) / np.sqrt(a)) for a, b in zip(dims, dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(members, 1, b)) for b in dims[1:]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in] or [E, B, in] -> [E, B, out]."""
        h = x if x.dim() == 3 else x.unsqueeze(0).expand(len(self.weights[0]), -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        return h


class DynamicsEnsembleFilter:
    """Learned consistency filter; :meth:`fit` on real transitions before use."""

    name = "dynamics_ensemble"

    def __init__(self, members: int = 5, hidden: int = 64, steps: int = 500, batch_size: int = 128,
                 quantile: float = 0.99, margin: float = 2.0, seed: int = 0):
        self.members, self.hidden, self.steps, self.batch_size = members, hidden, steps, batch_size
        self.quantile, self.margin, self.seed = quantile, margin, seed
        self.threshold = np.inf
        self.model: _EnsembleMLP | None = None

    def fit(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> "DynamicsEnsembleFilter":
        """Train on real transitions (each member on its own bootstrap) and set the threshold."""
        with _torch_threads(1):
            return self._fit(obs, action, next_obs)

    def _fit(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> "DynamicsEnsembleFilter":
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n = len(obs)
        if n < 10:
            raise ValueError(f"the dynamics_ensemble filter needs at least 10 real transitions to learn from, got {n}.")
        held = rng.random(n) < 0.15
        x = np.concatenate([obs, action], axis=1)
        delta = next_obs - obs
        self.x_mean, self.x_std = x.mean(0), x.std(0) + 1e-3
        self.d_mean, self.d_std = delta.mean(0), delta.std(0) + 1e-3
        xt = torch.as_tensor((x[~held] - self.x_mean) / self.x_std, dtype=torch.float32)
        dt = torch.as_tensor((delta[~held] - self.d_mean) / self.d_std, dtype=torch.float32)
        torch.manual_seed(self.seed)
        self.model = _EnsembleMLP(x.shape[1], delta.shape[1], self.hidden, self.members)
        opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        for _ in range(self.steps):
            idx = torch.randint(0, len(xt), (self.members, self.batch_size), generator=gen)
            loss = ((self.model(xt[idx]) - dt[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        calib = self.scores(obs[held], action[held], next_obs[held]) if held.any() else self.scores(obs, action, next_obs)
        self.threshold = float(np.quantile(calib, self.quantile) * self.margin)
        return self

    @torch.no_grad()
    def scores(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """Per transition: RMS over dimensions of (ensemble-mean error + ensemble std), normalized."""
        if self.model is None:
            raise ValueError("the dynamics_ensemble filter has not been fitted; call fit() on real transitions first.")
        x = torch.as_tensor((np.concatenate([obs, action], axis=1) - self.x_mean) / self.x_std, dtype=torch.float32)
        target = torch.as_tensor((next_obs - obs - self.d_mean) / self.d_std, dtype=torch.float32)
        with _torch_threads(1):
            pred = self.model(x)
        error = (pred.mean(0) - target).abs()
        spread = pred.std(0)
        return torch.sqrt(((error + spread) ** 2).mean(1)).numpy().astype(np.float64)

    def __call__(self, seg: Segment) -> FilterResult:
        return self.batch([seg])[0]

    def batch(self, segs: list[Segment]) -> list[FilterResult]:
        """Many segments in one forward pass (a filter may offer this; the pipeline uses it)."""
        if not segs:
            return []
        scores = self.scores(*(np.concatenate([getattr(s, k) for s in segs]) for k in ("obs", "action", "next_obs")))
        ends = np.cumsum([len(s) for s in segs])
        worst = np.maximum.reduceat(scores, np.concatenate([[0], ends[:-1]]))
        return [FilterResult(bool(w <= self.threshold), float(w), "" if w <= self.threshold else "dynamics_ensemble")
                for w in worst]


def capped_mixture(augmented_share: float, real_source: str = "scripted") -> dict[str, float]:
    """Sampler mixture weights that cap augmented data at ``augmented_share`` of each batch:
    ``Sampler(cache, mixture=capped_mixture(0.5))``."""
    if not 0.0 <= augmented_share <= 1.0:
        raise ValueError(f"the augmented share must lie in [0, 1], got {augmented_share}.")
    return {real_source: 1.0 - augmented_share, "augmented": augmented_share}


CORRUPTIONS = ("obs_noise", "random_action", "reward_offset", "other_next_obs")


def corrupt(seg: Segment, kind: str, rng: np.random.Generator, other: Segment | None = None) -> Segment:
    """Every transition of ``seg`` deliberately made wrong, for measuring filters:
    ``obs_noise`` (next observation + N(0, 0.01^2)), ``random_action`` (a uniform action
    in place of the one taken), ``reward_offset`` (reward moved by 0.02 to 0.2),
    ``other_next_obs`` (next observations of ``other``, a different segment)."""
    if kind == "obs_noise":
        return seg.with_arrays(next_obs=seg.next_obs + rng.normal(0.0, 0.01, seg.next_obs.shape))
    if kind == "random_action":
        return seg.with_arrays(action=rng.uniform(-1.0, 1.0, seg.action.shape))
    if kind == "reward_offset":
        return seg.with_arrays(reward=seg.reward + rng.choice([-1.0, 1.0], len(seg)) * rng.uniform(0.02, 0.2, len(seg)))
    if kind == "other_next_obs":
        if other is None:
            raise ValueError("the other_next_obs corruption needs another segment to take next observations from.")
        idx = rng.integers(0, len(other), len(seg))
        return seg.with_arrays(next_obs=other.next_obs[idx])
    raise ValueError(f"unknown corruption {kind!r}; corruptions are: {', '.join(CORRUPTIONS)}.")
