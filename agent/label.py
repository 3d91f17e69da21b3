"""``agent label``: actions for episodes recorded without them ("Semi-Supervised Offline RL
with Action-Free Trajectories", Zheng et al., 2023).

Episodes flagged ``action_free`` hold observations and rewards but placeholder actions.
An inverse dynamics model a = f(s, s') (an MLP on normalized observations, tanh output,
squared error) is trained on the episodes that have actions, its error measured on a
held-out share of them, and every action-free episode gets f's actions; the result is a
new store any offline learner trains on. Each labelled episode's lineage names the model's
held-out error; the store's attributes record the run.

``--forget FRACTION`` does the opposite, for experiments: a copy of a store in which that
share of episodes (seeded) is flagged action-free, its actions zeroed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from agent.config import check_ranges, option, to_dict
from agent.store import EpisodeAttrs, Store, load_transitions


@dataclass
class LabelConfig:
    data: str = option("", "store with action-free episodes (read only)")
    out: str = option("", "new store: every episode with actions")
    forget: float = option(0.0, "instead of labelling: copy the store with this share of episodes made action-free", min=0, max=1)
    holdout: float = option(0.1, "share of the episodes with actions kept out of training to measure the labeller", min=0, lt=1)
    steps: int = option(5_000, "gradient steps of the inverse dynamics model", min=1)
    batch_size: int = option(256, "transitions per step", min=1)
    hidden_dims: list[int] = option([256, 256], "hidden widths of the inverse dynamics model", min=1)
    lr: float = option(1e-3, "learning rate", gt=0)
    seed: int = option(0, "seed of the model, the batches and --forget's choice", min=0)


def action_free_mask(store: Store) -> np.ndarray:
    """Per episode, whether its actions are placeholders (False for stores without the column)."""
    attrs = store.episode_attrs()
    return np.asarray(attrs["action_free"], bool) if "action_free" in attrs else np.zeros(store.num_episodes, bool)


def require_actions(store: Store) -> None:
    """Refuse to train on placeholder actions."""
    free = action_free_mask(store)
    if free.any():
        raise ValueError(f"store {store.path!r} has {int(free.sum())} action-free episodes (no recorded actions); "
                         f"label them first: agent label --data {store.path} --out LABELLED.zarr")


def _copy(src: Store, out: str, extra_attrs: dict) -> Store:
    from agent.corrupt import provenance, stored_space

    reference = src.attrs.get("reference_returns")
    return Store.create(out, env_id=src.env_id, observation_space=stored_space(src, "observation_space"),
                        action_space=stored_space(src, "action_space"),
                        control_rate=src.attrs.get("control_rate"), env_kwargs=src.attrs.get("env_kwargs") or {},
                        reference_returns=tuple(reference) if reference else None,
                        sim_state_dims={k: tuple(src.array_specs[f"data/sim_state/{k}"]["row"]) for k in src.sim_state_keys()},
                        extra_attrs={**provenance(src), **extra_attrs})


def _attrs(attrs: dict, e: int, **changes) -> EpisodeAttrs:
    base = {"source": str(attrs["source"][e]), "parents": [e], "quality": str(attrs["quality"][e]),
            "split": str(attrs["split"][e]), "seed": int(attrs["seed"][e]), "generator_hash": str(attrs["generator_hash"][e]),
            "checkpoint": str(attrs["checkpoint"][e])}
    return EpisodeAttrs(**{**base, **changes})




def forget(cfg: LabelConfig) -> dict:
    src = Store.open(cfg.data)
    rng = np.random.default_rng(cfg.seed)
    chosen = np.zeros(src.num_episodes, bool)
    chosen[rng.choice(src.num_episodes, size=int(round(cfg.forget * src.num_episodes)), replace=False)] = True
    attrs = src.episode_attrs()
    already = action_free_mask(src)
    dst = _copy(src, cfg.out, {"actions_forgotten": {"store": str(src.path), "fraction": cfg.forget, "seed": cfg.seed}})
    try:
        for e, recorded in enumerate(src.episodes()):
            ep: dict = {**recorded, "success": bool(attrs["success"][e])}
            if chosen[e]:
                ep["action"] = np.zeros_like(ep["action"])
            lineage = json.dumps({"actions_forgotten": True}) if chosen[e] else str(attrs.get("lineage", [""] * (e + 1))[e])
            dst.append_episode(ep, _attrs(attrs, e, action_free=bool(chosen[e] or already[e]), lineage=lineage))
    finally:
        dst.close()
    return {"store": cfg.out, "from": cfg.data, "episodes": int(src.num_episodes), "action_free": int((chosen | already).sum())}


def label(cfg: LabelConfig) -> dict:
    check_ranges(cfg)
    if not cfg.data or not cfg.out:
        raise ValueError("label needs --data (a store with action-free episodes) and --out (a new store).")
    if cfg.forget:
        return forget(cfg)
    import torch

    from agent.nets import mlp

    src = Store.open(cfg.data)
    free = action_free_mask(src)
    if not free.any():
        raise ValueError(f"store {cfg.data!r} has no action-free episodes: every action is recorded, nothing to label.")
    known = np.flatnonzero(~free)
    if known.size < 2:
        raise ValueError(f"store {cfg.data!r} has {known.size} episode(s) with actions; the inverse dynamics model needs "
                         f"at least 2 (one to learn from, one to measure it on).")
    cache = load_transitions(src)
    starts, ends = cache.episode_starts, cache.episode_ends
    n_held = min(max(1, int(round(cfg.holdout * len(known)))), len(known) - 1) if cfg.holdout > 0 else 0  # one left to learn from
    held = known[len(known) - n_held:]
    train = np.setdiff1d(known, held)
    rows = lambda eps: np.concatenate([np.arange(starts[e], ends[e]) for e in eps]) if len(eps) else np.zeros(0, int)  # noqa: E731
    train_rows, held_rows = rows(train), rows(held)
    mean, std = cache.obs[train_rows].mean(0), cache.obs[train_rows].std(0) + 1e-3

    def inputs(idx):
        return torch.as_tensor(np.concatenate([(cache.obs[idx] - mean) / std, (cache.next_obs(idx) - mean) / std], 1),
                               dtype=torch.float32)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    act_dim = cache.action.shape[1]
    model = mlp(2 * cache.obs.shape[1], cfg.hidden_dims, act_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    predict = lambda x: torch.tanh(model(x))  # noqa: E731
    for _ in range(cfg.steps):
        idx = train_rows[rng.integers(0, train_rows.size, cfg.batch_size)]
        loss = ((predict(inputs(idx)) - torch.as_tensor(cache.action[idx])) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held_mse = float(((predict(inputs(held_rows)) - torch.as_tensor(cache.action[held_rows])) ** 2).mean()) if held_rows.size else None
        # what guessing the training mean would score: the error the model is to be read against
        baseline = float(((cache.action[train_rows].mean(0) - cache.action[held_rows]) ** 2).mean()) if held_rows.size else None
    report = {"store": str(src.path), "heldout_mse": held_mse, "heldout_mse_of_the_mean_action": baseline,
              "labelled_from_episodes": int(train.size), "heldout_episodes": int(held.size), "steps": cfg.steps,
              "settings": {k: v for k, v in to_dict(cfg).items() if k not in ("data", "out", "forget")}}
    attrs = src.episode_attrs()
    dst = _copy(src, cfg.out, {"labelled_from": report})
    try:
        for e, recorded in enumerate(src.episodes()):
            ep: dict = {**recorded, "success": bool(attrs["success"][e])}
            if free[e]:
                with torch.no_grad():
                    ep["action"] = predict(inputs(np.arange(starts[e], ends[e]))).numpy().astype(np.float32)
                lineage = json.dumps({"labelled": {"model": "inverse dynamics", "heldout_mse": held_mse,
                                                   "labelled_from_episodes": int(train.size)}})
                dst.append_episode(ep, _attrs(attrs, e, lineage=lineage))
            else:
                dst.append_episode(ep, _attrs(attrs, e, lineage=str(attrs["lineage"][e]) if "lineage" in attrs else ""))
    finally:
        dst.close()
    return {"store": cfg.out, "from": cfg.data, "labelled_episodes": int(free.sum()), **{k: report[k] for k in
            ("heldout_mse", "heldout_mse_of_the_mean_action", "labelled_from_episodes", "heldout_episodes")}}
