"""The arm tasks: the dm_control-style property tests run over every task, the env
contract, exact state restore, experts, kinematics."""
import gymnasium
import numpy as np
import pytest

import sims
from sims.arm import kinematics
from sims.experts import make_expert
from sims.registry import ARM_TASKS

TASKS = sorted(ARM_TASKS)


def random_rollout(env, seed: int, steps: int) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(steps):
        out.append(env.step(rng.uniform(-1, 1, 7))[0])
    return out


@pytest.mark.parametrize("env_id", TASKS)
def test_arm_env_follows_the_contract(env_id):
    env = sims.make(env_id)
    u = env.unwrapped
    assert isinstance(env.observation_space, gymnasium.spaces.Box) and env.observation_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert u.control_rate == pytest.approx(20.0) and u.defines_success
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    assert {"success", "sim_state"} <= set(info)
    assert all(v.dtype == np.float64 for v in info["sim_state"].values())
    assert sum(s.stop - s.start for s in u.obs_slices.values()) == obs.size
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.zeros(7))
        assert isinstance(reward, float) and 0.0 <= reward <= 1.0
        steps += 1
    assert truncated and not terminated and steps == u.time_limit


@pytest.mark.parametrize("env_id", TASKS)
def test_same_seed_gives_the_same_trajectory_and_initial_states_vary(env_id):
    env = sims.make(env_id)
    np.testing.assert_array_equal(np.stack(random_rollout(env, 7, 20)), np.stack(random_rollout(env, 7, 20)))
    firsts = np.stack([env.reset(seed=s)[0] for s in range(5)])
    assert len({f.tobytes() for f in firsts}) == 5, "different seeds must give different initial states"


@pytest.mark.parametrize("env_id", TASKS)
def test_no_observation_element_is_constant(env_id):
    env = sims.make(env_id)
    obs = np.stack([o for seed in range(3) for o in random_rollout(env, seed, 15)])
    constant = [name for name, sl in env.unwrapped.obs_slices.items() if np.any(np.ptp(obs[:, sl], axis=0) == 0)]
    assert not constant, f"constant observation elements in {constant}"


@pytest.mark.parametrize("env_id", TASKS)
def test_sim_state_restores_the_next_step_exactly(env_id):
    env = sims.make(env_id, action_latency_steps=2)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(12):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 7))
    saved = info["sim_state"]
    actions = rng.uniform(-1, 1, (8, 7))
    first = [env.step(a)[:2] for a in actions]
    env.reset(seed=99)
    env.step(rng.uniform(-1, 1, 7))
    env.unwrapped.set_sim_state(saved)
    second = [env.step(a)[:2] for a in actions]
    for (o1, r1), (o2, r2) in zip(first, second):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2


@pytest.mark.parametrize("env_id", TASKS)
def test_scripted_expert_succeeds(env_id):
    env = sims.make(env_id)
    expert = make_expert(env_id, env)
    obs, info = env.reset(seed=123)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(expert(obs))
        done = terminated or truncated
    assert info["success"]


def test_expert_actions_are_smooth():
    """Imitable experts: consecutive commands differ little on a free-space reach."""
    env = sims.make("sims/ArmReach-v0")
    expert = make_expert("sims/ArmReach-v0", env)
    obs, _ = env.reset(seed=4)
    actions = []
    for _ in range(30):
        actions.append(expert(obs))
        obs = env.step(actions[-1])[0]
    assert np.abs(np.diff(np.stack(actions)[:, :6], axis=0)).max() < 0.5


def test_sparse_reward_is_success():
    env = sims.make("sims/ArmReach-v0", reward="sparse")
    expert = make_expert("sims/ArmReach-v0", env)
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        obs, reward, _, _, info = env.step(expert(obs))
        assert reward == float(info["success"])
    assert reward == 1.0


def test_kinematics_matches_the_simulation():
    env = sims.make("sims/ArmReach-v0")
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 7))
    physics = env.unwrapped.physics
    pos, rot = kinematics.ArmKinematics().forward(physics.joint_angles())
    np.testing.assert_allclose(pos, physics.grip_pos(), atol=1e-9)
    np.testing.assert_allclose(rot, physics.grip_xmat(), atol=1e-9)
    home_pos, home_rot = kinematics.ArmKinematics().forward(kinematics.HOME)
    np.testing.assert_allclose(home_pos, [0.4, 0.0, 0.2], atol=1e-3)
    np.testing.assert_allclose(home_rot[:, 2], [0, 0, -1], atol=1e-3)


def test_zero_action_holds_the_arm_still():
    env = sims.make("sims/ArmReach-v0")
    env.reset(seed=0)
    start = env.unwrapped.physics.joint_angles().copy()
    for _ in range(20):
        env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    np.testing.assert_allclose(env.unwrapped.physics.joint_angles(), start, atol=2e-3)


def test_bad_arm_kwargs_are_refused():
    with pytest.raises(ValueError, match="reward must be 'dense' or 'sparse'"):
        sims.make("sims/ArmPush-v0", reward="shaped")
    with pytest.raises(ValueError, match="control_rate"):
        sims.make("sims/ArmPush-v0", control_rate=0)
    env = sims.make("sims/ArmPush-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expects actions of shape"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(7, np.nan))
