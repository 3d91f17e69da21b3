"""``agent corrupt``: a copy of a store with a share of its transitions corrupted, as in
"Towards Robust Offline RL under Diverse Data Corruption" (Yang et al., 2024), for
measuring how a learner copes with broken data.

Each transition is corrupted with probability ``rate`` (seeded); the others are copied
bit for bit. Per kind, with std the data's per-dimension standard deviation and
u ~ U[-scale, scale] per dimension:

==========  ======================================  =========================================
kind        random                                  adversarial (``attacker``: a trained run)
==========  ======================================  =========================================
obs         s + u std(s)                            s + d, d in [-scale, scale] std(s) lowering
                                                    the attacker's min-ensemble Q(s + d, a)
action      clip(a + u std(a), -1, 1)               a + d lowering Q(s, a + d), clipped
reward      u * 30 (the paper's scale)              -scale * r
dynamics    s' + u std(s)                           s' + d lowering Q(s' + d, mu(s')), mu the
                                                    attacker's deterministic action
==========  ======================================  =========================================

Adversarial perturbations are found by ``attack_steps`` steps of projected gradient
descent on the attacker's critic. In the store an observation is both a step's s and the
previous step's s', so corrupting only one of them cuts the episode: a transition whose s
(kind obs) or s' (kind dynamics) is corrupted becomes a one-step episode of its own (its
end marked truncated unless the original ended there), and the clean runs between stay
whole episodes. Every output episode names its source episode in ``parents`` and says in
``lineage`` what was corrupted (kind, mode, rate, scale, seed, its corrupted steps); the
store's root attributes record the whole run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.config import check_ranges, option, to_dict
from agent.store import EpisodeAttrs, Store

REWARD_RANGE = 30.0  # the paper's random reward corruption draws from U[-30, 30] (times scale here)


@dataclass
class CorruptConfig:
    data: str = option("", "store to corrupt (read only)")
    out: str = option("", "new store for the corrupted copy")
    kind: Literal["obs", "action", "reward", "dynamics"] = option("obs", "what is corrupted: the observation s, the action, the reward, or the next observation s'")
    mode: Literal["random", "adversarial"] = option("random", "random noise, or perturbations that lower an attacker's Q (needs --attacker, except for rewards)")
    rate: float = option(0.3, "share of transitions corrupted", min=0, max=1)
    scale: float = option(1.0, "size of the corruption (in data stds for obs, action, dynamics)", min=0)
    seed: int = option(0, "seed of which transitions are corrupted and of the noise", min=0)
    attacker: str = option("", "adversarial obs, action, dynamics: a trained run (IQL, TD3+BC, SAC family) whose critic the perturbations lower")
    attack_steps: int = option(20, "adversarial: projected gradient steps per perturbation", min=1)


def _adversarial(cfg: CorruptConfig, obs: np.ndarray, action: np.ndarray, std: np.ndarray, target: str) -> np.ndarray:
    """Perturbations d in [-scale, scale] * std of ``target`` ('obs' or 'action') that lower
    the attacker's min-ensemble Q, by projected gradient descent (Adam steps)."""
    import torch

    from agent.policy import load_policy

    learner = load_policy(cfg.attacker, "", obs.shape[1], action.shape[1])
    if not hasattr(learner, "critic"):
        raise ValueError(f"--attacker {cfg.attacker!r} is a {learner.algo} run, which has no critic; pass an IQL, TD3+BC "
                         f"or SAC-family run.")
    s, a = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(action, dtype=torch.float32)
    scale = torch.as_tensor(std, dtype=torch.float32)
    unit = (torch.rand(s.shape if target == "obs" else a.shape, generator=torch.Generator().manual_seed(cfg.seed)) * 2 - 1)
    para = (unit * cfg.scale).requires_grad_(True)
    opt = torch.optim.Adam([para], lr=0.1 * max(cfg.scale, 1e-6))
    for _ in range(cfg.attack_steps):
        ss = s + para * scale if target == "obs" else s
        aa = (a + para * scale).clamp(-1, 1) if target == "action" else a
        loss = learner.critic(learner.normalizer(ss), aa).min(0).values.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            para.clamp_(-cfg.scale, cfg.scale)
    return (para.detach() * scale).numpy()


