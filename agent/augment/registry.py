"""Name -> function tables for augmentations, guides and filters, and how users add theirs.

An **augmentation** is ``fn(segment, ctx, rng) -> (segment | None, reason)``: a new
segment, or None and a short reason (``"pan_limit"``) when it does not apply.
A **guide** is ``fn(segment, ctx) -> (accepted, reason)``.
A **filter** is built per run by ``factory(ctx) -> filter`` where ``filter(segment)``
returns a :class:`agent.augment.filters.FilterResult`.

``ctx`` is the :class:`AugmentContext` of the run: the env, its task geometry, the
config and the real transitions of the source store. Example::

    import numpy as np
    from agent.augment import register_augmentation, register_guide

    @register_augmentation("slow_down", exact=False)
    def slow_down(seg, ctx, rng):
        factor = float(rng.uniform(0.5, 1.0))
        return seg.with_arrays(action=seg.action * factor,
                               steps=[*seg.steps, {"name": "slow_down", "params": {"factor": factor}}]), ""

    @register_guide("keeps_gripper_open")
    def keeps_gripper_open(seg, ctx):
        opening = seg.obs[:, ctx.geometry.slices["gripper_opening"]]
        return bool(opening.min() > 0.06), "gripper_closed"

Then ``agent augment --augment slow_down --guide keeps_gripper_open ...`` from a
script that imported them, or ``augment(cfg)`` from Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from agent.augment.segment import Segment

AugmentFn = Callable[[Segment, "AugmentContext", np.random.Generator], tuple[Segment | None, str]]
GuideFn = Callable[[Segment, "AugmentContext"], tuple[bool, str]]
FilterFactory = Callable[["AugmentContext"], Any]


@dataclass
class AugmentationSpec:
    fn: AugmentFn
    exact: bool      # keeps the dynamics valid wherever it applies (tests hold it to that)
    help: str


@dataclass
class AugmentContext:
    env: Any                      # the task's gymnasium env (unwrapped for replay)
    geometry: Any                 # agent.augment.geometry.Geometry, or None for tasks without one
    cfg: Any                      # AugmentConfig
    real: dict[str, np.ndarray] = field(default_factory=dict)  # obs, action, next_obs of the source store


AUGMENTATIONS: dict[str, AugmentationSpec] = {}
GUIDES: dict[str, GuideFn] = {}
FILTERS: dict[str, FilterFactory] = {}


def _check_name(name: str, table: dict, kind: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"{kind} names are letters, digits and underscores, got {name!r}.")
    if name in table:
        raise ValueError(f"a {kind} named {name!r} is already registered; choose another name.")


def register_augmentation(name: str, exact: bool, help: str = ""):
    """Decorator: register ``fn(segment, ctx, rng) -> (segment | None, reason)`` under ``name``.
    ``exact=True`` promises valid dynamics wherever it applies."""
    _check_name(name, AUGMENTATIONS, "augmentation")

    def add(fn: AugmentFn) -> AugmentFn:
        AUGMENTATIONS[name] = AugmentationSpec(fn, exact, help or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return add


def register_guide(name: str):
    """Decorator: register ``fn(segment, ctx) -> (accepted, reason)`` under ``name``."""
    _check_name(name, GUIDES, "guide")

    def add(fn: GuideFn) -> GuideFn:
        GUIDES[name] = fn
        return fn

    return add


def register_filter(name: str):
    """Decorator: register ``factory(ctx) -> filter`` under ``name``."""
    _check_name(name, FILTERS, "filter")

    def add(factory: FilterFactory) -> FilterFactory:
        FILTERS[name] = factory
        return factory

    return add


def lookup(table: dict, names: list[str], kind: str) -> list:
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; registered: {', '.join(sorted(table))}.")
    return [table[n] for n in names]
