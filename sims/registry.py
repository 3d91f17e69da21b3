"""The explicit registry of this package's tasks (no discovery by scanning)."""
from __future__ import annotations

import difflib

import gymnasium

PREFIXES = ("dmc/", "sims/")
# ids other packages register (robot/: the ROS 2 bridge, once imported), listed with ours
FOREIGN_PREFIXES = ("robot/",)
_registered = False
# The project's arm tasks: id -> task name in sims.arm.env.TASKS.
ARM_TASKS = {
    "sims/ArmReach-v0": "reach",
    "sims/ArmPush-v0": "push",
    "sims/ArmPickPlace-v0": "pick_place",
}


def register_all() -> None:
    """Register every task of this package with gymnasium (idempotent)."""
    global _registered
    if _registered:
        return
    from dm_control import suite

    for domain, task in suite.ALL_TASKS:
        env_id = f"dmc/{domain}-{task}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="sims.dmc:DMCEnv",
                kwargs={"domain": domain, "task": task},
                disable_env_checker=True,
            )
    for env_id, task in ARM_TASKS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="sims.arm.env:ArmEnv", kwargs={"task": task},
                               disable_env_checker=True)
    _registered = True


def known_env_ids() -> list[str]:
    """All task ids this package registers, and those of FOREIGN_PREFIXES registered so far, sorted."""
    register_all()
    return sorted(k for k in gymnasium.registry if k.startswith(PREFIXES + FOREIGN_PREFIXES))


def make(env_id: str, **kwargs) -> gymnasium.Env:
    """``gymnasium.make`` with a readable refusal of unknown ids."""
    known = known_env_ids()
    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown env id {env_id!r}.{hint} Known ids: {', '.join(known)}."
        )
    return gymnasium.make(env_id, **kwargs)
