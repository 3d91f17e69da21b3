import numpy as np

from agent.envs import make_env, normalized_score
from sims.experts import NoisyPolicy, RandomPolicy, make_expert


def run(env, policy, seed):
    obs, _ = env.reset(seed=seed)
    total, done, info = 0.0, False, {}
    while not done:
        obs, r, terminated, truncated, info = env.step(policy(obs))
        total += r
        done = terminated or truncated
    return total, info


def test_reacher_expert_reaches_and_holds_the_target():
    env = make_env("dmc/reacher-hard-v0")
    expert = make_expert("dmc/reacher-hard-v0", env)
    for seed in (0, 1):
        ret, info = run(env, expert, seed)
        assert ret > 900 and info["success"]  # about 960 on average (sims/reference_returns.json)


def test_reference_scores_place_expert_near_100_and_random_near_0():
    env = make_env("dmc/reacher-hard-v0")
    expert_ret, _ = run(env, make_expert("dmc/reacher-hard-v0", env), 5)
    random_ret, _ = run(env, RandomPolicy(2, seed=5), 5)
    assert normalized_score("dmc/reacher-hard-v0", expert_ret) > 90
    assert normalized_score("dmc/reacher-hard-v0", random_ret) < 10


def test_noise_mixing_lowers_the_return():
    env = make_env("dmc/reacher-hard-v0")
    expert = make_expert("dmc/reacher-hard-v0", env)
    clean, _ = run(env, expert, 2)
    noisy, _ = run(env, NoisyPolicy(expert, 2, epsilon=0.9, seed=0), 2)
    assert noisy < clean - 200


def test_noisy_policy_refuses_bad_settings():
    import pytest

    with pytest.raises(ValueError):
        NoisyPolicy(lambda o: np.zeros(2), 2, noise=-1.0)
    with pytest.raises(ValueError):
        NoisyPolicy(lambda o: np.zeros(2), 2, epsilon=1.5)
