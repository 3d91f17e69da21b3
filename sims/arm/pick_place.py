"""ArmPickPlace: grasp a 4 cm cube and bring it to a goal on or up to 18 cm above the table.

Dense reward ``0.25 (1 - tanh(10 d_grip)) + 0.75 (1 - tanh(10 d_goal))`` with d_grip the
grip-to-cube and d_goal the cube-to-goal distance (3-D); success (and the sparse
reward) when d_goal < 5 cm. Model: ``pick_place.xml``.
"""
from __future__ import annotations

import math

import numpy as np

from sims.arm.push import HALF_SIZE, object_observation, place_object_and_goal, shaped_reward

SUCCESS_DISTANCE = 0.05
GOAL_HEIGHT = (HALF_SIZE, HALF_SIZE + 0.18)


class PickPlaceTask:
    env_id = "sims/ArmPickPlace-v0"
    xml = "pick_place.xml"
    duration = 5.0  # seconds: 100 steps at 20 Hz

    def initialize_episode(self, physics, rng: np.random.Generator) -> None:
        place_object_and_goal(physics, rng, GOAL_HEIGHT)

    def get_observation(self, physics) -> dict[str, np.ndarray]:
        return object_observation(physics, goal_on_table=False)

    def evaluate(self, physics) -> tuple[float, bool]:
        """Dense reward and success."""
        obj = physics.object_pos()
        d_goal = math.dist(physics.goal_pos(), obj)
        return shaped_reward(math.dist(obj, physics.grip_pos()), d_goal), d_goal < SUCCESS_DISTANCE