def _segments(length: int, cut: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of an episode where each step in ``cut`` stands alone."""
    bounds = sorted({0, length, *cut.tolist(), *(cut + 1).tolist()})
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if a < b]


def corrupt(cfg: CorruptConfig) -> dict:
    check_ranges(cfg)
    if not cfg.data or not cfg.out:
        raise ValueError("corrupt needs --data (the store to corrupt) and --out (a new store for the copy).")
    if cfg.mode == "adversarial" and cfg.kind != "reward" and not cfg.attacker:
        raise ValueError(f"adversarial {cfg.kind} corruption lowers a critic's value: pass --attacker RUN (a trained IQL, "
                         f"TD3+BC or SAC-family run on this data), or use --mode random.")
    from agent.label import require_actions

    src = Store.open(cfg.data)
    require_actions(src)  # placeholder actions would come out looking recorded
    if src.image_keys():
        raise ValueError(f"store {cfg.data!r} holds camera images; corrupt copies low-dimensional stores only.")
    rng = np.random.default_rng(cfg.seed)
    obs_all, act_all = src.read("data/obs"), src.read("data/action")
    final_all = src.read("final_obs/obs")
    ends = src.episode_ends()
    starts = np.concatenate([[0], ends[:-1]])
    steps = src.num_steps
    hit = rng.random(steps) < cfg.rate
    idx = np.flatnonzero(hit)
    obs_std, act_std = obs_all.std(0), act_all.std(0)
    # the next observation of every step (the next step's, or its episode's final one)
    next_all = np.concatenate([obs_all[1:], obs_all[:1]])
    next_all[ends - 1] = final_all
    corrupted: dict[str, np.ndarray] = {}
    if cfg.kind == "reward":
        rewards = src.read("data/reward")
        corrupted["reward"] = (rng.uniform(-cfg.scale, cfg.scale, idx.size) * REWARD_RANGE if cfg.mode == "random"
                               else -cfg.scale * rewards[idx]).astype(np.float32)
    elif cfg.mode == "random":
        base, std = {"obs": (obs_all, obs_std), "action": (act_all, act_std), "dynamics": (next_all, obs_std)}[cfg.kind]
        values = base[idx] + rng.uniform(-cfg.scale, cfg.scale, (idx.size, base.shape[1])) * std
        corrupted[cfg.kind] = (np.clip(values, -1, 1) if cfg.kind == "action" else values).astype(np.float32)
    else:
        if cfg.kind == "dynamics":
            import torch

            from agent.policy import load_policy

            learner = load_policy(cfg.attacker, "", obs_all.shape[1], act_all.shape[1])
            with torch.no_grad():
                mu = np.asarray(learner.act(next_all[idx], deterministic=True), np.float32).reshape(idx.size, -1)
            corrupted["dynamics"] = (next_all[idx] + _adversarial(cfg, next_all[idx], mu, obs_std, "obs")).astype(np.float32)
        elif cfg.kind == "obs":
            corrupted["obs"] = (obs_all[idx] + _adversarial(cfg, obs_all[idx], act_all[idx], obs_std, "obs")).astype(np.float32)
        else:
            delta = _adversarial(cfg, obs_all[idx], act_all[idx], act_std, "action")
            corrupted["action"] = np.clip(act_all[idx] + delta, -1, 1).astype(np.float32)
    values = next(iter(corrupted.values()))
    where = np.full(steps, -1)
    where[idx] = np.arange(idx.size)
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("data", "out")}
    attrs = src.episode_attrs()
    reference = src.attrs.get("reference_returns")
    dst = Store.create(cfg.out, env_id=src.env_id, observation_space=stored_space(src, "observation_space"),
                       action_space=stored_space(src, "action_space"), control_rate=src.attrs.get("control_rate"),
                       env_kwargs=src.attrs.get("env_kwargs") or {}, reference_returns=tuple(reference) if reference else None,
                       sim_state_dims={k: tuple(src.array_specs[f"data/sim_state/{k}"]["row"]) for k in src.sim_state_keys()},
                       extra_attrs={**provenance(src), "corrupted_from": {"store": str(src.path), "transitions": int(idx.size),
                                                                           **settings}})
    written = 0
    try:
        for e, ep in enumerate(src.episodes()):
            a, b = int(starts[e]), int(ends[e])
            local = np.flatnonzero(hit[a:b])
            if cfg.kind in ("obs", "action", "reward"):
                key = {"obs": "obs", "action": "action", "reward": "reward"}[cfg.kind]
                ep[key] = ep[key].copy()
                ep[key][local] = values[where[a + local]]
            nxt = np.concatenate([ep["obs"][1:], ep["final_obs"][None]]) if cfg.kind != "obs" else next_all[a:b].copy()
            if cfg.kind == "dynamics":
                nxt[local] = values[where[a + local]]
            cuts = local if cfg.kind in ("obs", "dynamics") else np.array([], np.int64)
            for s0, s1 in _segments(b - a, cuts):
                part: dict = {k: v[s0:s1] for k, v in ep.items() if k != "final_obs" and not k.startswith("final_")}
                part["final_obs"] = nxt[s1 - 1]
                part["terminated"], part["truncated"] = part["terminated"].copy(), part["truncated"].copy()
                if s1 < b - a:  # a cut inside the episode: bootstrapped, as a time limit is
                    part["truncated"][-1] = True
                part["success"] = bool(attrs["success"][e]) and s1 == b - a
                mine = [int(t - s0) for t in local if s0 <= t < s1]
                lineage = json.dumps({"corrupted": {**settings, "steps": mine, "from_step": s0}})
                dst.append_episode(part, EpisodeAttrs(source=str(attrs["source"][e]), parents=[e], quality=str(attrs["quality"][e]),
                                                      split=str(attrs["split"][e]), seed=int(attrs["seed"][e]),
                                                      generator_hash=str(attrs["generator_hash"][e]),
                                                      checkpoint=str(attrs["checkpoint"][e]), lineage=lineage))
                written += 1
    finally:
        dst.close()
    return {"store": cfg.out, "from": cfg.data, "kind": cfg.kind, "mode": cfg.mode, "transitions": steps,
            "corrupted": int(idx.size), "episodes": written}


STANDARD_ATTRS = {"format", "version", "env_id", "env_kwargs", "observation_space", "action_space", "control_rate",
                  "software", "reference_returns", "arrays"}


def provenance(store: Store) -> dict:
    """The root attributes a derived copy keeps: where the data came from (imported_from, an
    earlier corruption or labelling), everything but the layout the new store writes itself."""
    return {k: v for k, v in store.attrs.items() if k not in STANDARD_ATTRS}


def stored_space(store: Store, name: str):
    import gymnasium

    spec = store.attrs[name]
    low = np.array([-np.inf if v is None else v for v in spec["low"]], np.float32).reshape(spec["shape"])
    high = np.array([np.inf if v is None else v for v in spec["high"]], np.float32).reshape(spec["shape"])
    return gymnasium.spaces.Box(low, high, dtype=np.float32)
