"""ArmPush: push a 4 cm cube across the table to a goal on the table.

Dense reward ``0.25 (1 - tanh(10 d_grip)) + 0.75 (1 - tanh(10 d_goal))`` with d_grip the
grip-to-cube distance and d_goal the cube-to-goal distance in the table plane; success
(and the sparse reward) when d_goal < 5 cm. Model: ``push.xml``.
"""
from __future__ import annotations

import math

import numpy as np

OBJECT_LOW, OBJECT_HIGH = np.array([0.35, -0.15]), np.array([0.55, 0.15])
GOAL_LOW, GOAL_HIGH = np.array([0.35, -0.2]), np.array([0.6, 0.2])
HALF_SIZE = 0.02
MIN_GOAL_DISTANCE = 0.1
SUCCESS_DISTANCE = 0.05


def place_object_and_goal(physics, rng: np.random.Generator, goal_z_range: tuple[float, float]) -> None:
    """Cube at a random place and yaw; goal at least MIN_GOAL_DISTANCE away in the plane."""
    xy = rng.uniform(OBJECT_LOW, OBJECT_HIGH)
    physics.set_object(np.array([xy[0], xy[1], HALF_SIZE]), rng.uniform(-np.pi / 4, np.pi / 4))
    while True:
        goal = rng.uniform(GOAL_LOW, GOAL_HIGH)
        if np.linalg.norm(goal - xy) >= MIN_GOAL_DISTANCE:
            break
    physics.set_goal(np.array([goal[0], goal[1], rng.uniform(*goal_z_range)]))


def shaped_reward(d_grip: float, d_goal: float) -> float:
    return 0.25 * (1.0 - math.tanh(10.0 * d_grip)) + 0.75 * (1.0 - math.tanh(10.0 * d_goal))


def object_observation(physics, goal_on_table: bool) -> dict[str, np.ndarray]:
    """The cube's pose, the goal, and the vectors between grip, cube and goal. A goal on
    the table is given by x and y alone (its height never changes)."""
    obj, goal = physics.object_pos(), physics.goal_pos()
    return {"object_pos": obj, "object_rot": physics.object_xmat()[:, :2].ravel(),
            "grip_to_object": obj - physics.grip_pos(), "goal_pos": goal[:2] if goal_on_table else goal,
            "object_to_goal": goal - obj}


class PushTask:
    env_id = "sims/ArmPush-v0"
    xml = "push.xml"
    duration = 5.0  # seconds: 100 steps at 20 Hz

    def initialize_episode(self, physics, rng: np.random.Generator) -> None:
        place_object_and_goal(physics, rng, (HALF_SIZE, HALF_SIZE))

    def get_observation(self, physics) -> dict[str, np.ndarray]:
        return object_observation(physics, goal_on_table=True)

    def evaluate(self, physics) -> tuple[float, bool]:
        """Dense reward and success."""
        obj = physics.object_pos()
        d_goal = math.dist(physics.goal_pos()[:2], obj[:2])
        return shaped_reward(math.dist(obj, physics.grip_pos()), d_goal), d_goal < SUCCESS_DISTANCE
