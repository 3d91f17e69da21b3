"""agent corrupt: each kind changes exactly the chosen transitions by the stated rule, the
rest is copied bit for bit, episodes are cut where s or s' alone is corrupted, and the
lineage says what was done."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.corrupt import CorruptConfig, corrupt
from agent.store import EpisodeAttrs, Store, load_transitions
from helpers import ACT_SPACE, OBS_SPACE, make_episode


@pytest.fixture
def source(tmp_path, rng):
    store = Store.create(tmp_path / "clean.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    for i in range(6):
        store.append_episode(make_episode(rng, 7, end="terminated" if i % 2 else "truncated"), EpisodeAttrs(quality="medium"))
    store.close()
    return tmp_path / "clean.zarr"


def transitions(path):
    c = load_transitions(Store.open(path))
    rows = np.arange(c.num_steps)
    return c, {"obs": c.obs, "action": c.action, "reward": c.reward, "next_obs": c.next_obs(rows)}


def hits(cfg, steps):
    return np.random.default_rng(cfg.seed).random(steps) < cfg.rate


@pytest.mark.parametrize("kind", ["obs", "action", "reward", "dynamics"])
def test_random_corruption_changes_only_the_chosen_transitions(source, tmp_path, kind):
    cfg = CorruptConfig(data=str(source), out=str(tmp_path / f"{kind}.zarr"), kind=kind, rate=0.3, scale=0.5, seed=3)
    result = corrupt(cfg)
    clean_cache, clean = transitions(source)
    dirty_cache, dirty = transitions(cfg.out)
    hit = hits(cfg, clean_cache.num_steps)
    assert result["corrupted"] == hit.sum() > 0 and dirty_cache.num_steps == clean_cache.num_steps
    changed = {"obs": "obs", "action": "action", "reward": "reward", "dynamics": "next_obs"}[kind]
    for key in clean:  # every other field, and the untouched transitions, bit for bit
        rows = ~hit if key == changed else np.ones_like(hit)
        np.testing.assert_array_equal(dirty[key][rows], clean[key][rows], err_msg=key)
    diff = dirty[changed][hit] - clean[changed][hit]
    if kind == "reward":
        assert np.all(np.abs(dirty["reward"][hit]) <= 0.5 * 30) and not np.allclose(diff, 0)
    else:
        std = (clean["obs"] if kind in ("obs", "dynamics") else clean["action"]).std(0)
        assert np.all(np.abs(diff) <= 0.5 * std + 1e-6) and np.abs(diff).max() > 0.1 * std.min()
    # cuts only where s or s' alone changed; each piece names its source episode and its corrupted steps
    store = Store.open(cfg.out)
    attrs = store.episode_attrs()
    expected = 6 if kind in ("action", "reward") else store.num_episodes
    assert store.num_episodes == expected and (kind in ("action", "reward") or store.num_episodes > 6)
    lineage = [json.loads(x)["corrupted"] for x in attrs["lineage"]]
    assert sum(len(x["steps"]) for x in lineage) == hit.sum()
    assert all(x["kind"] == kind and x["rate"] == 0.3 and x["seed"] == 3 for x in lineage)
    assert sorted({json.loads(p)[0] for p in attrs["parents"]}) == list(range(6))
    assert store.attrs["corrupted_from"]["transitions"] == hit.sum()
    # the original episode ends stay; only cuts are added (as time-limit truncations)
    assert dirty_cache.terminated.sum() == clean_cache.terminated.sum()


def test_adversarial_rewards_flip_and_scale_and_a_missing_attacker_is_one_sentence(source, tmp_path):
    cfg = CorruptConfig(data=str(source), out=str(tmp_path / "adv.zarr"), kind="reward", mode="adversarial", rate=0.5, scale=2.0)
    corrupt(cfg)
    (_, clean), (_, dirty) = transitions(source), transitions(cfg.out)
    hit = hits(cfg, len(clean["reward"]))
    np.testing.assert_allclose(dirty["reward"][hit], -2.0 * clean["reward"][hit], rtol=1e-6)
    with pytest.raises(ValueError, match="pass --attacker RUN"):
        corrupt(CorruptConfig(data=str(source), out=str(tmp_path / "x.zarr"), kind="obs", mode="adversarial"))


def test_adversarial_observations_lower_the_attackers_value_within_the_budget(source, tmp_path):
    import torch

    from agent.policy import load_policy
    from agent.pretrain import PretrainConfig, pretrain

    pretrain(PretrainConfig(data=str(source), algo="iql", out=str(tmp_path / "iql"), steps=50, batch_size=16, eval_episodes=0),
             progress=False)
    cfg = CorruptConfig(data=str(source), out=str(tmp_path / "adv.zarr"), kind="obs", mode="adversarial", rate=0.5,
                        scale=0.3, attacker=str(tmp_path / "iql"), attack_steps=30)
    corrupt(cfg)
    (_, clean), (_, dirty) = transitions(source), transitions(cfg.out)
    hit = hits(cfg, len(clean["obs"]))
    assert np.all(np.abs(dirty["obs"][hit] - clean["obs"][hit]) <= 0.3 * clean["obs"].std(0) + 1e-5)
    learner = load_policy(str(tmp_path / "iql"), "", 3, 2)
    with torch.no_grad():
        q = lambda o: learner.critic(learner.normalizer(torch.as_tensor(o)), torch.as_tensor(clean["action"][hit])).min(0).values  # noqa: E731
        assert q(dirty["obs"][hit]).mean() < q(clean["obs"][hit]).mean()
