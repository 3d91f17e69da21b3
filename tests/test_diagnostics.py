"""Q calibration measures what its name says: on a task whose value is known, a critic that
holds the true value is calibrated, whether episodes end by a time limit or terminate."""
from __future__ import annotations

from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest
import torch

from agent.finetune.diagnostics import bootstrapped_returns, evaluate_with_diagnostics, q_calibration

GAMMA, LIMIT = 0.9, 20


class ConstantReward(gymnasium.Env):
    """Reward 1 at every step, never terminates: Q(s, a) = 1 / (1 - gamma) everywhere."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), 1.0, False, False, {}


def learner_with_value(value):
    """A learner whose 3-member critic returns ``value(obs)`` for every member."""
    critic = lambda obs, action: value(obs).expand(3, -1)  # noqa: E731  [E, N]
    return SimpleNamespace(critic=critic, cfg=SimpleNamespace(gamma=GAMMA), normalizer=lambda obs: obs, device="cpu",
                           act=lambda obs, deterministic=True: np.zeros(1, np.float32))


def test_a_critic_holding_the_true_value_is_calibrated_on_a_time_limited_task():
    env = gymnasium.wrappers.TimeLimit(ConstantReward(), LIMIT)
    true_q = 1.0 / (1.0 - GAMMA)
    result = evaluate_with_diagnostics("test/constant-v0", learner_with_value(lambda obs: torch.full((len(obs),), true_q)),
                                       episodes=2, env=env)
    assert result["return_bootstrapped_visited"] == pytest.approx(true_q, abs=1e-9)
    assert result["q_calibration_gap_bootstrapped"] == pytest.approx(0.0, abs=1e-6)
    # the truncated return it replaces averages far below Q on the same states
    truncated = bootstrapped_returns(np.ones(LIMIT), GAMMA).mean()
    assert true_q - truncated > 3.0  # 10 against 6.05


def test_a_terminated_episode_has_no_tail_and_a_truncated_one_gets_the_critics_value():
    rewards = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(bootstrapped_returns(rewards, 0.5), [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])
    np.testing.assert_allclose(bootstrapped_returns(rewards, 0.5, tail_value=8.0), [2.75 + 0.125 * 8, 3.5 + 0.25 * 8, 3 + 0.5 * 8])
    # the tail is valued at the final observation: a critic worth 5 there and 0 elsewhere
    learner = learner_with_value(lambda obs: torch.where(obs[:, 0] > 0.5, 5.0, 0.0))
    episode = {"obs": np.zeros((3, 2), np.float32), "action": np.zeros((3, 1), np.float32), "reward": rewards,
               "final_obs": np.ones(2, np.float32)}
    cut = q_calibration(learner, [{**episode, "truncated": True}])
    ended = q_calibration(learner, [{**episode, "truncated": False}])
    assert cut["return_bootstrapped_visited"] == pytest.approx(np.mean(bootstrapped_returns(rewards, GAMMA, 5.0)))
    assert ended["return_bootstrapped_visited"] == pytest.approx(np.mean(bootstrapped_returns(rewards, GAMMA)))
    assert cut["q_visited"] == ended["q_visited"] == 0.0 and cut["ensemble_std_visited"] == 0.0
