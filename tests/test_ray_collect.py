"""Collection on a real Ray cluster (started in this process): the same episodes as one
process, a killed actor changes nothing, and no hang when episodes stop coming."""
from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from agent.collect import CollectConfig, EpisodePolicies, collect, rollout_episode
from agent.store import Store, load_transitions

ray = pytest.importorskip("ray")

RECIPE = {"env": "sims/ArmReach-v0", "policy": "scripted", "epsilon": 0.3, "seed": 5}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_actors_collect_the_same_store_as_one_process(cluster, tmp_path):
    collect(CollectConfig(**RECIPE, episodes=5, out=str(tmp_path / "ray.zarr"), ray="local", actors=2), progress=False)
    collect(CollectConfig(**RECIPE, episodes=5, out=str(tmp_path / "one.zarr")), progress=False)
    on_ray, alone = Store.open(tmp_path / "ray.zarr"), Store.open(tmp_path / "one.zarr")
    a, b = load_transitions(on_ray), load_transitions(alone)
    for key in ("obs", "action", "reward"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in ("seed", "generator_hash", "source"):
        np.testing.assert_array_equal(on_ray.episode_attrs()[key], alone.episode_attrs()[key])
    # a second run on Ray continues the recipe's seeds, as a second local run does
    collect(CollectConfig(**RECIPE, episodes=2, out=str(tmp_path / "ray.zarr"), ray="local", actors=2), progress=False)
    assert list(Store.open(tmp_path / "ray.zarr").episode_attrs()["seed"]) == [5, 6, 7, 8, 9, 10, 11]


def test_a_killed_actor_is_restarted_and_its_episodes_rolled_out_again(cluster):
    from agent.distributed.collect import RayEpisodes
    from agent.envs import make_env

    cfg = CollectConfig(**RECIPE, episodes=6, out="unused", ray="local", actors=2)
    env = make_env(cfg.env)
    policies = EpisodePolicies(cfg, env)
    _, info = env.reset(seed=0)
    keys = sorted(info["sim_state"])
    episodes = RayEpisodes(cfg, keys)
    got = []
    for i, episode in episodes:
        got.append((i, episode))
        if i == 0:  # the actor of the odd episodes dies with two of them queued
            os.kill(ray.get(episodes.actors[1].pid.remote()), signal.SIGKILL)
    assert [i for i, _ in got] == list(range(6))
    for i, episode in got:
        expected = rollout_episode(env, policies.for_episode(i), cfg.seed + i, keys)
        np.testing.assert_array_equal(episode["obs"], expected["obs"])
        np.testing.assert_array_equal(episode["action"], expected["action"])


def test_episodes_that_stop_coming_end_in_an_error_not_a_hang(cluster):
    from agent.distributed.collect import RayEpisodes

    cfg = CollectConfig(**RECIPE, episodes=2, out="unused", ray="local", actors=1)
    with pytest.raises(ValueError, match="no episode from the Ray actors within 0 s"):
        list(RayEpisodes(cfg, [], episode_timeout=0.0))


def test_ray_missing_or_mixed_with_num_envs_is_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--ray and --num-envs 2 both choose who rolls out"):
        collect(CollectConfig(**RECIPE, episodes=1, out=str(tmp_path / "s.zarr"), ray="local", num_envs=2), progress=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'agent\[ray\]'"):
        collect(CollectConfig(**RECIPE, episodes=1, out=str(tmp_path / "t.zarr"), ray="local"), progress=False)
