"""Cal-QL: calibrated CQL for offline-to-online fine-tuning (Nakamoto et al., 2023).

CQL (``agent/learners/cql.py``) whose pushed-down values are calibrated: inside the
log-sum-exp, Q(s, a_pi) and Q(s, a_pi') are replaced by max(Q, G(s)), where G(s) is the
Monte-Carlo discounted return-to-go of the dataset state s,

    G_t = r_t + gamma G_{t+1},  G_T = r_T + gamma (1 - terminated_T) * tail.

Truncation: a truncated episode did not end, so its tail is not zero. ``truncated_tail``
chooses how it is handled: "lower_bound" bootstraps it with r_min / (1 - gamma), the
value of receiving the dataset's smallest reward forever -- a true lower bound of the
missing tail, so G stays a lower bound of the return, which is all the clamp needs;
"exclude" drops the clamp (G = -inf) for every step of a truncated episode. A
terminated episode's tail is exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from agent.config import option
from agent.learners.cql import CQL, CQLConfig


@dataclass
class CalQLConfig(CQLConfig):
    gamma: float = option(0.99, "discount (below 1: a truncated episode's return-to-go is bootstrapped with r_min / (1 - gamma))",
                          min=0, lt=1)
    truncated_tail: Literal["lower_bound", "exclude"] = option("lower_bound", "how returns-to-go treat a truncated episode's tail")


def returns_to_go(reward: np.ndarray, episode_ends: np.ndarray, terminated: np.ndarray, gamma: float,
                  truncated_tail: str = "lower_bound") -> np.ndarray:
    """Discounted return-to-go of every step, computed per episode from its end."""
    reward = np.asarray(reward, np.float64)
    out = np.empty_like(reward)
    tail_value = float(reward.min()) / (1.0 - gamma) if reward.size else 0.0
    start = 0
    for end in np.asarray(episode_ends, np.int64):
        if terminated[end - 1]:
            running = 0.0
        elif truncated_tail == "exclude":
            out[start:end] = -np.inf
            start = end
            continue
        else:
            running = tail_value
        for t in range(end - 1, start - 1, -1):
            running = reward[t] + gamma * running
            out[t] = running
        start = end
    return out.astype(np.float32)


class CalQL(CQL):
    algo = "calql"

    def prepare(self, cache) -> dict[str, np.ndarray]:
        """Per-transition extras the sampler returns with each batch."""
        return {"mc_return": returns_to_go(cache.reward, cache.episode_ends, cache.terminated, self.cfg.gamma,
                                           self.cfg.truncated_tail)}

    def lower_bound(self, batch: dict) -> torch.Tensor | None:
        return batch["mc_return"]
