"""ROS 2 bridge to the physical arm: message types (``robot.msgs``), transports
(``robot.transport``), the safety layer (``robot.safety``), the arm env over ROS 2
(``robot.env``), the simulated arm driver (``robot.driver``) and recording.

Importing this package registers ``robot/ArmReach-v0``, ``robot/ArmPush-v0`` and
``robot/ArmPickPlace-v0`` with gymnasium (entry points only: nothing heavy is imported
and nothing connects until an env is made and reset).
"""
from __future__ import annotations

import gymnasium

PREFIX = "robot/"
# id -> arm task name (sims.arm.env.TASKS); the env lives in robot.env
ENV_TASKS = {"robot/ArmReach-v0": "reach", "robot/ArmPush-v0": "push", "robot/ArmPickPlace-v0": "pick_place"}


def register_all() -> None:
    """Register the robot arm tasks with gymnasium (idempotent)."""
    for env_id, task in ENV_TASKS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="robot.env:RobotArmEnv", kwargs={"task": task},
                               disable_env_checker=True)


register_all()
