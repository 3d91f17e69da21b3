"""Filters, mixtures, windows, device tensors and lazily decoded images."""
import numpy as np
import pytest
import torch

from agent.store import EpisodeAttrs, Sampler, Store, load_transitions
from helpers import ACT_SPACE, OBS_SPACE, make_episode


@pytest.fixture
def cache(tmp_path, rng):
    store = Store.create(tmp_path / "s.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    for i in range(6):
        ep = make_episode(rng, 4 + i, "terminated" if i % 2 else "truncated")
        ep["obs"][:, 0] = i  # episode id in every observation
        ep["final_obs"][0] = i
        source = "scripted" if i < 4 else "online"
        store.append_episode(ep, EpisodeAttrs(source=source, quality="expert" if i % 2 else "medium",
                                              split="valid" if i == 3 else "train"))
    store.close()
    return load_transitions(Store.open(tmp_path / "s.zarr"))


def test_filters_keep_only_matching_episodes(cache):
    batch = Sampler(cache, where={"split": "train", "quality": "expert"}).transitions(500)
    assert set(np.unique(batch["obs"][:, 0]).tolist()) == {1.0, 5.0}
    with pytest.raises(ValueError, match="no episode matches"):
        Sampler(cache, where={"quality": "legendary"})
    with pytest.raises(ValueError, match="cannot filter on 'colour'"):
        Sampler(cache, where={"colour": "red"})


def test_mixture_splits_every_batch_by_source(cache):
    sampler = Sampler(cache, mixture={"scripted": 0.5, "online": 0.5}, seed=1)
    batch = sampler.transitions(256)
    online = np.isin(batch["obs"][:, 0], [4.0, 5.0])
    assert online.sum() == 128  # online holds 19 of 39 steps, yet gets half of every batch
    batch = Sampler(cache, mixture={"scripted": 3, "online": 1}).transitions(100)
    assert np.isin(batch["obs"][:, 0], [4.0, 5.0]).sum() == 25
    with pytest.raises(ValueError, match="match no episode"):
        Sampler(cache, mixture={"scripted": 0.5, "teleop": 0.5})


def test_transitions_keep_next_obs_within_the_episode(cache):
    batch = Sampler(cache).transitions(2000)
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["next_obs"][:, 0])


def test_windows_pad_by_edge_repeat_and_never_cross_episodes(cache):
    sampler = Sampler(cache, seed=2)
    batch = sampler.windows(512, length=6, pad_before=2, pad_after=3)
    assert batch["obs"].shape == (512, 6, 3) and batch["pad_mask"].shape == (512, 6)
    # one episode per window
    assert (batch["obs"][:, :, 0] == batch["obs"][:, :1, 0]).all()
    idx, mask = sampler.window_indices(2000, length=6, pad_before=2, pad_after=3)
    starts, ends = cache.episode_starts, cache.episode_ends
    ep = np.searchsorted(ends, idx[:, 0], side="right")
    assert ((idx >= starts[ep][:, None]) & (idx < ends[ep][:, None])).all()
    # padding: at most 2 before, 3 after, all of it edge repeats, flagged in the mask
    lead = np.argmax(~mask, axis=1)
    assert lead.max() == 2 and (mask[:, :2].sum(1) <= 2).all() and mask.any()
    assert (idx[mask] == np.where(np.arange(6)[None].repeat(2000, 0)[mask] < 3, starts[ep].repeat(6)[mask.ravel()],
                                  (ends[ep] - 1).repeat(6)[mask.ravel()])).all()
    assert mask[:, -3:].sum(1).max() == 3 and not mask[:, 2:3].all()


def test_windows_without_padding_are_whole_steps_and_long_enough(cache):
    idx, mask = Sampler(cache).window_indices(1000, length=8)
    assert not mask.any()
    assert (np.diff(idx, axis=1) == 1).all()
    with pytest.raises(ValueError, match="no episode is long enough"):
        Sampler(cache).windows(4, length=50)


def test_torch_device_batches_match_the_cache(cache):
    sampler = Sampler(cache, device="cpu", mixture={"scripted": 0.5, "online": 0.5})
    batch = sampler.transitions(64)
    assert isinstance(batch["obs"], torch.Tensor) and batch["obs"].shape == (64, 3)
    assert (torch.isin(batch["obs"][:, 0], torch.tensor([4.0, 5.0])).sum() == 32)
    assert torch.equal(batch["obs"][:, 0], batch["next_obs"][:, 0])
    win = sampler.windows(8, length=4, pad_before=1)
    assert win["pad_mask"].dtype == torch.bool and win["action"].shape == (8, 4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_sampling(cache):
    batch = Sampler(cache, device="cuda").transitions(256)
    assert batch["obs"].device.type == "cuda"


def test_images_are_one_frame_per_chunk_and_decoded_lazily(tmp_path, rng):
    store = Store.create(tmp_path / "img.zarr", env_id="test/none-v0", observation_space=OBS_SPACE,
                         action_space=ACT_SPACE, image_shapes={"front": (8, 6, 3)})
    frames = []
    for i in range(3):
        ep = make_episode(rng, 5)
        ep["images/front"] = rng.integers(0, 255, size=(5, 8, 6, 3), dtype=np.uint8)
        ep["final_images/front"] = rng.integers(0, 255, size=(8, 6, 3), dtype=np.uint8)
        frames.append(ep)
        store.append_episode(ep)
    bad = make_episode(rng, 5)
    bad["images/front"] = np.zeros((5, 8, 6, 3), np.float32)
    bad["final_images/front"] = np.zeros((8, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="images/front must be uint8"):
        store.append_episode(bad)
    store.close()
    reopened = Store.open(tmp_path / "img.zarr")
    assert reopened.group["data/images/front"].chunks == (1, 8, 6, 3)
    cache = load_transitions(reopened)
    assert cache.images is not None and cache.obs_table.nbytes < 1000  # frames stay on disk
    sampler = Sampler(cache)
    idx = np.array([0, 4, 7, 14])
    batch = sampler.cache.gather(idx)
    sampler._add_images(batch, idx, cache.next_index[idx])
    every = np.concatenate([f["images/front"] for f in frames])
    np.testing.assert_array_equal(batch["images/front"], every[idx])
    np.testing.assert_array_equal(batch["next_images/front"][1], frames[0]["final_images/front"])
    np.testing.assert_array_equal(batch["next_images/front"][0], every[1])
    win = sampler.windows(4, length=3, images=True)
    assert win["images/front"].shape == (4, 3, 8, 6, 3)
