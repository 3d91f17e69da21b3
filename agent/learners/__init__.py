"""Learners, one file per algorithm, built by name from :data:`LEARNERS`.

Every learner has ``update(batch) -> dict[str, Tensor]`` (a batch of [B, ...] tensors,
or [K, B, ...] for K fused critic updates), ``act(obs, deterministic) -> action``,
``fit_normalizer(mean, var)``, ``state_dict()`` / ``load_state_dict()``, and
attributes ``algo``, ``obs_dim``, ``act_dim``, ``device``. A learner that needs more
per-transition data than the store's (Cal-QL's returns-to-go) has ``prepare(cache)``.
"""
from __future__ import annotations

from agent.learners.bc import BC, BCConfig
from agent.learners.calql import CalQL, CalQLConfig
from agent.learners.cql import CQL, CQLConfig
from agent.learners.darc import DARC, DARCConfig
from agent.learners.h2o import H2O, H2OConfig
from agent.learners.iql import IQL, IQLConfig
from agent.learners.prdc import PRDC, PRDCConfig
from agent.learners.riql import RIQL, RIQLConfig
from agent.learners.rlpd import RLPD, RLPDConfig
from agent.learners.ro2o import RO2O, RO2OConfig
from agent.learners.sac import SAC, SACConfig
from agent.learners.sacn import SACN, SACNConfig
from agent.learners.td3bc import TD3BC, TD3BCConfig
from agent.learners.wsrl import WSRL, WSRLConfig

# algo name -> (learner class, config class); the config section has the algo's name
LEARNERS: dict[str, tuple[type, type]] = {
    "bc": (BC, BCConfig),
    "iql": (IQL, IQLConfig),
    "riql": (RIQL, RIQLConfig),
    "cql": (CQL, CQLConfig),
    "calql": (CalQL, CalQLConfig),
    "td3bc": (TD3BC, TD3BCConfig),
    "prdc": (PRDC, PRDCConfig),
    "sacn": (SACN, SACNConfig),
    # online fine-tuning (agent/finetune)
    "wsrl": (WSRL, WSRLConfig),
    "h2o": (H2O, H2OConfig),
    "darc": (DARC, DARCConfig),
    "ro2o": (RO2O, RO2OConfig),
    "rlpd": (RLPD, RLPDConfig),
    "sac": (SAC, SACConfig),
}


def make_learner(algo: str, cfg, obs_dim: int, act_dim: int, device: str = "cpu"):
    if algo not in LEARNERS:
        raise ValueError(f"unknown algorithm {algo!r}; available: {', '.join(sorted(LEARNERS))}.")
    cls, _ = LEARNERS[algo]
    return cls(cfg, obs_dim, act_dim, device=device)
