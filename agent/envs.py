"""Creating envs by gymnasium id. The agent reaches ``sims`` and ``robot`` only here,
through the registry: importing the package that owns an id's prefix registers it."""
from __future__ import annotations

import importlib

import gymnasium

_OWNERS = {"dmc/": "sims", "sims/": "sims", "robot/": "robot"}


def _register_owner(env_id: str) -> None:
    for prefix, package in _OWNERS.items():
        if env_id.startswith(prefix):
            importlib.import_module(package)
            return
    importlib.import_module("sims")


def is_registered(env_id: str) -> bool:
    """Whether ``env_id`` names a gymnasium environment (after importing the package that owns its prefix);
    an imported dataset's id (``d4rl/...``, ``robomimic/...``) names none."""
    _register_owner(env_id)
    return env_id in gymnasium.registry


def make_env(env_id: str, **kwargs) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``; an unknown id is refused with the known ones."""
    _register_owner(env_id)
    sims = importlib.import_module("sims")
    return sims.make(env_id, **kwargs)


def reference_returns(env_id: str) -> tuple[float, float] | None:
    """(random, expert) returns for normalized scores; a ``robot/`` task is the same task
    as its simulated twin (same reward functions), so it shares the ``sims/`` references."""
    if env_id.startswith("robot/"):
        env_id = "sims/" + env_id.removeprefix("robot/")
    _register_owner(env_id)
    return importlib.import_module("sims.reference").reference_returns(env_id)


def normalized_score(env_id: str, ret: float) -> float | None:
    ref = reference_returns(env_id)
    return None if ref is None else 100.0 * (ret - ref[0]) / (ref[1] - ref[0])
