"""Trajectory-weighted sampling for mixed datasets ("Harnessing Mixed Offline RL Datasets
via Trajectory Weighting", Hong et al., 2023): draw transitions of high-return (or
high-advantage) episodes more often, so that an offline learner constrained to the data's
behaviour is constrained to its better part.

For episode i with return G_i and first observation s0_i:

* ``return``: score z_i = (G_i - min G) / (max G - min G);
* ``advantage``: score z_i = (A_i - min A) / (max A - min A), A_i = G_i - V(s0_i), V a
  ridge fit (penalty 1 on the standardized s0, none on the constant) of G on s0; it ranks
  episodes by how much better they did than episodes that started alike, where the start
  decides much of the return (the ridge keeps V from passing through every episode when
  there are about as many episodes as state dimensions);
* weight W_i = exp(z_i / temperature) (temperature 0.1, the paper's), and every transition
  of episode i is drawn with probability proportional to W_i.

``uniform`` is plain uniform sampling. A dataset whose episodes all score alike (max =
min) falls back to uniform.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Sampling = Literal["uniform", "return", "advantage"]
DEFAULT_TEMPERATURE = 0.1
RIDGE = 1.0  # penalty of the advantage's value fit, on standardized first observations


def episode_scores(kind: Sampling, returns: np.ndarray, first_obs: np.ndarray) -> np.ndarray:
    """z_i per episode, in [0, 1] (return) or spanning a range of 1 (advantage)."""
    returns = np.asarray(returns, np.float64)
    if kind == "return":
        value = returns
    elif kind == "advantage":
        s0 = np.asarray(first_obs, np.float64)
        x = (s0 - s0.mean(0)) / (s0.std(0) + 1e-9)
        centred = returns - returns.mean()
        coef = np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ centred)
        value = centred - x @ coef
    else:
        raise ValueError(f"sampling must be uniform, return or advantage, found {kind!r}.")
    span = value.max() - value.min() if len(value) else 0.0
    scale = returns.max() - returns.min() if len(returns) else 0.0
    if not span > 1e-9 * max(1.0, float(scale)):  # no spread worth the name (relative to the returns'): uniform
        return np.zeros_like(value)
    return (value - value.min()) / span


def transition_probabilities(kind: Sampling, returns: np.ndarray, first_obs: np.ndarray, episode_lengths: np.ndarray,
                             temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray | None:
    """Sampling probability of every transition (episodes in order), None for ``uniform``."""
    if kind == "uniform":
        return None
    if not temperature > 0:
        raise ValueError(f"--sampling-temperature must be positive, found {temperature}.")
    z = episode_scores(kind, returns, first_obs)
    weights = np.exp((z - z.max(initial=0.0)) / temperature)  # shifted by the max: no overflow, same ratios
    per_step = np.repeat(weights, np.asarray(episode_lengths, np.int64))
    return per_step / per_step.sum()


def cache_probabilities(cache, kind: Sampling, temperature: float = DEFAULT_TEMPERATURE,
                        steps: int | None = None) -> np.ndarray | None:
    """``transition_probabilities`` over a TransitionCache's first ``steps`` transitions
    (whole episodes; default all), from its episodes' returns and first observations."""
    if kind == "uniform":
        return None
    episodes = cache.num_episodes if steps is None else int(np.searchsorted(cache.episode_ends, steps, side="right"))
    if steps is not None and (episodes == 0 or cache.episode_ends[episodes - 1] != steps):
        raise ValueError(f"weighted sampling covers whole episodes; {steps} transitions end inside an episode.")
    lengths = np.diff(np.concatenate([[0], cache.episode_ends[:episodes]]))
    return transition_probabilities(kind, cache.episodes["return"][:episodes],
                                    cache.obs_table[cache.episode_starts[:episodes]], lengths, temperature)
