"""ArmReach: move the grip site to a goal point in the air above the table.

Dense reward ``1 - tanh(10 d)`` with d the grip-to-goal distance; success (and the
sparse reward) when d < 3 cm. Model: ``reach.xml``.
"""
from __future__ import annotations

import math

import numpy as np

GOAL_LOW, GOAL_HIGH = np.array([0.3, -0.25, 0.05]), np.array([0.6, 0.25, 0.3])
SUCCESS_DISTANCE = 0.03


class ReachTask:
    env_id = "sims/ArmReach-v0"
    xml = "reach.xml"
    duration = 2.5  # seconds: 50 steps at 20 Hz

    def initialize_episode(self, physics, rng: np.random.Generator) -> None:
        physics.set_goal(rng.uniform(GOAL_LOW, GOAL_HIGH))

    def get_observation(self, physics) -> dict[str, np.ndarray]:
        goal = physics.goal_pos()
        return {"goal_pos": goal, "grip_to_goal": goal - physics.grip_pos()}

    def evaluate(self, physics) -> tuple[float, bool]:
        """Dense reward and success."""
        distance = math.dist(physics.goal_pos(), physics.grip_pos())
        return 1.0 - math.tanh(10.0 * distance), distance < SUCCESS_DISTANCE
