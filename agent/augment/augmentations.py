"""The built-in augmentations.

Exact (dynamics stay valid where they apply; see :mod:`agent.augment.geometry`):

* ``reflect`` -- mirror across the arm's symmetry plane (world y -> -y).
* ``rotate`` -- turn the whole scene about the base by up to ``rotate_max_deg``; the
  end-effector, cube and goal move on arcs about the base. (A joint-velocity action
  cannot translate the end-effector in a straight line without changing the dynamics,
  so this is how the end-effector moves in the table plane.)
* ``translate_goal`` -- move the goal by up to ``translate_range`` in the table plane.
* ``translate_object`` -- move a cube that rests untouched through the segment, and
  its goal with it, by up to ``translate_range`` in the table plane.
* ``relabel_goal`` -- hindsight: the goal becomes what the segment achieved at its end
  (grip site for reach, cube for push and pick-and-place, finger for reacher).

One caveat, measured rather than assumed: the arm's gripper is driven through its left
finger, the right one follows through a soft coupling, so while the gripper moves or
presses a mirrored state differs from the true mirror by about 1e-3 rad/s in joint
velocities. ``reflect`` therefore applies to arm segments only while the gripper rests
wide open (reason ``gripper_active`` otherwise); on reacher it always applies.

Random baselines (no claim of validity; rewards and simulator states are kept as they
were, so ``sim_replay`` judges them against the unaugmented physics): ``gaussian_noise`` adds
noise of std ``noise_std`` to observations and actions, ``amplitude_scale`` multiplies
observations by one factor drawn from ``scale_range``.
"""
from __future__ import annotations

import numpy as np

from agent.augment.geometry import PlanarMap, apply_map
from agent.augment.registry import AugmentContext, register_augmentation
from agent.augment.segment import Segment


def _planar_shift(ctx: AugmentContext, rng: np.random.Generator) -> np.ndarray:
    r = ctx.cfg.translate_range
    return np.array([*rng.uniform(-r, r, 2), 0.0])


def _needs_geometry(ctx: AugmentContext) -> str:
    return "" if ctx.geometry is not None else "no_geometry"


@register_augmentation("reflect", exact=True, help="mirror across the arm's symmetry plane (y -> -y)")
def reflect(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    if _needs_geometry(ctx):
        return None, "no_geometry"
    return apply_map(ctx.geometry, seg, PlanarMap(reflect=True), "reflect", {})


@register_augmentation("rotate", exact=True, help="turn the scene about the base by up to rotate_max_deg")
def rotate(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    if _needs_geometry(ctx):
        return None, "no_geometry"
    angle = float(np.deg2rad(rng.uniform(-ctx.cfg.rotate_max_deg, ctx.cfg.rotate_max_deg)))
    return apply_map(ctx.geometry, seg, PlanarMap(angle=angle), "rotate", {"angle_rad": angle})


@register_augmentation("translate_goal", exact=True, help="move the goal by up to translate_range in the table plane")
def translate_goal(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    if _needs_geometry(ctx):
        return None, "no_geometry"
    shift = _planar_shift(ctx, rng)
    return apply_map(ctx.geometry, seg, PlanarMap(goal_shift=shift), "translate_goal", {"shift": shift.tolist()})


@register_augmentation("translate_object", exact=True, help="move an untouched resting cube (and its goal) in the table plane")
def translate_object(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    if _needs_geometry(ctx):
        return None, "no_geometry"
    shift = _planar_shift(ctx, rng)
    return apply_map(ctx.geometry, seg, PlanarMap(goal_shift=shift, object_shift=shift[:2]), "translate_object",
                     {"shift": shift.tolist()})


@register_augmentation("relabel_goal", exact=True, help="hindsight: the goal becomes what the segment achieved")
def relabel_goal(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    if _needs_geometry(ctx):
        return None, "no_geometry"
    geom = ctx.geometry
    achieved = geom.achieved_goal(seg.next_obs[-1:])[0]
    goal = geom.goal(seg.obs[:1])[0]
    shift = np.zeros(3)
    shift[:len(achieved)] = achieved - goal[:len(achieved)]
    if geom.goal_dims == 2:
        shift[2] = 0.0  # goals on the table stay on the table
    return apply_map(geom, seg, PlanarMap(goal_shift=shift), "relabel_goal", {"goal": (goal + shift[:len(goal)]).tolist()})


@register_augmentation("gaussian_noise", exact=False, help="baseline: Gaussian noise on observations and actions")
def gaussian_noise(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    std = ctx.cfg.noise_std
    obs_noise = rng.normal(0.0, std, seg.obs.shape)
    next_noise = np.concatenate([obs_noise[1:], rng.normal(0.0, std, (1, seg.obs.shape[1]))])
    action = np.clip(seg.action + rng.normal(0.0, std, seg.action.shape), -1.0, 1.0)
    return seg.with_arrays(obs=seg.obs + obs_noise, next_obs=seg.next_obs + next_noise, action=action,
                           steps=[*seg.steps, {"name": "gaussian_noise", "params": {"std": std}}]), ""


@register_augmentation("amplitude_scale", exact=False, help="baseline: observations times one random factor")
def amplitude_scale(seg: Segment, ctx: AugmentContext, rng: np.random.Generator):
    low, high = ctx.cfg.scale_range
    factor = float(rng.uniform(low, high))
    return seg.with_arrays(obs=seg.obs * factor, next_obs=seg.next_obs * factor,
                           steps=[*seg.steps, {"name": "amplitude_scale", "params": {"factor": factor}}]), ""
