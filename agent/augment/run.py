"""``agent augment``: augment a store's segments, keep those the guide and filters accept.

For each of ``n`` attempts: draw a segment of the source store, apply one augmentation
drawn from ``augment`` (or all of them in turn with ``compose``), ask the guide, run
the filters in order, and append the accepted segment to ``out`` as an episode with
source ``augmented``, its parent episode and a JSON lineage (augmentations and their
parameters, guide, filter scores). Every rejection is counted under its reason.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.augment import augmentations as _augmentations  # noqa: F401  (registers the built-ins)
from agent.augment import guides as _guides  # noqa: F401
from agent.augment.filters import DynamicsEnsembleFilter, SimReplayFilter
from agent.augment.geometry import geometry_for
from agent.augment.registry import AUGMENTATIONS, FILTERS, GUIDES, AugmentContext, lookup, register_filter
from agent.augment.segment import Segment, cut_segments, segment_to_episode
from agent.collect import config_hash
from agent.config import option
from agent.envs import make_env, reference_returns
from agent.store import EpisodeAttrs, Store, load_transitions


@dataclass
class AugmentConfig:
    data: str = option("", "source store (real episodes, ideally with sim_state)")
    out: str = option("", "store to create for the output")
    augment: list[str] = option(["rotate", "reflect"], "augmentations to draw from (see `agent augment --list`)")
    guide: str = option("auto", "guide that accepts a segment only if it makes progress ('auto': the task's example, 'none': all)")
    filter: list[str] = option([], "filters run in order after the guide: sim_replay, dynamics_ensemble")
    n: int = option(1000, "augmented segments to attempt", min=1)
    segment_length: int = option(10, "steps per segment (0: whole episodes)", min=0)
    compose: bool = option(False, "apply every augmentation of --augment in turn instead of drawing one")
    copy_source: bool = option(True, "copy the source episodes into --out first (same episode ids), so it trains on both")
    rotate_max_deg: float = option(90.0, "rotate: largest turn about the base, degrees", min=0, max=180)
    translate_range: float = option(0.1, "translate_*: largest shift per axis in the table plane, m", min=0)
    noise_std: float = option(0.01, "gaussian_noise: std added to observations and actions", min=0)
    scale_range: list[float] = option([0.9, 1.1], "amplitude_scale: range of the factor", gt=0)
    replay_atol: float = option(1e-3, "sim_replay: absolute tolerance on observations", min=0)
    replay_rtol: float = option(1e-3, "sim_replay: relative tolerance on observations", min=0)
    replay_reward_atol: float = option(1e-3, "sim_replay: tolerance on rewards", min=0)
    ensemble_members: int = option(5, "dynamics_ensemble: models in the ensemble", min=2)
    ensemble_steps: int = option(500, "dynamics_ensemble: training updates on the source store", min=1)
    ensemble_quantile: float = option(0.99, "dynamics_ensemble: quantile of held-out real scores that sets the threshold", min=0, max=1)
    ensemble_margin: float = option(2.0, "dynamics_ensemble: threshold = quantile times this margin", gt=0)
    seed: int = option(0, "seed of segment draws, augmentation parameters and the learned filter", min=0)


@register_filter("sim_replay")
def _sim_replay(ctx: AugmentContext) -> SimReplayFilter:
    return SimReplayFilter(ctx.env, atol=ctx.cfg.replay_atol, rtol=ctx.cfg.replay_rtol, reward_atol=ctx.cfg.replay_reward_atol)


@register_filter("dynamics_ensemble")
def _dynamics_ensemble(ctx: AugmentContext) -> DynamicsEnsembleFilter:
    f = DynamicsEnsembleFilter(members=ctx.cfg.ensemble_members, steps=ctx.cfg.ensemble_steps,
                               quantile=ctx.cfg.ensemble_quantile, margin=ctx.cfg.ensemble_margin, seed=ctx.cfg.seed)
    return f.fit(ctx.real["obs"], ctx.real["action"], ctx.real["next_obs"])


def check_config(cfg: AugmentConfig) -> None:
    if not cfg.data:
        raise ValueError("augment needs --data (the store to augment).")
    if not cfg.out:
        raise ValueError("augment needs --out (a new store for the output).")
    if cfg.n < 1:
        raise ValueError(f"--n must be at least 1, got {cfg.n}.")
    if not cfg.augment:
        raise ValueError("augment needs at least one name in --augment.")
    if cfg.segment_length < 0 or cfg.segment_length == 1:
        raise ValueError(f"--segment-length must be 0 (whole episodes) or at least 2, got {cfg.segment_length}.")
    if len(cfg.scale_range) != 2 or cfg.scale_range[0] > cfg.scale_range[1]:
        raise ValueError(f"--scale-range must be two numbers low <= high, got {cfg.scale_range}.")
    check_config_names(cfg)


BATCH = 64  # segments processed together (filters with a batch method score them in one pass)


class Augmenter:
    """The pipeline in memory: segments in, accepted segments and rejection reasons out."""

    def __init__(self, cfg: AugmentConfig, env, segments: list[Segment], real: dict[str, np.ndarray]):
        check_config_names(cfg)
        self.cfg = cfg
        try:
            geometry = geometry_for(env)
        except ValueError:
            geometry = None  # random baselines still work on any task
        self.ctx = AugmentContext(env=env, geometry=geometry, cfg=cfg, real=real)
        self.segments = segments
        self.augmentations = list(zip(cfg.augment, lookup(AUGMENTATIONS, cfg.augment, "augmentation")))
        self.guide = GUIDES[cfg.guide]
        self.filters = [(name, factory(self.ctx)) for name, factory in zip(cfg.filter, lookup(FILTERS, cfg.filter, "filter"))]
        if geometry is not None:  # rewards and success of the source segments, by the task's functions
            for seg in segments:
                seg.success = geometry.rewards(seg.next_obs)[1]

    def process(self, seg: Segment, rng: np.random.Generator) -> tuple[Segment | None, str, dict[str, float]]:
        """(accepted segment or None, rejection reason, filter scores)."""
        return self.process_batch([seg], rng)[0]

    def augment_and_guide(self, seg: Segment, rng: np.random.Generator) -> tuple[Segment | None, str]:
        chosen = self.augmentations if self.cfg.compose else [self.augmentations[int(rng.integers(len(self.augmentations)))]]
        out: Segment | None = seg
        for name, spec in chosen:
            out, reason = spec.fn(out, self.ctx, rng)
            if out is None:
                return None, f"{name}:{reason}"
        ok, reason = self.guide(out, self.ctx)
        return (out, "") if ok else (None, f"guide:{reason}")

    def process_batch(self, segs: list[Segment], rng: np.random.Generator) -> list[tuple[Segment | None, str, dict[str, float]]]:
        """:meth:`process` for many segments; filters with a ``batch`` method score them together."""
        results: list[tuple[Segment | None, str, dict[str, float]]] = [(*self.augment_and_guide(s, rng), {}) for s in segs]
        for name, f in self.filters:
            alive = [i for i, (out, _, _) in enumerate(results) if out is not None]
            candidates = [results[i][0] for i in alive]
            verdicts = f.batch(candidates) if hasattr(f, "batch") else [f(c) for c in candidates]
            for i, verdict in zip(alive, verdicts):
                out, _, scores = results[i]
                scores[name] = verdict.score
                if not verdict.accepted:
                    results[i] = (None, f"filter:{verdict.reason or name}", scores)
        return results

    def draw(self, rng: np.random.Generator) -> Segment:
        return self.segments[int(rng.integers(len(self.segments)))]


def check_config_names(cfg: AugmentConfig) -> None:
    lookup(AUGMENTATIONS, cfg.augment, "augmentation")
    lookup(GUIDES, [cfg.guide], "guide")
    lookup(FILTERS, cfg.filter, "filter")


def load_source(store: Store, segment_length: int) -> tuple[list[Segment], dict[str, np.ndarray]]:
    """The store's episodes cut into segments, and its real transitions (for learned filters)."""
    segments = [seg for i in range(store.num_episodes) for seg in cut_segments(store.episode(i), i, segment_length)]
    cache = load_transitions(store, episode_attrs=False)
    real = {"obs": cache.obs.astype(np.float64), "action": cache.action.astype(np.float64),
            "next_obs": cache.obs_table[cache.next_index].astype(np.float64)}
    return segments, real


