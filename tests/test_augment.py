"""Guided data augmentation: exact augmentations replay in the simulator, the validity
filter separates true from corrupted transitions, guides accept progress only, and
``agent augment`` writes lineage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.augment import (AUGMENTATIONS, AugmentConfig, Augmenter, DynamicsEnsembleFilter, PlanarMap, Segment,
                           SimReplayFilter, apply_map, capped_mixture, cut_segments, geometry_for, register_augmentation,
                           register_guide)
from agent.augment.filters import CORRUPTIONS, corrupt
from agent.collect import rollout_episode
from agent.envs import make_env
from sims.experts import make_expert

ENVS = ["sims/ArmReach-v0", "sims/ArmPush-v0", "sims/ArmPickPlace-v0", "dmc/reacher-easy-v0"]


@pytest.fixture(scope="module")
def expert_data():
    """Per env: (env, two expert episodes cut into 10-step segments)."""
    out = {}
    for env_id in ENVS:
        env = make_env(env_id)
        _, info = env.reset(seed=0)
        keys = sorted(info["sim_state"])
        episodes = [rollout_episode(env, make_expert(env_id, env), seed, keys) for seed in (1, 2)]
        out[env_id] = (env, episodes, [s for i, e in enumerate(episodes) for s in cut_segments(e, i, 10)])
    return out


def _replay(env_id: str):
    return SimReplayFilter(make_env(env_id))


@pytest.mark.parametrize("env_id", ENVS)
def test_rewards_are_recomputed_by_the_task_functions(expert_data, env_id):
    env, episodes, _ = expert_data[env_id]
    seg = cut_segments(episodes[0], 0, 0)[0]
    reward, success = geometry_for(env).rewards(seg.next_obs)
    np.testing.assert_allclose(reward, seg.reward, atol=1e-5)
    assert bool(success[-1]) == bool(episodes[0]["success"])


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("name", ["rotate", "translate_goal", "relabel_goal", "translate_object"])
def test_exact_augmentations_keep_dynamics_valid(expert_data, env_id, name):
    env, episodes, segments = expert_data[env_id]
    if name == "translate_object":  # the cube rests untouched only until the expert's grip arrives
        segments = [s for i, e in enumerate(episodes) for s in cut_segments(e, i, 4)]
    aug = Augmenter(AugmentConfig(augment=[name], guide="none", translate_range=0.05), env, segments, {})
    replay = _replay(env_id)
    rng = np.random.default_rng(0)
    applied = 0
    for seg in segments[::2]:
        out, reason, _ = aug.process(seg, rng)
        if out is None:
            assert reason.startswith(f"{name}:")
            continue
        applied += 1
        errors = replay.transition_errors(out)
        assert errors.max() <= 1.0, f"{name} on {env_id} (segment at step {seg.start}) breaks the dynamics: {errors.max():.3g}"
    if name != "translate_object" or env_id in ("sims/ArmPush-v0", "sims/ArmPickPlace-v0"):
        assert applied > 0


@pytest.mark.parametrize("env_id", ["sims/ArmReach-v0", "dmc/reacher-easy-v0", "sims/ArmPickPlace-v0"])
def test_reflect_is_valid_where_it_applies(expert_data, env_id):
    env, episodes, _ = expert_data[env_id]
    segments = [s for i, e in enumerate(episodes) for s in cut_segments(e, i, 5)]
    geom = geometry_for(env)
    replay = _replay(env_id)
    applied = 0
    for seg in segments:
        out, reason = apply_map(geom, seg, PlanarMap(reflect=True), "reflect", {})
        if out is None:
            assert reason == "gripper_active"  # the one-finger gripper drive is not mirror-symmetric
            continue
        applied += 1
        assert replay.transition_errors(out).max() <= 1.0
    assert applied > 0


def test_refused_maps_give_reasons(expert_data):
    env, _, segments = expert_data["sims/ArmPush-v0"]
    geom = geometry_for(env)
    assert apply_map(geom, segments[0], PlanarMap(angle=3.0), "rotate", {}) == (None, "pan_limit")
    assert apply_map(geom, segments[0], PlanarMap(object_shift=np.array([2.0, 0.0])), "t", {})[1] == "off_table"
    assert apply_map(geom, segments[1], PlanarMap(reflect=True), "reflect", {})[1] == "gripper_active"


@pytest.mark.parametrize("env_id", ["sims/ArmReach-v0", "sims/ArmPush-v0"])
def test_validity_filter_accepts_true_and_rejects_corrupted_transitions(expert_data, env_id):
    """The augmentation bench's bar: >= 99% of true transitions accepted, >= 99% of corrupted rejected."""
    env, _, segments = expert_data[env_id]
    replay = _replay(env_id)
    rng = np.random.default_rng(1)
    true_errors = np.concatenate([replay.transition_errors(s) for s in segments])
    assert np.mean(true_errors <= 1.0) >= 0.99
    for kind in CORRUPTIONS:
        bad = np.concatenate([replay.transition_errors(corrupt(s, kind, rng, segments[(i + len(segments) // 2) % len(segments)]))
                              for i, s in enumerate(segments)])  # the other half: the other episode
        assert np.mean(bad > 1.0) >= 0.99, f"{kind}: only {np.mean(bad > 1.0):.1%} rejected"


def test_random_baselines_make_no_validity_claim_and_fail_replay(expert_data):
    env, _, segments = expert_data["sims/ArmReach-v0"]
    assert not AUGMENTATIONS["gaussian_noise"].exact and not AUGMENTATIONS["amplitude_scale"].exact
    aug = Augmenter(AugmentConfig(augment=["gaussian_noise"], guide="none", filter=["sim_replay"]), env, segments, {})
    rng = np.random.default_rng(0)
    reasons = [aug.process(s, rng)[1] for s in segments]
    assert all(r == "filter:sim_replay" for r in reasons)


def test_learned_filter_scores_corruption_above_real_data(expert_data):
    _, _, segments = expert_data["sims/ArmReach-v0"]
    obs, action, next_obs = (np.concatenate(x) for x in zip(*[(s.obs, s.action, s.next_obs) for s in segments]))
    learned = DynamicsEnsembleFilter(steps=300).fit(obs, action, next_obs)
    rng = np.random.default_rng(0)
    true_ok = np.mean(learned.scores(obs, action, next_obs) <= learned.threshold)
    noisy = corrupt(segments[0], "obs_noise", rng)
    noisy = noisy.with_arrays(next_obs=segments[0].next_obs + rng.normal(0, 0.05, noisy.next_obs.shape))
    assert true_ok >= 0.95
    assert np.mean(learned.scores(noisy.obs, noisy.action, noisy.next_obs) > learned.threshold) >= 0.9


# -- guides ----------------------------------------------------------------------------------------
def _reversed(seg: Segment) -> Segment:
    """The same states walked backwards: the grip moves away from the goal."""
    return seg.with_arrays(obs=seg.next_obs[::-1].copy(), next_obs=seg.obs[::-1].copy())


def test_reach_guide_accepts_progress_and_rejects_retreat(expert_data):
    from agent.augment import GUIDES

    env, episodes, _ = expert_data["sims/ArmReach-v0"]
    aug = Augmenter(AugmentConfig(augment=["rotate"], guide="reach"), env, [], {})
    first = cut_segments(episodes[0], 0, 10)[0]  # the expert's approach
    assert GUIDES["reach"](first, aug.ctx)[0]
    assert GUIDES["reach"](_reversed(first), aug.ctx) == (False, "no_progress")
    # the goal moved behind the arm's motion: the segment no longer heads for it
    geom = aug.ctx.geometry
    motion = first.next_obs[-1, geom.slices["grip_pos"]] - first.obs[0, geom.slices["grip_pos"]]
    behind, _ = apply_map(geom, first, PlanarMap(goal_shift=-1.5 * motion), "translate_goal", {})
    assert not GUIDES["reach"](behind, aug.ctx)[0]
    far, _ = apply_map(geom, first, PlanarMap(angle=1.2), "rotate", {})
    assert GUIDES["reach"](far, aug.ctx) == (False, "outside_region")


def test_push_and_reacher_guides(expert_data):
    from agent.augment import GUIDES

    for env_id, name in (("sims/ArmPush-v0", "push"), ("dmc/reacher-easy-v0", "reacher")):
        env, episodes, _ = expert_data[env_id]
        aug = Augmenter(AugmentConfig(augment=["rotate"], guide=name), env, [], {})
        first = cut_segments(episodes[0], 0, 10)[0]
        assert GUIDES[name](first, aug.ctx)[0], env_id
        assert not GUIDES[name](_reversed(first), aug.ctx)[0], env_id
        assert GUIDES["auto"](first, aug.ctx)[0]


def test_user_registered_augmentation_and_guide_run_in_the_pipeline(expert_data):
    env, _, segments = expert_data["sims/ArmReach-v0"]

    @register_augmentation("test_halve_actions", exact=False)
    def halve(seg, ctx, rng):
        return seg.with_arrays(action=seg.action * 0.5, steps=[*seg.steps, {"name": "test_halve_actions", "params": {}}]), ""

    @register_guide("test_first_half_only")
    def first_half(seg, ctx):
        return seg.start < 25, "late"

    aug = Augmenter(AugmentConfig(augment=["test_halve_actions"], guide="test_first_half_only"), env, segments, {})
    rng = np.random.default_rng(0)
    results = [aug.process(s, rng) for s in segments]
    assert {r[1] for r in results} == {"", "guide:late"}
    kept = [r[0] for r in results if r[0] is not None]
    assert kept and np.allclose(kept[0].action * 2, segments[0].action) and kept[0].steps[-1]["name"] == "test_halve_actions"
    with pytest.raises(ValueError, match="already registered"):
        register_guide("test_first_half_only")(first_half)


# -- the command, lineage, capped sampling ------------------------------------------------------------
def test_agent_augment_writes_lineage_and_counts(tmp_path, capsys):
    from agent.cli import main
    from agent.store import Sampler, Store, load_transitions

    src, out = tmp_path / "reach", tmp_path / "reach_aug"
    assert main(["collect", "--env", "sims/ArmReach-v0", "--episodes", "2", "--out", str(src)]) == 0
    capsys.readouterr()
    code = main(["augment", "--data", str(src), "--out", str(out), "--augment", "rotate,reflect,translate_goal",
                 "--guide", "reach", "--filter", "sim_replay,dynamics_ensemble", "--ensemble-steps", "50",
                 "--n", "30", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["attempted"] == 30 and result["accepted"] + result["rejected"] == 30
    assert sum(result["rejected_by_reason"].values()) == result["rejected"] and result["accepted"] > 0
    store = Store.open(out)
    attrs = store.episode_attrs()
    augmented = np.flatnonzero(attrs["source"] == "augmented")
    assert len(augmented) == result["accepted"] and store.num_episodes == 2 + result["accepted"]
    lineage = json.loads(str(attrs["lineage"][augmented[0]]))
    assert lineage["guide"] == "reach" and lineage["augmentations"][0]["name"] in ("rotate", "reflect", "translate_goal")
    assert set(lineage["filter_scores"]) == {"sim_replay", "dynamics_ensemble"}
    assert json.loads(str(attrs["parents"][augmented[0]])) == [lineage["parent"]]
    assert str(attrs["lineage"][0]) == ""  # the copied source episodes
    # a cap on the share of augmented data in every batch
    sampler = Sampler(load_transitions(store), mixture=capped_mixture(0.25))
    idx = sampler.transition_indices(400)
    ends = store.episode_ends()
    share = np.isin(np.searchsorted(ends, idx, side="right"), augmented).mean()
    assert share == pytest.approx(0.25)
    store.close()
    # readable errors for users
    assert main(["augment", "--data", str(src), "--out", str(tmp_path / "x"), "--augment", "spin"]) == 2
    assert "unknown augmentation" in capsys.readouterr().err


def test_bench_batches_keep_each_transition_whole():
    """bench/augment.py's learning batches take obs, action, reward and next_obs of one
    transition together (drawn per key, they paired states with other states' actions and
    every learner learned the mean action), and cap the augmented share."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_augment", Path(__file__).resolve().parents[1] / "bench" / "augment.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def table(n: int, first: int) -> dict[str, np.ndarray]:
        ids = np.arange(first, first + n, dtype=np.float32)
        return {"obs": np.stack([ids, -ids], 1), "action": 2 * ids[:, None], "reward": 3 * ids, "next_obs": np.stack([ids + 0.5, -ids], 1),
                "terminated": ids % 7 == 0, "truncated": np.zeros(n, bool)}

    raw, augmented = table(50, 0), table(400, 1000)
    rng = np.random.default_rng(0)
    for data in ((raw, None), (raw, augmented)):
        batch = {k: v.numpy() for k, v in bench.sample(data, 256, rng).items()}
        ids = batch["obs"][:, 0]
        np.testing.assert_array_equal(batch["obs"][:, 1], -ids)
        np.testing.assert_array_equal(batch["action"][:, 0], 2 * ids)
        np.testing.assert_array_equal(batch["reward"], 3 * ids)
        np.testing.assert_array_equal(batch["next_obs"][:, 0], ids + 0.5)
        np.testing.assert_array_equal(batch["terminated"], ids % 7 == 0)
    assert np.mean(ids >= 1000) == bench.AUGMENTED_SHARE
