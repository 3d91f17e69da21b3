import gymnasium
import numpy as np
import pytest

import sims
from agent.envs import make_env

CHECKED = ["dmc/cartpole-swingup-v0", "dmc/reacher-hard-v0", "dmc/cheetah-run-v0", "dmc/walker-walk-v0"]


@pytest.mark.parametrize("env_id", CHECKED)
def test_dmc_env_follows_the_contract(env_id):
    env = make_env(env_id)
    assert isinstance(env.observation_space, gymnasium.spaces.Box) and env.observation_space.dtype == np.float32
    assert len(env.observation_space.shape) == 1
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    assert {"success", "sim_state"} <= set(info)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        assert obs.dtype == np.float32 and isinstance(reward, float)
        assert not terminated and not truncated
    env.close()


@pytest.mark.parametrize("env_id", CHECKED)
def test_same_seed_gives_the_same_trajectory(env_id):
    def trajectory(seed):
        env = make_env(env_id)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        out = [obs]
        for _ in range(30):
            out.append(env.step(rng.uniform(-1, 1, env.action_space.shape))[0])
        return np.stack(out)

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7)[0], trajectory(8)[0]), "different seeds must give different initial states"


@pytest.mark.parametrize("env_id", CHECKED)
def test_sim_state_restores_physics_exactly(env_id):
    env = make_env(env_id)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
    saved = info["sim_state"]
    actions = rng.uniform(-1, 1, (10,) + env.action_space.shape)
    first = [env.step(a)[:2] for a in actions]
    # a different episode in between, so nothing of the old one survives in the env
    env.reset(seed=99)
    env.step(rng.uniform(-1, 1, env.action_space.shape))
    env.unwrapped.set_sim_state(saved)
    second = [env.step(a)[:2] for a in actions]
    for (o1, r1), (o2, r2) in zip(first, second):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


def test_time_limit_truncates_not_terminates():
    env = make_env("dmc/reacher-hard-v0")
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        steps += 1
    assert steps == 1000 and truncated and not terminated


def test_unknown_env_id_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        make_env("dmc/reacher-hardest-v0")
    msg = str(info.value)
    assert "unknown env id 'dmc/reacher-hardest-v0'" in msg
    assert "dmc/reacher-hard-v0" in msg and "dmc/walker-walk-v0" in msg


def test_every_suite_task_is_registered():
    from dm_control import suite

    ids = sims.known_env_ids()
    for domain, task in suite.ALL_TASKS:
        assert f"dmc/{domain}-{task}-v0" in ids


def test_bad_actions_are_refused():
    env = make_env("dmc/reacher-hard-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 0.0]))


@pytest.mark.parametrize("env_id,field", [("dmc/point_mass-hard-v0", "wrap_prm"), ("dmc/quadruped-escape-v0", "hfield_data")])
def test_sim_state_restores_what_the_task_draws_outside_its_model_rows(env_id, field):
    # point_mass-hard draws its actuator gains, quadruped-escape its terrain: the task seed redraws them
    env = make_env(env_id)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    _, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
    saved, drawn = info["sim_state"], getattr(env.unwrapped.physics.model, field).copy()
    actions = rng.uniform(-1, 1, (5,) + env.action_space.shape)
    first = [env.step(a)[0] for a in actions]
    other = make_env(env_id)
    other.reset(seed=2)
    assert not np.array_equal(getattr(other.unwrapped.physics.model, field), drawn)
    other.unwrapped.set_sim_state(saved)
    np.testing.assert_array_equal(getattr(other.unwrapped.physics.model, field), drawn)
    for a, want in zip(actions, first):
        np.testing.assert_array_equal(other.step(a)[0], want)


def test_sim_state_saved_without_a_task_seed_still_restores_the_task_rows():
    # states in stores written before the task seed was kept: the target rows alone place the reacher's target
    env = make_env("dmc/reacher-hard-v0")
    env.reset(seed=1)
    _, _, _, _, info = env.step(np.zeros(2))
    saved = {k: v for k, v in info["sim_state"].items() if k != "task_seed"}
    want = env.step(np.full(2, 0.5))[0]
    env.reset(seed=2)
    env.unwrapped.set_sim_state(saved)
    np.testing.assert_array_equal(env.step(np.full(2, 0.5))[0], want)
