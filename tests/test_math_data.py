"""The fine-tuning data path (agent/finetune/data.py): the online buffer's episodes,
next observations and per-step extras, the [K, B] batches that mix offline and online
rows (how many of each, from where, marked how), and the held-out split."""
from types import SimpleNamespace

import numpy as np
import pytest

from agent.finetune.data import BatchSource, OnlineBuffer, split_heldout
from agent.store.cache import TransitionCache
from helpers import make_episode

OBS, ACT = 3, 2


def _concat(episodes, key):
    return np.concatenate([ep[key] for ep in episodes])


def _offline(steps: int = 40, episodes: int = 4) -> TransitionCache:
    """A cache whose rows say where they come from: obs[t] = (t, t, t), reward -t - 1."""
    ends = np.linspace(0, steps, episodes + 1).astype(np.int64)[1:]
    obs_table = np.repeat(np.arange(steps + episodes, dtype=np.float32)[:, None], OBS, 1)
    next_index = np.arange(1, steps + 1)
    next_index[ends - 1] = steps + np.arange(episodes)
    return TransitionCache(obs_table=obs_table, action=np.zeros((steps, ACT), np.float32),
                           reward=-np.arange(steps, dtype=np.float32) - 1, terminated=np.zeros(steps, bool),
                           truncated=np.zeros(steps, bool), next_index=next_index, episode_ends=ends, env_id="test")


def test_online_buffer_keeps_whole_episodes_with_their_next_observations(rng):
    buf = OnlineBuffer(OBS, ACT, capacity=4)
    assert buf.size == 0 and all(a.shape[0] == 4 for a in buf.arrays.values())
    dtypes = {"obs": np.float32, "next_obs": np.float32, "action": np.float32, "reward": np.float32,
              "terminated": np.bool_, "truncated": np.bool_}
    assert {k: a.dtype for k, a in buf.arrays.items()} == dtypes
    assert buf.arrays["obs"].shape[1:] == (OBS,) and buf.arrays["action"].shape[1:] == (ACT,)
    episodes = [make_episode(rng, 3, "terminated"), make_episode(rng, 5, "truncated"), make_episode(rng, 1, "terminated")]
    sizes = []
    for ep in episodes:
        buf.add_episode(ep)
        sizes.append(buf.arrays["obs"].shape[0])
    assert buf.size == 9 and sizes == [4, 8, 16]  # grown to the need or twice the capacity
    assert {k: a.dtype for k, a in buf.arrays.items()} == dtypes  # growing keeps them
    got = buf.gather(np.arange(9))
    for key in ("obs", "action", "reward", "terminated", "truncated"):
        np.testing.assert_array_equal(got[key], _concat(episodes, key))
    next_obs = np.concatenate([np.concatenate([ep["obs"][1:], ep["final_obs"][None]]) for ep in episodes])
    np.testing.assert_array_equal(got["next_obs"], next_obs)
    assert np.all(buf.arrays["obs"][9:] == 0)
    assert buf.episode_returns == pytest.approx([float(ep["reward"].sum()) for ep in episodes])
    idx = np.array([8, 0, 4])
    np.testing.assert_array_equal(buf.gather(idx)["obs"], got["obs"][idx])


def test_online_buffer_grows_only_past_its_capacity(rng):
    buf = OnlineBuffer(OBS, ACT, capacity=4)
    buf.add_episode(make_episode(rng, 4))
    assert buf.arrays["obs"].shape[0] == 4 and buf.size == 4


def test_online_buffer_grows_to_a_long_episode_at_once(rng):
    buf = OnlineBuffer(OBS, ACT, capacity=2)
    ep = make_episode(rng, 7)
    buf.add_episode(ep)
    assert buf.arrays["reward"].shape[0] == 7
    np.testing.assert_array_equal(buf.gather(np.arange(7))["reward"], ep["reward"])


def test_online_buffer_extras_come_from_prepare_per_episode(rng):
    seen = []

    def prepare(cache):
        seen.append(cache)
        return {"mc_return": cache.reward * 10 + cache.episode_ends[0], "flags": np.ones((len(cache.reward), 2), bool)}

    buf = OnlineBuffer(OBS, ACT, prepare=prepare, capacity=16)
    episodes = [make_episode(rng, 5, "terminated"), make_episode(rng, 4, "truncated")]
    for ep in episodes:
        buf.add_episode(ep)
    assert [s.episode_ends.tolist() for s in seen] == [[5], [4]]
    for s, ep in zip(seen, episodes):
        np.testing.assert_array_equal(s.reward, ep["reward"])
        np.testing.assert_array_equal(s.terminated, ep["terminated"])
    got = buf.gather(np.arange(9))
    np.testing.assert_allclose(got["mc_return"], np.concatenate([episodes[0]["reward"] * 10 + 5,
                                                                 episodes[1]["reward"] * 10 + 4]))
    assert got["flags"].shape == (9, 2) and got["flags"].all() and buf.arrays["flags"].dtype == np.bool_
    assert buf.arrays["mc_return"].shape[0] == buf.arrays["obs"].shape[0]


def test_batch_source_refuses_bad_ratios_and_missing_offline_data(rng):
    online, offline = OnlineBuffer(OBS, ACT), _offline()
    steps = np.arange(offline.num_steps)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"offline_ratio must lie in \\[0, 1\\], got {bad}"):
            BatchSource(online, offline, steps, bad, rng)
    for off, st in ((None, steps), (offline, None), (offline, np.zeros(0, np.int64))):
        with pytest.raises(ValueError, match="offline_ratio 0.5 needs offline data; pass --data STORE"):
            BatchSource(online, off, st, 0.5, rng)
    for ratio in (0.0, 1.0):  # the bounds are allowed
        BatchSource(online, offline, steps, ratio, rng)
    source = BatchSource(online, None, None, 0.0, rng)
    assert source.offline_draws == 0 and source.offline_extras == {} and not source.mark_real


