"""MuJoCo tasks with the gymnasium API.

Importing this package registers every task with gymnasium:

* ``dmc/<domain>-<task>-v0`` for every dm_control suite task;
* ``sims/ArmReach-v0``, ``sims/ArmPush-v0``, ``sims/ArmPickPlace-v0`` for the project's arm.

Tasks are created with ``gymnasium.make(ID, **kwargs)``; :func:`make` does the same
but refuses an unknown id with the list of known ones.
"""
from __future__ import annotations

import os

# Headless rendering by default; a user's own MUJOCO_GL setting wins.
os.environ.setdefault("MUJOCO_GL", "egl")

from sims.registry import known_env_ids, make, register_all  # noqa: E402

register_all()

__all__ = ["known_env_ids", "make", "register_all"]
