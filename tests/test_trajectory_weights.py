"""Trajectory-weighted sampling (--sampling return|advantage): the weights worked out by
hand, and the sampler drawing transitions with those probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from agent.pretrain import BatchSource
from agent.store import EpisodeAttrs, Store, load_transitions
from agent.trajectory_weights import cache_probabilities, episode_scores, transition_probabilities
from helpers import ACT_SPACE, OBS_SPACE, make_episode


def test_return_weights_match_a_hand_computation():
    # returns 0, 1, 2 -> scores 0, 0.5, 1; at temperature 0.5 weights e^0, e^1, e^2 (up to a common factor);
    # episode 0 has two transitions, each drawn with its episode's weight
    probs = transition_probabilities("return", np.array([0.0, 1.0, 2.0]), np.zeros((3, 1)), np.array([2, 1, 1]), 0.5)
    w = np.array([1.0, 1.0, np.e, np.e**2])
    np.testing.assert_allclose(probs, w / w.sum())
    assert transition_probabilities("uniform", np.zeros(3), np.zeros((3, 1)), np.ones(3, int)) is None
    alike = transition_probabilities("return", np.full(4, 7.0), np.zeros((4, 1)), np.ones(4, int))
    np.testing.assert_allclose(alike, 0.25)  # no spread in returns: uniform
    with pytest.raises(ValueError, match="--sampling-temperature must be positive"):
        transition_probabilities("return", np.zeros(2), np.zeros((2, 1)), np.ones(2, int), 0.0)


def test_advantage_scores_are_the_residuals_of_a_ridge_fit_on_the_first_state():
    # G = [0, 2, 2, 6] over s0 = 0..3: s0 standardized x = (s0 - 1.5) / sqrt(1.25), G centred y = G - 2.5;
    # ridge slope (x.y) / (x.x + 1) = 8.05 / 5 = 1.61; residuals y - 1.61 x = -0.34, 0.22, -1.22, 1.34,
    # scaled by their range 2.56 from the lowest: 0.344, 0.5625, 0, 1
    z = episode_scores("advantage", np.array([0.0, 2.0, 2.0, 6.0]), np.arange(4.0)[:, None])
    np.testing.assert_allclose(z, [0.34375, 0.5625, 0.0, 1.0], atol=1e-4)
    # as many episodes as state dimensions: least squares would fit every return exactly and leave rounding
    # noise to weight by; the ridge leaves the returns' own spread
    rng = np.random.default_rng(0)
    returns = rng.normal(100, 10, 36)
    z = episode_scores("advantage", returns, rng.normal(size=(36, 35)))
    assert np.corrcoef(z, returns)[0, 1] > 0.5
    with pytest.raises(ValueError, match="uniform, return or advantage"):
        episode_scores("best", np.zeros(2), np.zeros((2, 1)))


def test_the_sampler_draws_transitions_with_those_probabilities(tmp_path, rng):
    store = Store.create(tmp_path / "s.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    step = 0
    for length, ret in ((3, 0.0), (2, 1.0), (4, 3.0)):
        ep = make_episode(rng, length)
        ep["obs"][:, 0] = np.arange(step, step + length)  # each transition names itself
        ep["reward"][:] = ret / length
        store.append_episode(ep, EpisodeAttrs())
        step += length
    cache = load_transitions(store)
    probs = cache_probabilities(cache, "return", 0.5)
    w = np.repeat(np.exp((np.array([0.0, 1 / 3, 1.0]) - 1.0) / 0.5), [3, 2, 4])  # returns 0, 1, 3 -> scores 0, 1/3, 1
    np.testing.assert_allclose(probs, w / w.sum())
    for on_device in (False, True):  # the host path and the device path (here on the CPU)
        source = BatchSource(cache, {}, "cpu", np.random.default_rng(0), on_device=on_device, probs=probs)
        drawn = np.concatenate([source.sample(4096)["obs"][:, 0].numpy().astype(int) for _ in range(10)])
        np.testing.assert_allclose(np.bincount(drawn, minlength=9) / drawn.size, probs, atol=0.01)
    # fine-tuning's offline share, over the training episodes only (the last one held out)
    from agent.finetune.data import BatchSource as MixedSource, OnlineBuffer

    train = np.arange(5)
    part = cache_probabilities(cache, "return", 0.5, steps=5)
    mixed = MixedSource(OnlineBuffer(3, 2), cache, train, 1.0, np.random.default_rng(1), offline_probs=part)
    drawn = mixed.sample(1, 40960)["obs"][:, 0].astype(int)
    np.testing.assert_allclose(np.bincount(drawn, minlength=5) / drawn.size, part, atol=0.01)
    with pytest.raises(ValueError, match="covers whole episodes"):
        cache_probabilities(cache, "return", 0.5, steps=4)


def test_pretraining_with_return_weighted_sampling_runs_and_records_it(tmp_path):
    from agent.collect import CollectConfig, collect
    from agent.pretrain import PretrainConfig, pretrain

    collect(CollectConfig(env="sims/ArmReach-v0", policy="random", episodes=3, out=str(tmp_path / "d.zarr")), progress=False)
    out = pretrain(PretrainConfig(data=str(tmp_path / "d.zarr"), algo="bc", out=str(tmp_path / "run"), steps=20, batch_size=16,
                                  eval_episodes=0, sampling="return"), progress=False)
    assert out["steps"] == 20 and "sampling: return" in (tmp_path / "run" / "config.yaml").read_text()