def augment(cfg: AugmentConfig, progress: bool = True) -> dict:
    check_config(cfg)
    if Path(cfg.out).exists() and any(Path(cfg.out).iterdir()):
        raise ValueError(f"--out {cfg.out!r} exists and is not empty; augment writes a new store.")
    source = Store.open(cfg.data)
    out: Store | None = None
    env = make_env(source.env_id, **source.attrs.get("env_kwargs", {}))
    try:
        segments, real = load_source(source, cfg.segment_length)
        if not segments:
            raise ValueError(f"store {cfg.data!r} has no segment of {cfg.segment_length} steps; use a shorter --segment-length.")
        augmenter = Augmenter(cfg, env, segments, real)
        sim_dims = {k: int(source.array_specs[f"data/sim_state/{k}"]["row"][0]) for k in source.sim_state_keys()}
        out = Store.create(cfg.out, env_id=source.env_id, observation_space=env.observation_space, action_space=env.action_space,
                           control_rate=source.attrs.get("control_rate"), env_kwargs=source.attrs.get("env_kwargs", {}),
                           reference_returns=reference_returns(source.env_id), sim_state_dims=sim_dims or None)
        sim_keys = out.sim_state_keys()
        source_attrs = source.episode_attrs()
        if cfg.copy_source:
            for i in range(source.num_episodes):
                episode: dict = source.episode(i)
                episode["success"] = bool(source_attrs["success"][i])
                out.append_episode(episode, EpisodeAttrs(
                    source=str(source_attrs["source"][i]), parents=json.loads(str(source_attrs["parents"][i])),
                    generator_hash=str(source_attrs["generator_hash"][i]), checkpoint=str(source_attrs["checkpoint"][i]),
                    quality=str(source_attrs["quality"][i]), split=str(source_attrs["split"][i]), seed=int(source_attrs["seed"][i])))
        rng = np.random.default_rng(cfg.seed)
        rejected: Counter[str] = Counter()
        accepted = 0
        digest = config_hash(cfg)
        bar = tqdm(total=cfg.n, desc=f"augment {source.env_id}", disable=None if progress else True)
        for first in range(0, cfg.n, BATCH):
            drawn = [augmenter.draw(rng) for _ in range(min(BATCH, cfg.n - first))]
            for seg, (result, reason, scores) in zip(drawn, augmenter.process_batch(drawn, rng)):
                if result is None:
                    rejected[reason] += 1
                    continue
                lineage = {"source_store": str(cfg.data), "parent": seg.parent, "start": seg.start, "length": len(seg),
                           "augmentations": result.steps, "guide": cfg.guide, "filter_scores": scores}
                out.append_episode(segment_to_episode(result, sim_keys), EpisodeAttrs(
                    source="augmented", parents=[seg.parent], generator_hash=digest,
                    quality=str(source_attrs["quality"][seg.parent]), lineage=json.dumps(lineage)))
                accepted += 1
            bar.update(len(drawn))
        bar.close()
        return {"out": cfg.out, "attempted": cfg.n, "accepted": accepted, "rejected": sum(rejected.values()),
                "rejected_by_reason": dict(sorted(rejected.items())), "episodes": out.num_episodes, "steps": out.num_steps}
    finally:
        env.close()
        source.close()
        if out is not None:
            out.close()


def list_registered() -> dict:
    return {"augmentations": {k: f"{v.help}{'' if v.exact else ' (no validity claim)'}" for k, v in sorted(AUGMENTATIONS.items())},
            "guides": sorted(GUIDES), "filters": sorted(FILTERS)}
