"""TQ and SACo (agent inspect --quality) on data whose values are worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.quality import cells, quality, trajectory_quality
from agent.store import EpisodeAttrs, Store
from helpers import ACT_SPACE, OBS_SPACE, make_episode


def test_tq_and_saco_match_hand_computed_values():
    # (s, a) = (0, 0), (0.1, 0) | (1, 1), (0.9, 1); 2 intervals per dimension over [0, 1]:
    # cells (0, 0), (0, 0) | (1, 1) (1.0 falls in the last interval), (1, 1): 2 cells in all
    obs, action = np.array([[0.0], [0.1], [1.0], [0.9]]), np.array([[0.0], [0.0], [1.0], [1.0]])
    episode, returns = np.array([0, 0, 1, 1]), np.array([10.0, 30.0])
    groups = {"all": np.array([True, True]), "a": np.array([True, False]), "b": np.array([False, True])}
    out = quality(obs, action, episode, returns, groups, (0.0, 40.0), bins=2, components=0)
    g = out["groups"]
    assert out["reference_unique_pairs"] == 2
    assert (g["all"]["tq"], g["a"]["tq"], g["b"]["tq"]) == (0.5, 0.25, 0.75)
    assert (g["all"]["saco"], g["a"]["saco"], g["b"]["saco"]) == (1.0, 0.5, 0.5)
    # against a reference that also visits (0, 1): three cells, so each half covers a third
    reference = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert quality(obs, action, episode, returns, groups, (0.0, 40.0), reference, bins=2, components=0)["groups"]["a"]["saco"] == 1 / 3
    assert trajectory_quality(np.array([5.0]), None) is None
    np.testing.assert_array_equal(cells(np.array([[-5.0, 0.49, 0.5, 7.0]]), np.zeros(4), np.ones(4), 2), [[0, 0, 1, 1]])
    # standardizing (the only change with every dimension kept) moves no point to another cell here
    assert quality(obs * 3 + 1, action, episode, returns, groups, None, bins=2, components=0)["reference_unique_pairs"] == 2
    with pytest.raises(ValueError, match="--bins must be at least 1"):
        quality(obs, action, episode, returns, groups, None, bins=0)


def test_inspect_quality_reports_each_source_and_draws_the_plot(tmp_path, rng, capsys):
    from agent.cli import main

    store = Store.create(tmp_path / "s.zarr", env_id="sims/ArmReach-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    for i in range(4):
        ep = make_episode(rng, 6)
        if i < 2:  # two "scripted" episodes that sit still: one cell each time
            ep["obs"][:], ep["action"][:] = 0.0, 0.0
        store.append_episode(ep, EpisodeAttrs(source="scripted" if i < 2 else "random"))
    store.close()
    assert main(["inspect", str(tmp_path / "s.zarr"), "--quality", "--plot", str(tmp_path / "q.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["quality"]
    assert set(out["groups"]) == {"all", "source=scripted", "source=random"}
    assert out["groups"]["source=scripted"]["unique_pairs"] == 1 and out["groups"]["all"]["saco"] == 1.0
    assert out["groups"]["source=random"]["saco"] < 1.0 and (tmp_path / "q.png").stat().st_size > 0
    other = Store.create(tmp_path / "o.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    other.append_episode(make_episode(rng, 3))
    other.close()
    assert main(["inspect", str(tmp_path / "s.zarr"), "--quality", "--reference", str(tmp_path / "o.zarr")]) == 2
    assert "coverage is compared within one task" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "s.zarr"), "--plot", str(tmp_path / "q.png")]) == 2
    assert "add --quality" in capsys.readouterr().err


def test_the_projection_counts_coverage_where_a_full_grid_counts_transitions():
    """30 noisy dimensions around a 2-d motion: a grid over all 30 gives every row a cell of
    its own in a wide and a tight set alike (u = rows, SACo 0.5 each); on the reference's 2
    leading directions the tight set covers a fraction of the wide one's cells."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(2, 30)) * 2
    wide = rng.uniform(-1, 1, size=(400, 2)) @ mix + rng.normal(size=(400, 30)) * 0.5
    tight = rng.uniform(-0.2, 0.2, size=(400, 2)) @ mix + rng.normal(size=(400, 30)) * 0.5
    obs, action, episode = np.concatenate([wide, tight]), np.zeros((800, 1)), np.repeat([0, 1], 400)
    groups = {"wide": np.array([True, False]), "tight": np.array([False, True])}
    full = quality(obs, action, episode, np.zeros(2), groups, None, bins=8, components=0)["groups"]
    projected = quality(obs, action, episode, np.zeros(2), groups, None, bins=8, components=2)["groups"]
    assert full["wide"]["unique_pairs"] == full["tight"]["unique_pairs"] == 400
    assert projected["tight"]["saco"] < 0.5 * projected["wide"]["saco"]  # measured: 0.2 against 1.0
