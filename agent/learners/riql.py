"""RIQL: robust IQL under data corruption ("Towards Robust Offline Reinforcement Learning
under Diverse Data Corruption", Yang et al., 2024).

IQL (``agent/learners/iql.py``) with the paper's three changes, as config defaults of its
own section: observation normalization (every learner here normalizes), a Huber loss on
the critic's TD error (corrupted dynamics make the targets heavy-tailed), and an ensemble
of 5 critics read through its 0.25-quantile instead of its min in the value target and the
advantage (penalizing transitions the members disagree on, as corrupted ones tend to be,
without the min's pessimism on clean ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.config import option
from agent.learners.iql import IQL, IQLConfig


@dataclass
class RIQLConfig(IQLConfig):
    num_critics: int = option(5, "critics in the ensemble", min=1)
    q_aggregate: Literal["min", "quantile"] = option("quantile", "the target critics' estimate in the value target and the advantage: their min, or their quantile")
    quantile: float = option(0.25, "q_aggregate=quantile: which quantile of the ensemble", min=0, max=1)
    critic_loss: Literal["mse", "huber"] = option("huber", "the critic's TD loss: squared error, or Huber (robust to heavy-tailed targets)")
    huber_delta: float = option(1.0, "critic_loss=huber: where the loss turns from quadratic to linear", gt=0)


class RIQL(IQL):
    algo = "riql"
