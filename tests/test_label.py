"""Action-free episodes: flagged in the store, refused by training until labelled, and
labelled by an inverse dynamics model whose held-out error is measured and recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.label import LabelConfig, action_free_mask, label
from agent.store import EpisodeAttrs, Store, load_transitions


@pytest.fixture
def data(tmp_path):
    from agent.collect import CollectConfig, collect

    path = tmp_path / "reach.zarr"
    collect(CollectConfig(env="sims/ArmReach-v0", policy="scripted", epsilon=0.3, episodes=12, out=str(path)), progress=False)
    return path


def test_forgotten_actions_are_flagged_refused_by_training_and_labelled_back(data, tmp_path):
    from agent.pretrain import PretrainConfig, pretrain

    forgot = label(LabelConfig(data=str(data), out=str(tmp_path / "free.zarr"), forget=0.5, seed=1))
    free_store = Store.open(tmp_path / "free.zarr")
    free = action_free_mask(free_store)
    assert forgot["action_free"] == free.sum() == 6
    assert not load_transitions(free_store).action[np.repeat(free, free_store.episode_attrs()["length"])].any()
    with pytest.raises(ValueError, match="has 6 action-free episodes .* agent label --data"):
        pretrain(PretrainConfig(data=str(tmp_path / "free.zarr"), algo="bc", out=str(tmp_path / "bc"), steps=5, eval_episodes=0),
                 progress=False)

    out = label(LabelConfig(data=str(tmp_path / "free.zarr"), out=str(tmp_path / "lab.zarr"), holdout=0.34, steps=1500,
                            batch_size=128, hidden_dims=[64, 64]))
    assert (out["labelled_episodes"], out["labelled_from_episodes"], out["heldout_episodes"]) == (6, 4, 2)
    # the labeller beats guessing the mean action on episodes it never saw (8 episodes to learn from: 0.008 against 0.129)
    assert out["heldout_mse"] < 0.5 * out["heldout_mse_of_the_mean_action"]
    labelled, original = Store.open(tmp_path / "lab.zarr"), Store.open(data)
    assert not action_free_mask(labelled).any() and labelled.num_steps == original.num_steps
    a, b = load_transitions(labelled), load_transitions(original)
    np.testing.assert_array_equal(a.obs, b.obs)
    rows = np.repeat(free, original.episode_attrs()["length"])
    np.testing.assert_array_equal(a.action[~rows], b.action[~rows])  # recorded actions untouched
    attrs = labelled.episode_attrs()
    lineage = json.loads(attrs["lineage"][int(np.flatnonzero(free)[0])])["labelled"]
    assert lineage["heldout_mse"] == out["heldout_mse"] and labelled.attrs["labelled_from"]["steps"] == 1500
    pretrain(PretrainConfig(data=str(tmp_path / "lab.zarr"), algo="bc", out=str(tmp_path / "bc2"), steps=5, eval_episodes=0),
             progress=False)


def test_forgetting_again_keeps_what_was_already_action_free(data, tmp_path):
    label(LabelConfig(data=str(data), out=str(tmp_path / "a.zarr"), forget=0.25, seed=1))
    label(LabelConfig(data=str(tmp_path / "a.zarr"), out=str(tmp_path / "b.zarr"), forget=0.25, seed=2))
    first, second = action_free_mask(Store.open(tmp_path / "a.zarr")), action_free_mask(Store.open(tmp_path / "b.zarr"))
    assert np.all(second[first]) and second.sum() > first.sum()
    with pytest.raises(ValueError, match="action-free episodes"):  # corrupting placeholders would hide them
        from agent.corrupt import CorruptConfig, corrupt

        corrupt(CorruptConfig(data=str(tmp_path / "b.zarr"), out=str(tmp_path / "c.zarr")))


def test_nothing_to_label_or_nothing_to_learn_from_is_one_sentence(data, tmp_path):
    with pytest.raises(ValueError, match="has no action-free episodes"):
        label(LabelConfig(data=str(data), out=str(tmp_path / "x.zarr")))
    label(LabelConfig(data=str(data), out=str(tmp_path / "all.zarr"), forget=1.0))
    with pytest.raises(ValueError, match="has 0 episode\\(s\\) with actions"):
        label(LabelConfig(data=str(tmp_path / "all.zarr"), out=str(tmp_path / "y.zarr")))


def test_a_store_from_before_the_flag_cannot_take_action_free_episodes(tmp_path, rng):
    from helpers import ACT_SPACE, OBS_SPACE, make_episode

    store = Store.create(tmp_path / "s.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    store.append_episode(make_episode(rng, 3), EpisodeAttrs(action_free=True))
    assert action_free_mask(store).tolist() == [True]
