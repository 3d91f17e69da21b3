"""Guides: plain predicates a user writes to say which segments make progress.

Building blocks (each returns a guide ``fn(segment, ctx) -> (accepted, reason)``):

* :func:`distance_shrinks` -- a distance at the end of the segment is at least
  ``min_decrease`` below its value at the start, or already below ``done_within``.
* :func:`heading_within_cone` -- a point's displacement over the segment points within
  ``max_deg`` of the direction to a target (segments that barely move pass only when
  the point is already at the target).
* :func:`stays_inside` -- a point stays inside an axis-aligned box.
* :func:`all_of` / :func:`any_of` -- combinations.

Registered example guides, one per task: ``reach``, ``push``, ``pick_place``,
``reacher``; ``auto`` picks the one of the store's task.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from agent.augment.registry import GUIDES, AugmentContext, GuideFn, register_guide
from agent.augment.segment import Segment

Quantity = Callable[[Segment, AugmentContext, np.ndarray], np.ndarray]  # (seg, ctx, obs rows) -> (T, k)


def part(name: str) -> Quantity:
    """An observation part by name (``grip_pos``, ``object_to_goal``, ...)."""
    return lambda seg, ctx, obs: obs[:, ctx.geometry.slices[name]]


def achieved(seg: Segment, ctx: AugmentContext, obs: np.ndarray) -> np.ndarray:
    return ctx.geometry.achieved_goal(obs)


def goal(seg: Segment, ctx: AugmentContext, obs: np.ndarray) -> np.ndarray:
    return ctx.geometry.goal(obs)


def _ends(seg: Segment, ctx: AugmentContext, q: Quantity) -> tuple[np.ndarray, np.ndarray]:
    return q(seg, ctx, seg.obs[:1])[0], q(seg, ctx, seg.next_obs[-1:])[0]


def distance_shrinks(vector: Quantity, min_decrease: float, done_within: float = 0.0, label: str = "no_progress") -> GuideFn:
    """Accept when |vector| ends ``min_decrease`` below where it started, or within ``done_within``."""
    def guide(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
        start, end = (float(np.linalg.norm(v)) for v in _ends(seg, ctx, vector))
        return (end <= start - min_decrease or end <= done_within), label
    return guide


def heading_within_cone(point: Quantity, target: Quantity, max_deg: float, min_motion: float = 0.005,
                        done_within: float = 0.0, label: str = "off_heading") -> GuideFn:
    """Accept when ``point`` moves within ``max_deg`` of the direction to ``target``."""
    cos_max = float(np.cos(np.deg2rad(max_deg)))

    def guide(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
        (p0, p1), (g0, _) = _ends(seg, ctx, point), _ends(seg, ctx, target)
        dims = min(len(p0), len(g0))
        motion, wanted = (p1 - p0)[:dims], (g0 - p0)[:dims]
        if np.linalg.norm(wanted) <= done_within:
            return True, label
        if np.linalg.norm(motion) < min_motion:
            return False, label
        cos = float(motion @ wanted / (np.linalg.norm(motion) * np.linalg.norm(wanted)))
        return cos >= cos_max, label
    return guide


def stays_inside(point: Quantity, low, high, label: str = "outside_region") -> GuideFn:
    """Accept when ``point`` stays in the box [low, high] at every step."""
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)

    def guide(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
        p = np.concatenate([point(seg, ctx, seg.obs), point(seg, ctx, seg.next_obs[-1:])])[:, :lo.size]
        return bool(np.all(p >= lo) and np.all(p <= hi)), label
    return guide


def all_of(*guides: GuideFn) -> GuideFn:
    def guide(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
        for g in guides:
            ok, reason = g(seg, ctx)
            if not ok:
                return False, reason
        return True, ""
    return guide


def any_of(*guides: GuideFn) -> GuideFn:
    def guide(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
        reasons = []
        for g in guides:
            ok, reason = g(seg, ctx)
            if ok:
                return True, ""
            reasons.append(reason)
        return False, reasons[0]
    return guide


# -- one example guide per task -------------------------------------------------------------
WORKSPACE_LOW, WORKSPACE_HIGH = [0.15, -0.45, 0.0], [0.8, 0.45, 0.45]  # grip site: over the table, in reach

_reach = all_of(
    stays_inside(part("grip_pos"), WORKSPACE_LOW, WORKSPACE_HIGH),
    distance_shrinks(part("grip_to_goal"), min_decrease=0.01, done_within=0.03),
    heading_within_cone(part("grip_pos"), goal, max_deg=45.0, done_within=0.03),
)
# a pushed or carried cube gets closer to its goal; before that, the grip gets closer to the cube
_cube_progress = any_of(
    distance_shrinks(part("object_to_goal"), min_decrease=0.01, done_within=0.05, label="no_progress"),
    all_of(distance_shrinks(part("grip_to_object"), min_decrease=0.01, done_within=0.0, label="no_progress"),
           heading_within_cone(part("grip_pos"), part("object_pos"), max_deg=60.0, done_within=0.02)),
)
_push = all_of(stays_inside(part("object_pos"), [0.2, -0.4], [0.75, 0.4], label="object_off_region"),
               stays_inside(part("grip_pos"), WORKSPACE_LOW, WORKSPACE_HIGH), _cube_progress)
_pick_place = all_of(stays_inside(part("object_pos"), [0.2, -0.4, 0.0], [0.75, 0.4, 0.3], label="object_off_region"),
                     stays_inside(part("grip_pos"), WORKSPACE_LOW, WORKSPACE_HIGH), _cube_progress)


def _finger_to_target(seg: Segment, ctx: AugmentContext, obs: np.ndarray) -> np.ndarray:
    return obs[:, ctx.geometry.slices["to_target"]]


_reacher = all_of(distance_shrinks(_finger_to_target, min_decrease=0.005, done_within=0.06),
                  heading_within_cone(achieved, goal, max_deg=60.0, done_within=0.06))

register_guide("reach")(_reach)
register_guide("push")(_push)
register_guide("pick_place")(_pick_place)
register_guide("reacher")(_reacher)

_BY_ENV = {"sims/ArmReach-v0": "reach", "sims/ArmPush-v0": "push", "sims/ArmPickPlace-v0": "pick_place",
           "dmc/reacher-easy-v0": "reacher", "dmc/reacher-hard-v0": "reacher"}


@register_guide("auto")
def auto(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
    """The example guide of the store's task."""
    env_id = ctx.geometry.env_id if ctx.geometry is not None else ""
    if env_id not in _BY_ENV:
        raise ValueError(f"the 'auto' guide knows {', '.join(_BY_ENV)}, not {env_id!r}; name a guide with --guide.")
    return GUIDES[_BY_ENV[env_id]](seg, ctx)


@register_guide("none")
def accept_all(seg: Segment, ctx: AugmentContext) -> tuple[bool, str]:
    """No guide: every segment is accepted (for unguided baselines)."""
    return True, ""
