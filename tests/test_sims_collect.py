"""Collection of the standard datasets: parallel workers, noise schedules, recipes, video."""
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.collect import CollectConfig, collect, episode_noise
from agent.config import from_dict, load_yaml
from agent.store import Store

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("datasets").glob("*.yaml"))


def test_parallel_collection_writes_the_same_dataset_as_one_process(tmp_path):
    base = dict(env="sims/ArmReach-v0", episodes=3, epsilon=0.5, seed=5, quality="medium")
    one = collect(CollectConfig(**base, out=str(tmp_path / "one")), progress=False)
    two = collect(CollectConfig(**base, num_envs=2, out=str(tmp_path / "two")), progress=False)
    assert one["return_mean"] == two["return_mean"]
    a, b = Store.open(tmp_path / "one"), Store.open(tmp_path / "two")
    np.testing.assert_array_equal(a.read("data/action"), b.read("data/action"))
    np.testing.assert_array_equal(a.read("meta/episode_ends"), b.read("meta/episode_ends"))


def test_noise_schedules_decay_and_mixtures_cycle(tmp_path):
    linear = CollectConfig(episodes=5, epsilon=1.0, epsilon_end=0.0, noise=0.4, noise_end=0.0, schedule="linear")
    assert [episode_noise(linear, i)[1] for i in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    expo = CollectConfig(episodes=3, noise=0.4, noise_end=0.1, schedule="exponential")
    assert [episode_noise(expo, i)[0] for i in range(3)] == pytest.approx([0.4, 0.2, 0.1])
    mixed = CollectConfig(episodes=4, mix_epsilons=[1.0, 0.0])
    assert [episode_noise(mixed, i)[1] for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="exponential schedule needs"):
        collect(CollectConfig(env="sims/ArmReach-v0", out=str(tmp_path / "unused"), episodes=2, noise=0.4, noise_end=0.0, schedule="exponential"))
    with pytest.raises(ValueError, match=r"config field .mix_epsilons\[0\]. must be in \[0, 1\], got 1.5"):
        collect(CollectConfig(env="sims/ArmReach-v0", out=str(tmp_path / "unused"), mix_epsilons=[1.5]))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_a_valid_collect_config(recipe):
    cfg = from_dict(CollectConfig, load_yaml(recipe))
    assert cfg.env and cfg.out.startswith("datasets/") and cfg.quality


def test_collect_recipe_flag_and_eval_video(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("env: sims/ArmReach-v0\npolicy: random\nepisodes: 1\nquality: random\n")
    assert main(["collect", "--recipe", str(recipe), "--out", str(tmp_path / "store"), "--json"]) == 0
    assert Store.open(tmp_path / "store").num_episodes == 1
    video = tmp_path / "eval.mp4"
    assert main(["eval", "--policy", "scripted", "--env", "sims/ArmReach-v0", "--episodes", "1", "--video", str(video), "--json"]) == 0
    assert video.stat().st_size > 1000
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) == 51  # the reset frame and one per control step
