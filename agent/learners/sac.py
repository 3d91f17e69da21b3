"""Soft actor-critic from scratch (Haarnoja et al., 2018): the baseline of fine-tuning.

The same losses as SAC-N (``agent/learners/sacn.py``) with its authors' sizes: two
critics, and the min over them in the target and in the actor loss.

Critic, for each member e:  L_Q = sum_e E[ (Q_e(s, a) - y)^2 ],
    y = r + gamma (1 - terminated) ( min_e' Q'_e'(s', a') - alpha log pi(a'|s') ),  a' ~ pi(s')
Actor:        L_pi = E[ alpha log pi(a|s) - min_e Q_e(s, a) ],  a ~ pi(s)
Temperature:  L_alpha = -E[ log alpha (log pi(a|s) + H_target) ],  H_target = -|A|
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.config import option
from agent.learners.sacn import SACN, SACNConfig


@dataclass
class SACConfig(SACNConfig):
    hidden_dims: list[int] = option([256, 256], "hidden widths of actor and critics", min=1)
    num_critics: int = option(2, "critics in the ensemble; the target and the actor take the min over all", min=1)


class SAC(SACN):
    algo = "sac"
