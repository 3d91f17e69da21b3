import json

import numpy as np
import pytest
import zarr

from agent.store import EpisodeAttrs, Store, load_transitions
from helpers import ACT_SPACE, OBS_SPACE, make_episode


def new_store(path, **kw):
    return Store.create(path, env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE, **kw)


def test_round_trip_keeps_next_obs_exact_at_terminated_and_truncated_ends(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    episodes = [make_episode(rng, 5, "terminated"), make_episode(rng, 7, "truncated"), make_episode(rng, 3, "terminated")]
    for i, ep in enumerate(episodes):
        assert store.append_episode(ep, EpisodeAttrs(source="scripted", quality="expert", seed=i)) == i

    reopened = Store.open(tmp_path / "s.zarr")
    assert reopened.num_episodes == 3 and reopened.num_steps == 15
    np.testing.assert_array_equal(reopened.episode_ends(), [5, 12, 15])
    for i, ep in enumerate(episodes):
        back = reopened.episode(i)
        for key in ("obs", "action", "reward", "terminated", "truncated", "final_obs"):
            np.testing.assert_array_equal(back[key], ep[key])

    cache = load_transitions(reopened)
    all_idx = np.arange(15)
    batch = cache.gather(all_idx)
    expected_next = np.concatenate([np.concatenate([ep["obs"][1:], ep["final_obs"][None]]) for ep in episodes])
    np.testing.assert_array_equal(batch["next_obs"], expected_next)
    np.testing.assert_array_equal(batch["terminated"], np.concatenate([ep["terminated"] for ep in episodes]))
    np.testing.assert_array_equal(batch["truncated"], np.concatenate([ep["truncated"] for ep in episodes]))
    # the step before each boundary does not borrow the next episode's first observation
    assert not np.array_equal(batch["next_obs"][4], episodes[1]["obs"][0])

    attrs = reopened.episode_attrs()
    assert attrs["source"].tolist() == ["scripted"] * 3
    assert attrs["seed"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(attrs["return"], [ep["reward"].astype(np.float64).sum() for ep in episodes])
    assert json.loads(attrs["parents"][0]) == []


def test_sampler_draws_only_committed_transitions(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    for _ in range(4):
        store.append_episode(make_episode(rng, 6))
    cache = load_transitions(Store.open(tmp_path / "s.zarr"))
    batch = cache.sample(1000, np.random.default_rng(1))
    assert batch["obs"].shape == (1000, 3) and batch["next_obs"].shape == (1000, 3)
    assert batch["obs"].dtype == np.float32


def test_stats_track_committed_observations(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    eps = [make_episode(rng, 50) for _ in range(3)]
    for ep in eps:
        store.append_episode(ep)
    obs = np.concatenate([e["obs"] for e in eps]).astype(np.float64)
    stats = Store.open(tmp_path / "s.zarr").stats
    np.testing.assert_allclose(stats["obs_mean"], obs.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["obs_var"], obs.var(0), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("corrupt, message", [
    (lambda ep: ep["action"].__setitem__((2, 1), np.nan), "action holds a non-finite value"),
    (lambda ep: ep["action"].__setitem__((1, 0), 3.0), "outside the action bounds"),
    (lambda ep: ep["terminated"].__setitem__(-1, True), "both set"),
    (lambda ep: ep["truncated"].__setitem__(1, True), "set before the last step"),
    (lambda ep: ep.__setitem__("obs", ep["obs"][:, :2]), "obs must have shape"),
    (lambda ep: ep.__setitem__("reward", ep["reward"][:-1]), "reward must have shape"),
    (lambda ep: ep.__setitem__("terminated", ep["terminated"].astype(np.float32)), "must be booleans"),
])
def test_bad_episode_is_refused_and_store_is_untouched(tmp_path, rng, corrupt, message):
    store = new_store(tmp_path / "s.zarr")
    good = make_episode(rng, 5)
    store.append_episode(good)
    bad = make_episode(rng, 5)
    corrupt(bad)
    with pytest.raises(ValueError, match=message) as info:
        store.append_episode(bad)
    assert "episode 1" in str(info.value)
    reopened = Store.open(tmp_path / "s.zarr")
    assert reopened.num_episodes == 1 and reopened.num_steps == 5
    np.testing.assert_array_equal(reopened.episode(0)["obs"], good["obs"])


def test_torn_append_is_invisible_to_readers(tmp_path, rng):
    """Rows written past the commit record (a writer killed mid-append) are not read."""
    store = new_store(tmp_path / "s.zarr")
    store.append_episode(make_episode(rng, 4))
    store.close()
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group["data/obs"].resize((9, 3))
    group["data/obs"][4:9] = 99.0
    reopened = Store.open(tmp_path / "s.zarr", mode="a")
    assert reopened.num_steps == 4
    assert not (load_transitions(reopened).obs == 99.0).any()
    ep = make_episode(rng, 3)
    reopened.append_episode(ep)
    np.testing.assert_array_equal(Store.open(tmp_path / "s.zarr").episode(1)["obs"], ep["obs"])


def test_open_refuses_missing_path_and_non_store(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Store.open(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="is not an agent store"):
        Store.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="is not an agent store"):
        Store.open(tmp_path / "other.zarr")


def test_loading_a_store_with_nan_actions_names_the_key_and_episode(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    for _ in range(2):
        store.append_episode(make_episode(rng, 5))
    # written behind the store's back, as another tool might
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["data/action"][7, 0] = np.nan
    with pytest.raises(ValueError, match=r"data/action holds NaN or inf at step 7 \(episode 1\)"):
        load_transitions(Store.open(tmp_path / "s.zarr"))


def test_create_refuses_non_empty_directory(tmp_path, rng):
    new_store(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="not empty"):
        new_store(tmp_path / "s.zarr")


def test_sim_state_round_trip(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr", sim_state_dims={"physics": 4})
    ep = make_episode(rng, 5)
    ep["sim_state/physics"] = rng.normal(size=(5, 4))
    store.append_episode(ep)
    np.testing.assert_array_equal(Store.open(tmp_path / "s.zarr").episode(0)["sim_state/physics"], ep["sim_state/physics"])
    missing = make_episode(rng, 5)
    with pytest.raises(ValueError, match="sim_state/physics"):
        store.append_episode(missing)


# zero-element rows of several shapes: zarr writes no chunk files for them at all
ZERO_WIDTH = {"task": 0, "grid": (3, 0), "wide": (0, 4)}


def test_zero_width_arrays_append_reopen_fsck_read_and_sample(tmp_path, rng):
    from agent.store import Sampler, fsck

    def episode(length):
        ep = make_episode(rng, length, end="terminated" if length % 2 else "truncated")
        ep["sim_state/physics"] = rng.normal(size=(length, 4))
        for name, dim in ZERO_WIDTH.items():
            ep[f"sim_state/{name}"] = np.zeros((length, *np.atleast_1d(dim)))
        ep["images/flat"], ep["final_images/flat"] = np.zeros((length, 2, 0, 3), np.uint8), np.zeros((2, 0, 3), np.uint8)
        return ep

    path = tmp_path / "s.zarr"
    episodes = [episode(n) for n in (5, 600, 7)]  # the second crosses a 512-row chunk boundary
    with new_store(path, sim_state_dims={"physics": 4, **ZERO_WIDTH}, image_shapes={"flat": (2, 0, 3)}) as store:
        store.append_episode(episodes[0])
        store.append_episode(episodes[1])
    report = fsck(path)
    assert report["clean"] and not report["problems"], report
    with Store.open(path, mode="a") as store:  # a second writer session appends to the reopened store
        store.append_episode(episodes[2])
    assert fsck(path)["clean"] and fsck(path, repair=False)["clean"]

    store = Store.open(path)
    steps = sum(len(e["obs"]) for e in episodes)
    assert store.num_episodes == 3 and store.num_steps == steps
    for name, dim in ZERO_WIDTH.items():
        assert store.read(f"data/sim_state/{name}").shape == (steps, *np.atleast_1d(dim))
    assert store.read("data/images/flat").shape == (steps, 2, 0, 3)
    assert store.read("final_obs/images/flat").shape == (3, 2, 0, 3)
    for i, want in enumerate(episodes):
        got = store.episode(i)
        for key in ["obs", "action", "reward", "sim_state/physics", *(f"sim_state/{n}" for n in ZERO_WIDTH), "images/flat"]:
            assert got[key].shape == want[key].shape, key
            np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(store.read("data/sim_state/physics"),
                                  np.concatenate([e["sim_state/physics"] for e in episodes]))

    cache = load_transitions(store)
    sampler = Sampler(cache, seed=0)
    batch = sampler.transitions(8, images=True)
    assert batch["obs"].shape == (8, 3) and batch["images/flat"].shape == (8, 2, 0, 3)
    assert sampler.windows(4, 3, images=True)["next_images/flat"].shape == (4, 3, 2, 0, 3)


def test_sim_state_sizes_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        new_store(tmp_path / "s.zarr", sim_state_dims={"task": -1})
    assert not (tmp_path / "s.zarr").exists()  # a refused layout leaves no directory (and no held lock) behind