@pytest.mark.parametrize("ratio,batch,split", [(0.5, 8, (4, 4)), (0.3, 10, (3, 7)), (0.0, 5, (0, 5)), (1.0, 5, (5, 0)),
                                               (0.26, 10, (3, 7)), (0.24, 10, (2, 8))])
def test_split_rounds_the_offline_share(ratio, batch, split, rng):
    assert BatchSource(OnlineBuffer(OBS, ACT), _offline(), np.arange(40), ratio, rng).split(batch) == split


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.8, 0.99])
def test_ready_waits_for_an_online_episode_unless_all_rows_are_offline(ratio, rng):
    """A ratio below 1 leaves online rows in a large batch (0.8 of 256: 52), so it waits
    for the first episode; drawing before it would fail."""
    online = OnlineBuffer(OBS, ACT)
    source = BatchSource(online, _offline(), np.arange(40), ratio, rng)
    assert not source.ready()
    with pytest.raises(ValueError):
        source.sample(1, 256)
    online.add_episode(make_episode(rng, 1))
    assert source.ready()
    assert source.sample(2, 256)["obs"].shape == (2, 256, OBS)
    assert BatchSource(OnlineBuffer(OBS, ACT), _offline(), np.arange(40), 1.0, rng).ready()


def test_mixed_batches_take_their_rows_from_each_source(rng):
    offline = _offline()
    online = OnlineBuffer(OBS, ACT)
    ep = make_episode(rng, 6)
    ep["obs"][:] = 1000 + np.arange(6)[:, None]
    online.add_episode(ep)
    train = np.arange(10, 30)  # only these offline rows may be drawn
    extras = {"mc_return": np.arange(40, dtype=np.float32) * 0.5}
    source = BatchSource(online, offline, train, 0.25, np.random.default_rng(3), offline_extras=extras, mark_real=True)
    b = source.sample(3, 8)
    assert set(b) == {"obs", "action", "reward", "next_obs", "terminated", "truncated", "is_real"}
    assert b["obs"].shape == (3, 8, OBS) and b["reward"].shape == (3, 8) and b["is_real"].dtype == np.bool_
    assert b["is_real"][:, :2].all() and not b["is_real"][:, 2:].any()
    rows = b["obs"][:, :2, 0]
    assert np.all((rows >= 10) & (rows < 30)), "offline rows come from the training steps"
    np.testing.assert_array_equal(b["reward"][:, :2], -rows - 1)
    assert np.all(b["obs"][:, 2:, 0] >= 1000), "the rest is online"
    assert source.offline_draws == 6
    # the offline draws are the rng's: one index draw per source
    rng2 = np.random.default_rng(3)
    np.testing.assert_array_equal(rows.reshape(-1), train[rng2.integers(0, train.size, size=6)])
    online_idx = rng2.integers(0, online.size, size=18)
    np.testing.assert_array_equal(b["obs"][:, 2:, 0].reshape(-1), 1000 + online_idx)
    # extras only offline: a key the online rows lack is left out
    assert "mc_return" not in b
    one = source.sample(1, 4)
    assert one["obs"].shape == (4, OBS) and one["is_real"].shape == (4,) and source.offline_draws == 7


def test_offline_extras_and_offline_only_batches(rng):
    offline = _offline()
    extras = {"mc_return": np.arange(40, dtype=np.float32) * 0.5}
    source = BatchSource(OnlineBuffer(OBS, ACT), offline, np.arange(40), 0.5, rng, offline_extras=extras)
    b = source.sample(2, 5, offline_only=True)
    assert set(b) == {"obs", "action", "reward", "next_obs", "terminated", "truncated", "mc_return"}
    np.testing.assert_array_equal(b["mc_return"], b["obs"][..., 0] * 0.5)
    inside = b["obs"][..., 0] % 10 != 9  # rows that are not the last of their episode
    np.testing.assert_array_equal(b["next_obs"][..., 0][inside], b["obs"][..., 0][inside] + 1)
    assert source.offline_draws == 10 and b["obs"].shape == (2, 5, OBS)
    online_only = BatchSource(OnlineBuffer(OBS, ACT), None, None, 0.0, rng)
    online_only.online.add_episode(make_episode(rng, 3))
    b = online_only.sample(1, 4)
    assert b["obs"].shape == (4, OBS) and online_only.offline_draws == 0 and "is_real" not in b


@pytest.mark.parametrize("episodes,fraction,held", [(10, 0.2, 2), (10, 0.0, 0), (10, 0.04, 1), (2, 0.9, 1), (2, 0.1, 1),
                                                    (1, 0.5, 0), (4, 0.5, 2), (10, 1.0, 9)])
def test_split_heldout_takes_the_last_episodes(episodes, fraction, held):
    cache = _offline(steps=episodes * 4, episodes=episodes)
    train, test = split_heldout(cache, fraction)
    boundary = (episodes - held) * 4
    np.testing.assert_array_equal(train, np.arange(boundary))
    np.testing.assert_array_equal(test, np.arange(boundary, episodes * 4))
    assert train.dtype == test.dtype == np.int64


def test_split_heldout_follows_episode_boundaries():
    cache = SimpleNamespace(num_episodes=3, num_steps=10, episode_starts=np.array([0, 2, 7]))
    train, test = split_heldout(cache, 0.34)
    assert train.tolist() == list(range(7)) and test.tolist() == [7, 8, 9]
