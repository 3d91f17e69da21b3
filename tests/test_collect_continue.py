"""Running a collect recipe again into its store continues the recipe's seeds (new
episodes, never copies), and an interrupted collect says what it kept and how to go on."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.collect import CollectConfig, EpisodePolicies, collect, config_hash, rollout_episode
from agent.envs import make_env
from agent.store import EpisodeAttrs, Store

ENV = "sims/ArmReach-v0"  # 50-step episodes
ROOT = Path(__file__).resolve().parents[1]


def recipe(out, **overrides) -> CollectConfig:
    return CollectConfig(**{"env": ENV, "policy": "scripted", "epsilon": 0.3, "episodes": 2, "seed": 7,
                            "quality": "medium", "save_sim_state": False, "out": str(out), **overrides})


def test_a_second_run_of_a_recipe_continues_its_seeds_with_new_episodes(tmp_path):
    out = tmp_path / "store"
    first = collect(recipe(out), progress=False)
    second = collect(recipe(out), progress=False)
    third = collect(recipe(out, episodes=3, num_envs=2), progress=False)  # count and workers do not make another recipe
    other = collect(recipe(out, policy="random", episodes=1), progress=False)  # another recipe keeps its own seeds
    store = Store.open(out)
    assert [int(s) for s in store.episode_attrs()["seed"]] == [7, 8, 9, 10, 11, 12, 13, 7]
    starts = [tuple(store.episode(i)["obs"][0]) for i in range(7)]
    assert len(set(starts)) == 7  # seven different episodes of the recipe, no copy among them
    assert [(r["kept"], r["first_seed"]) for r in (first, second, third, other)] == [(2, 7), (2, 9), (3, 11), (1, 7)]


def test_episodes_written_before_recipes_were_hashed_apart_are_continued(tmp_path):
    cfg = recipe(tmp_path / "store")
    env = make_env(ENV)
    policies = EpisodePolicies(cfg, env)
    store = Store.create(cfg.out, env_id=ENV, observation_space=env.observation_space, action_space=env.action_space)
    for i in range(2):  # as the collect of before wrote them: the whole config's hash
        store.append_episode(rollout_episode(env, policies.for_episode(i), cfg.seed + i, []),
                             EpisodeAttrs(source="scripted", generator_hash=config_hash(cfg), quality="medium", seed=cfg.seed + i))
    store.close()
    env.close()
    result = collect(cfg, progress=False)
    assert [int(s) for s in Store.open(cfg.out).episode_attrs()["seed"]] == [7, 8, 9, 10]
    assert result["first_seed"] == 9


def _episodes(path: Path) -> int:
    try:
        return Store.open(path).num_episodes
    except (ValueError, FileNotFoundError):  # not created yet
        return 0


@pytest.mark.parametrize("num_envs", [1, 2])
def test_an_interrupted_collect_says_what_it_kept_and_how_to_continue(tmp_path, num_envs):
    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "collect", "--env", ENV, "--policy", "scripted",
                             "--epsilon", "0.3", "--episodes", "1000", "--seed", "7", "--quality", "medium",
                             "--no-save-sim-state", "--num-envs", str(num_envs), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    end = time.monotonic() + 90
    while _episodes(out) < 2:
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    kept = Store.open(out).num_episodes
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == [f"agent collect: interrupted; kept {kept} of 1000 episodes in {out} (seeds 7..{6 + kept}); to continue, "
                     f"run the same command with --episodes {1000 - kept}: its seeds start at {7 + kept}.",
                     "agent collect: interrupted"], stderr
    result = collect(recipe(out, episodes=2), progress=False)
    assert result["first_seed"] == 7 + kept and result["kept"] == 2
    assert [int(s) for s in Store.open(out).episode_attrs()["seed"]] == list(range(7, 9 + kept))
    np.testing.assert_array_equal(Store.open(out).read("meta/episode_ends")[-1], 50 * (kept + 2))


def test_a_continued_mixture_goes_on_where_the_recipe_left_it(tmp_path):
    """Two runs of one episode each make the episodes one run of two makes: epsilon 1 (all
    random), then epsilon 0 (the expert)."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    collect(recipe(once, epsilon=0.0, mix_epsilons=[1.0, 0.0]), progress=False)
    for _ in range(2):
        collect(recipe(twice, epsilon=0.0, mix_epsilons=[1.0, 0.0], episodes=1), progress=False)
    a, b = Store.open(once), Store.open(twice)
    assert b.num_episodes == 2
    for i in range(2):
        np.testing.assert_array_equal(a.episode(i)["action"], b.episode(i)["action"])


def test_a_continued_schedule_is_said_to_start_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "store"
    cfg = recipe(out, noise=0.2, noise_end=0.0, schedule="linear")
    assert "schedule_note" not in collect(cfg, progress=False)  # the recipe's first run: nothing to continue
    assert collect(cfg, progress=False)["schedule_note"] == (
        "the linear noise schedule ran over this run's 2 episodes from its first value; it does not continue the "
        "schedule of the recipe's episodes before seed 9")
    assert "schedule_note" not in collect(recipe(out), progress=False)  # a constant recipe continues exactly

    import agent.collect as collect_module

    rollout, calls = collect_module.rollout_episode, []

    def interrupt_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rollout(*args)
    monkeypatch.setattr(collect_module, "rollout_episode", interrupt_the_second)
    with pytest.raises(KeyboardInterrupt):
        collect(replace(cfg, episodes=5), progress=False)
    assert capsys.readouterr().err.strip() == (
        f"agent collect: interrupted; kept 1 of 5 episodes in {out} (seeds 11..11); to continue, run the same command "
        f"with --episodes 4: its seeds start at 12 (its linear noise schedule starts over from its first value, over "
        f"those episodes).")


@pytest.mark.parametrize("handler", ["ignored", "callers"])
def test_a_sigint_handler_other_than_pythons_default_is_left_in_place(tmp_path, monkeypatch, handler):
    import agent.collect as collect_module

    def callers_handler(signum, frame):
        pass

    rollout, during = collect_module.rollout_episode, []

    def record(*args):
        during.append(signal.getsignal(signal.SIGINT))
        return rollout(*args)
    monkeypatch.setattr(collect_module, "rollout_episode", record)
    mine = signal.SIG_IGN if handler == "ignored" else callers_handler
    previous = signal.signal(signal.SIGINT, mine)
    try:
        collect(recipe(tmp_path / "store"), progress=False)
        assert during and all(h is mine for h in during) and signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
    collect(recipe(tmp_path / "store"), progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own is put back
