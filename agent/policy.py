"""Rebuilding a trained policy from a checkpoint."""
from __future__ import annotations

from agent.checkpoint import check_shapes, load_checkpoint
from agent.config import from_dict
from agent.learners import LEARNERS, make_learner


def load_policy(run_or_checkpoint: str, env_id: str, obs_dim: int, act_dim: int, device: str = "cpu"):
    """The learner saved in ``run_or_checkpoint``, checked against the env's shapes."""
    ckpt = load_checkpoint(run_or_checkpoint)
    algo = ckpt.get("algo")
    if algo not in LEARNERS:
        raise ValueError(f"checkpoint {run_or_checkpoint!r} is for algorithm {algo!r}, which this agent does not know.")
    check_shapes(ckpt, obs_dim, act_dim, env_id, repr(run_or_checkpoint))
    cfg = from_dict(LEARNERS[algo][1], ckpt["algo_config"])
    learner = make_learner(algo, cfg, obs_dim, act_dim, device=device)
    try:
        learner.load_state_dict(ckpt["learner"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {run_or_checkpoint!r} does not match the {algo} networks it names: {exc}") from None
    return learner


def policy_maker(run_or_checkpoint: str, env_id: str, deterministic: bool = True):
    """``make_policy(env) -> policy(obs)`` for :func:`agent.evaluate.evaluate`: the saved
    learner, checked against that env's shapes, acting deterministically by default."""
    import numpy as np

    def make_policy(env):
        learner = load_policy(str(run_or_checkpoint), env_id, int(np.prod(env.observation_space.shape)),
                              int(np.prod(env.action_space.shape)))
        return lambda obs: learner.act(obs, deterministic=deterministic)

    return make_policy
