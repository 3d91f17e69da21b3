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


class ConstantRewardLimited(ConstantReward):
    """The constant-reward task with its own ``time_limit``, as the arm tasks have."""

    def __init__(self, time_limit: int = LIMIT):
        self.time_limit, self.steps = time_limit, 0

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return super().reset(seed=seed)

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, self.steps >= self.time_limit, info


def test_long_rollouts_measure_the_critics_error_that_the_bootstrapped_return_inherits(monkeypatch):
    monkeypatch.setattr("agent.finetune.diagnostics.make_env", lambda env_id, **kw: ConstantRewardLimited(**kw))
    true_q, horizon = 1.0 / (1.0 - GAMMA), 200
    right = evaluate_with_diagnostics("test/constant-v0", learner_with_value(lambda obs: torch.full((len(obs),), true_q)),
                                      episodes=2, calibration_horizon=horizon, calibration_episodes=2)
    assert right["calibration_tail_weight"] == pytest.approx(GAMMA ** (horizon - LIMIT))
    assert right["return_long_visited"] == pytest.approx(true_q, rel=1e-7)  # states 0..19, each with 180+ steps to go
    assert abs(right["q_calibration_gap_long"]) < 1e-6
    # a critic worth 4 everywhere: the bootstrapped return values the tail at 4 too and hides much of the error
    low = evaluate_with_diagnostics("test/constant-v0", learner_with_value(lambda obs: torch.full((len(obs),), 4.0)),
                                    episodes=2, calibration_horizon=horizon, calibration_episodes=2)
    assert low["q_calibration_gap_long"] == pytest.approx(4.0 - true_q, rel=1e-6)
    assert abs(low["q_calibration_gap_bootstrapped"]) < abs(low["q_calibration_gap_long"]) - 2.0
    with pytest.raises(ValueError, match="must exceed test/constant-v0's time limit of 20 steps"):
        evaluate_with_diagnostics("test/constant-v0", learner_with_value(lambda obs: torch.zeros(len(obs))), episodes=1,
                                  calibration_horizon=LIMIT)


def test_long_rollouts_are_refused_on_an_env_without_a_time_limit_argument():
    from types import SimpleNamespace as NS

    learner = NS(critic=lambda o, a: torch.zeros(1, len(o)), cfg=NS(gamma=0.99), normalizer=lambda o: o, device="cpu",
                 act=lambda obs, deterministic=True: np.zeros(1, np.float32))
    from agent.finetune.diagnostics import long_calibration

    with pytest.raises(ValueError, match="needs an env with a time_limit argument"):
        long_calibration("dmc/cartpole-swingup-v0", learner, {}, 400, 1, 0, limit=100)
