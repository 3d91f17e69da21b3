"""Dynamics-gap variants: applied to the live model, refused when unknown or out of
range, and measured as zero for identical settings and growing away from 1."""
import numpy as np
import pytest

import sims
from sims.gaps import RANGES, dynamics_gap

SCALES = ["gravity_scale", "mass_scale", "friction_scale", "damping_scale", "actuator_gain_scale"]


@pytest.mark.parametrize("env_id", ["sims/ArmPush-v0", "dmc/cheetah-run-v0"])
def test_gap_is_zero_for_identical_settings(env_id):
    assert dynamics_gap(env_id, {}, states=15) == 0.0
    assert dynamics_gap(env_id, {"mass_scale": 1.3}, reference={"mass_scale": 1.3}, states=15) == 0.0


@pytest.mark.parametrize("name", SCALES)
def test_gap_grows_with_the_distance_of_each_scale_from_one(name):
    # friction acts where the expert slides the cube; the rest show under random motion
    near, far = (0.8, 0.5) if name in ("friction_scale", "actuator_gain_scale") else (1.5, 3.0)
    policy = "scripted" if name == "friction_scale" else "random"
    gaps = [dynamics_gap("sims/ArmPush-v0", {name: v}, states=25, policy=policy) for v in (near, far)]
    assert 0.0 < gaps[0] < gaps[1], gaps


@pytest.mark.parametrize("name", SCALES)
def test_dm_control_tasks_take_the_same_gaps(name):
    gaps = [dynamics_gap("dmc/cheetah-run-v0", {name: v}, states=15) for v in (0.7, 0.4)]
    assert 0.0 < gaps[0] < gaps[1], gaps


def test_gaps_change_the_live_model():
    nominal = sims.make("sims/ArmPush-v0").unwrapped.model
    heavy = sims.make("sims/ArmPush-v0", mass_scale=2.0, gravity_scale=0.5, actuator_gain_scale=1.5).unwrapped.model
    np.testing.assert_allclose(heavy.body_mass, 2.0 * nominal.body_mass)
    np.testing.assert_allclose(heavy.body_inertia, 2.0 * nominal.body_inertia)
    np.testing.assert_allclose(heavy.opt.gravity, 0.5 * nominal.opt.gravity)
    np.testing.assert_allclose(heavy.actuator_gainprm[:, 0], 1.5 * nominal.actuator_gainprm[:, 0])
    # a fresh env still loads the nominal model: nothing was written to the files
    np.testing.assert_allclose(sims.make("sims/ArmPush-v0").unwrapped.model.body_mass, nominal.body_mass)


def test_action_latency_delays_actions():
    env = sims.make("sims/ArmReach-v0", action_latency_steps=2)
    env.reset(seed=0)
    start = env.unwrapped.physics.joint_angles().copy()
    push = np.array([1.0, 0, 0, 0, 0, 0, 1.0])
    env.step(push)
    env.step(push)
    assert abs(env.unwrapped.physics.joint_angles()[0] - start[0]) < 1e-3, "the first two steps apply the neutral action"
    env.step(push)
    assert env.unwrapped.physics.joint_angles()[0] - start[0] > 0.05


@pytest.mark.parametrize("env_id", ["sims/ArmReach-v0", "dmc/reacher-easy-v0"])
@pytest.mark.parametrize("kwargs, message", [
    ({"gravty_scale": 1.0}, "unknown keyword argument"),
    ({"mass_scale": -1.0}, "mass_scale must be a number in"),
    ({"friction_scale": -0.5}, "friction_scale must be a number in"),
    ({"action_noise": -0.1}, "action_noise must be a number in"),
    ({"action_latency_steps": 1.5}, "action_latency_steps must be an integer"),
])
def test_bad_gap_arguments_are_refused_with_the_valid_ones(env_id, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        sims.make(env_id, **kwargs)
    if "unknown" in message:
        assert all(name in str(info.value) for name in RANGES)


def test_unknown_arm_id_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown env id 'sims/ArmPsh-v0'.*sims/ArmPush-v0"):
        sims.make("sims/ArmPsh-v0")


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory):
    from agent.collect import CollectConfig, collect

    from agent.store import Store
    from agent.store.cache import sim_state_transitions

    out = str(tmp_path_factory.mktemp("paired") / "reach.zarr")
    collect(CollectConfig(env="sims/ArmReach-v0", policy="scripted", epsilon=0.3, episodes=3, seed=1, out=out), progress=False)
    return sim_state_transitions(Store.open(out))


def test_paired_gap_is_zero_for_the_data_own_dynamics_and_grows_with_the_scale(reach_data):
    from sims.gaps import paired_gap

    same = paired_gap("sims/ArmReach-v0", {}, reach_data, transitions=60)
    assert same["gap"] < 1e-4 and same["transitions"] == 60
    gaps = [paired_gap("sims/ArmReach-v0", {"gravity_scale": g}, reach_data, transitions=60)["gap"] for g in (1.3, 2.0, 3.0)]
    assert 0.0 < gaps[0] < gaps[1] < gaps[2], gaps


def test_paired_gap_refuses_data_of_another_env_or_without_sim_state(reach_data, tmp_path):
    from agent.collect import CollectConfig, collect
    from agent.store import Store
    from agent.store.cache import sim_state_transitions
    from sims.gaps import paired_gap

    with pytest.raises(ValueError, match="collected in sims/ArmReach-v0, not sims/ArmPush-v0"):
        paired_gap("sims/ArmPush-v0", {}, reach_data)
    bare = str(tmp_path / "bare.zarr")
    collect(CollectConfig(env="sims/ArmReach-v0", policy="random", episodes=1, out=bare, save_sim_state=False), progress=False)
    with pytest.raises(ValueError, match="no sim_state"):
        paired_gap("sims/ArmReach-v0", {}, sim_state_transitions(Store.open(bare)))
