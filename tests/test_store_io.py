"""Importers, the D4RL exporter, reading through fsspec URLs, and the CLI commands."""
import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from agent.store import EpisodeAttrs, Store, load_transitions
from agent.store.importers import export_dataset, import_dataset
from helpers import ACT_SPACE, OBS_SPACE, make_episode


def test_d4rl_layout_episodes_from_terminals_timeouts_and_discontinuities(tmp_path, rng):
    obs = rng.normal(size=(12, 3)).astype(np.float32)
    nxt = np.roll(obs, -1, axis=0)
    terminals = np.zeros(12, bool)
    timeouts = np.zeros(12, bool)
    terminals[3] = True                    # episode 0: steps 0..3, terminal
    timeouts[6] = True                     # episode 1: steps 4..6, timeout
    nxt[6] = rng.normal(size=3)            # its true next observation
    nxt[8] = rng.normal(size=3)            # a missing timeout: step 8 does not lead to step 9
    terminals[11] = timeouts[11] = True    # both set on the last step: terminal wins
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["observations"], f["next_observations"] = obs, nxt
        f["actions"] = rng.uniform(-1, 1, size=(12, 2)).astype(np.float32)
        f["rewards"], f["terminals"], f["timeouts"] = np.arange(12.0), terminals, timeouts
        f["infos/qpos"] = rng.normal(size=(12, 4))
    result = import_dataset("d4rl", tmp_path / "d.hdf5", tmp_path / "s.zarr", quality="medium")
    counts = {k: result["notes"][k] for k in ("both_flags", "split_at_discontinuity", "dropped_last_steps", "dropped_episodes")}
    assert counts == {"both_flags": 1, "split_at_discontinuity": 1, "dropped_last_steps": 0, "dropped_episodes": 0}
    assert result["notes"]["success"].startswith("not recorded") and result["warnings"] == []
    store = Store.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.episode_ends(), [4, 7, 9, 12])
    assert store.episode(0)["terminated"][-1] and store.episode(1)["truncated"][-1] and store.episode(3)["terminated"][-1]
    np.testing.assert_array_equal(store.episode(1)["final_obs"], nxt[6])
    np.testing.assert_array_equal(store.episode(2)["final_obs"], nxt[8])
    np.testing.assert_array_equal(store.episode(2)["sim_state/qpos"], f_qpos(tmp_path)[7:9])
    assert store.episode_attrs()["source"].tolist() == ["imported"] * 4
    assert store.attrs["imported_from"]["format"] == "d4rl"


def f_qpos(tmp_path):
    with h5py.File(tmp_path / "d.hdf5") as f:
        return f["infos/qpos"][()]


def test_d4rl_without_next_observations_drops_the_unbootstrappable_last_step(tmp_path, rng):
    obs = rng.normal(size=(10, 3)).astype(np.float32)
    timeouts = np.zeros(10, bool)
    timeouts[4] = True
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["observations"], f["actions"] = obs, np.zeros((10, 2), np.float32)
        f["rewards"], f["terminals"], f["timeouts"] = np.zeros(10), np.zeros(10, bool), timeouts
    result = import_dataset("d4rl", tmp_path / "d.hdf5", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    # steps 0..3 with final obs 4 (not the next episode's first observation 5), then 5..8 with final 9
    np.testing.assert_array_equal(store.episode_ends(), [4, 8])
    np.testing.assert_array_equal(store.episode(0)["final_obs"], obs[4])
    np.testing.assert_array_equal(store.episode(1)["final_obs"], obs[9])
    assert result["notes"]["dropped_last_steps"] == 2


def test_d4rl_export_then_import_is_identical(tmp_path, rng):
    store = Store.create(tmp_path / "a.zarr", env_id="test/none-v0", observation_space=OBS_SPACE,
                         action_space=ACT_SPACE, sim_state_dims={"qpos": 4})
    for i in range(5):
        ep = make_episode(rng, 3 + 2 * i, "terminated" if i % 2 else "truncated")
        ep["sim_state/qpos"] = rng.normal(size=(3 + 2 * i, 4))
        ep["success"] = bool(i % 2)
        store.append_episode(ep, EpisodeAttrs(quality="expert", split="valid" if i == 2 else "train", seed=i))
    store.close()
    export_dataset("d4rl", tmp_path / "a.zarr", tmp_path / "a.hdf5")
    import_dataset("d4rl", tmp_path / "a.hdf5", tmp_path / "b.zarr")
    a, b = Store.open(tmp_path / "a.zarr"), Store.open(tmp_path / "b.zarr")
    assert (a.num_episodes, a.num_steps, a.env_id) == (b.num_episodes, b.num_steps, b.env_id)
    assert a.attrs["action_space"] == b.attrs["action_space"]
    for i in range(a.num_episodes):
        ea, eb = a.episode(i), b.episode(i)
        assert ea.keys() == eb.keys()
        for key in ea:
            assert ea[key].dtype == eb[key].dtype and np.array_equal(ea[key], eb[key]), key
    for col in ("quality", "split", "seed", "success", "return", "length"):
        np.testing.assert_array_equal(a.episode_attrs()[col], b.episode_attrs()[col])


def test_robomimic_layout(tmp_path, rng):
    with h5py.File(tmp_path / "r.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"control_freq": 20, "reward_shaping": False}})
        data.attrs["total"] = 11
        lengths = {"demo_0": 5, "demo_1": 6}
        for name, t in lengths.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = t
            for part in ("obs", "next_obs"):
                g[f"{part}/robot0_eef_pos"] = rng.normal(size=(t, 3))
                g[f"{part}/object"] = rng.normal(size=(t, 4))
                g[f"{part}/agentview_image"] = np.zeros((t, 4, 4, 3), np.uint8)
            g["actions"] = rng.uniform(-1, 1, size=(t, 7))
            g["rewards"] = np.r_[np.zeros(t - 1), 1.0]
            g["dones"] = np.r_[np.zeros(t - 1), 1].astype(np.int64)
            g["states"] = rng.normal(size=(t, 9))
        f["mask/train"] = np.array([b"demo_0"])
        f["mask/valid"] = np.array([b"demo_1"])
    import_dataset("robomimic", tmp_path / "r.hdf5", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.env_id == "robomimic/Lift" and store.obs_dim == 7 and store.action_dim == 7
    assert store.attrs["imported_from"]["obs_names"] == ["object", "robot0_eef_pos"]
    with h5py.File(tmp_path / "r.hdf5") as f:
        demo = f["data/demo_1"]
        np.testing.assert_allclose(store.episode(1)["final_obs"], np.r_[demo["next_obs/object"][-1], demo["next_obs/robot0_eef_pos"][-1]], rtol=1e-6)
        np.testing.assert_allclose(store.episode(1)["sim_state/states"], demo["states"][()])
    attrs = store.episode_attrs()
    assert attrs["split"].tolist() == ["train", "valid"] and attrs["success"].all()
    assert store.episode(0)["terminated"][-1]


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_minari_written_by_minari(tmp_path, monkeypatch, data_format, rng):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    buffers = []
    for i, t in enumerate((4, 6)):
        buffers.append(EpisodeBuffer(observations=rng.normal(size=(t + 1, 3)).astype(np.float32),
                                     actions=rng.uniform(-2, 2, size=(t, 1)).astype(np.float32),
                                     rewards=rng.normal(size=t), terminations=np.r_[np.zeros(t - 1, bool), [i == 0]],
                                     truncations=np.r_[np.zeros(t - 1, bool), [i == 1]], infos={}))
    env = gym.make("Pendulum-v1", max_episode_steps=6)
    with pytest.warns():
        minari.create_dataset_from_buffers(dataset_id=f"test/pend-{data_format}-v0", buffer=buffers, env=env,
                                           algorithm_name="random", data_format=data_format)
    src = tmp_path / "minari" / "test" / f"pend-{data_format}-v0"
    import_dataset("minari", src, tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.env_id == "Pendulum-v1" and store.attrs["action_space"]["high"] == [2.0]
    np.testing.assert_array_equal(store.episode_ends(), [4, 10])
    np.testing.assert_array_equal(store.episode(1)["obs"], buffers[1].observations[:-1])
    np.testing.assert_array_equal(store.episode(1)["final_obs"], buffers[1].observations[-1])
    np.testing.assert_allclose(store.episode(0)["reward"], buffers[0].rewards.astype(np.float32))
    assert store.episode(0)["terminated"][-1] and store.episode(1)["truncated"][-1]


def _lerobot_frames(rng, lengths):
    rows = []
    index = 0
    for ep, t in enumerate(lengths):
        for frame in range(t):
            rows.append({"observation.state": rng.normal(size=4).astype(np.float32).tolist(),
                         "observation.velocity": rng.normal(size=2).astype(np.float32).tolist(),
                         "action": rng.uniform(-1, 1, size=3).astype(np.float32).tolist(),
                         "episode_index": ep, "frame_index": frame, "index": index, "timestamp": frame / 10,
                         "next.reward": float(frame == t - 1), "next.done": frame == t - 1, "task_index": 0})
            index += 1
    return rows


def _lerobot_info(version, lengths):
    return {"codebase_version": version, "robot_type": "so100", "fps": 10, "total_episodes": len(lengths),
            "features": {"observation.state": {"dtype": "float32", "shape": [4]},
                         "observation.velocity": {"dtype": "float32", "shape": [2]},
                         "observation.images.top": {"dtype": "video", "shape": [48, 64, 3]},
                         "action": {"dtype": "float32", "shape": [3]},
                         "episode_index": {"dtype": "int64", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                         "next.reward": {"dtype": "float32", "shape": [1]}, "next.done": {"dtype": "bool", "shape": [1]}}}


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_low_dim(tmp_path, rng, version):
    lengths = [5, 7, 4]
    rows = _lerobot_frames(rng, lengths)
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_lerobot_info(version, lengths)))
    if version == "v2.1":  # one parquet per episode
        for ep in range(len(lengths)):
            path = root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([r for r in rows if r["episode_index"] == ep]), path)
    else:  # many episodes per file, in two files, rows out of order
        path = root / "data" / "chunk-000"
        path.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows[9:][::-1]), path / "file-001.parquet")
        pq.write_table(pa.Table.from_pylist(rows[:9]), path / "file-000.parquet")
    import_dataset("lerobot", root, tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.obs_dim == 6 and store.action_dim == 3
    np.testing.assert_array_equal(store.episode_ends(), [4, 10, 13])
    ep1 = [r for r in rows if r["episode_index"] == 1]
    want_final = np.r_[ep1[-1]["observation.state"], ep1[-1]["observation.velocity"]].astype(np.float32)
    np.testing.assert_array_equal(store.episode(1)["final_obs"], want_final)
    np.testing.assert_array_equal(store.episode(1)["action"][0], np.float32(ep1[0]["action"]))


def test_zarr_v2_replay_buffer(tmp_path, rng):
    root = zarr.open_group(str(tmp_path / "rb.zarr"), mode="w", zarr_format=2)
    state = rng.normal(size=(9, 5)).astype(np.float32)
    root.create_array("data/state", data=state, chunks=(4, 5))
    root.create_array("data/action", data=rng.uniform(-1, 1, size=(9, 2)).astype(np.float32), chunks=(4, 2))
    root.create_array("data/img", data=np.zeros((9, 4, 4, 3), np.uint8), chunks=(1, 4, 4, 3))
    root.create_array("meta/episode_ends", data=np.array([4, 9]), chunks=(10,))
    import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.episode_ends(), [3, 7])
    np.testing.assert_array_equal(store.episode(0)["obs"], state[:3])
    np.testing.assert_array_equal(store.episode(1)["final_obs"], state[8])


def test_zarr_v2_object_arrays_are_refused_before_anything_is_unpickled(tmp_path):
    root = tmp_path / "rb.zarr"
    for key, meta in (("data/action", {"dtype": "<f4"}), ("data/state", {"dtype": "|O", "filters": [{"id": "pickle"}]}),
                      ("meta/episode_ends", {"dtype": "<i8"})):
        (root / key).mkdir(parents=True)
        (root / key / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [3], "chunks": [3], "order": "C",
                                                        "compressor": None, "fill_value": None, "filters": None, **meta}))
    (root / ".zgroup").write_text('{"zarr_format": 2}')
    (root / "data" / "state" / "0").write_bytes(b"\x80\x04cos\nsystem\n")  # would run code if unpickled
    with pytest.raises(ValueError, match="data/state: dtype '\\|O' is not numeric"):
        import_dataset("zarr_v2", root, tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="data/state has dtype '\\|O'; only numeric arrays are imported"):
        import_dataset("zarr_v2", root, tmp_path / "s.zarr", obs_keys=["state"])


def test_store_reads_through_fsspec_urls(tmp_path, rng):
    import fsspec

    store = Store.create(tmp_path / "s.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    eps = [make_episode(rng, 5 + i) for i in range(3)]
    for ep in eps:
        store.append_episode(ep)
    store.close()
    by_file = Store.open(f"file://{tmp_path / 's.zarr'}")
    np.testing.assert_array_equal(by_file.episode(2)["obs"], eps[2]["obs"])
    memory = fsspec.filesystem("memory")
    memory.put(str(tmp_path / "s.zarr"), "/bucket/s.zarr", recursive=True)
    remote = Store.open("memory://bucket/s.zarr")
    assert remote.num_episodes == 3
    cache = load_transitions(remote)
    np.testing.assert_array_equal(cache.obs, np.concatenate([e["obs"] for e in eps]))
    with pytest.raises(ValueError, match="opened read-only"):
        Store.open("memory://bucket/s.zarr", mode="a")
    memory.rm("/bucket/s.zarr/data/obs/c/0/0")
    with pytest.raises(ValueError, match="lost committed chunk"):
        Store.open("memory://bucket/s.zarr")


def run_cli(capsys, *args):
    from agent.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_import_export_fsck_inspect(tmp_path, rng, capsys):
    store = Store.create(tmp_path / "a.zarr", env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    for i in range(3):
        store.append_episode(make_episode(rng, 4), EpisodeAttrs(source="scripted" if i else "teleop", parents=[0] if i else []))
    store.close()
    code, out, err = run_cli(capsys, "export", "--to", "d4rl", tmp_path / "a.zarr", tmp_path / "a.hdf5", "--json")
    assert code == 0, err
    code, out, err = run_cli(capsys, "import", "--from", "d4rl", tmp_path / "a.hdf5", "--out", tmp_path / "b.zarr", "--json")
    assert code == 0 and json.loads(out)["episodes"] == 3, err
    code, out, err = run_cli(capsys, "fsck", tmp_path / "b.zarr", "--json")
    assert code == 0 and json.loads(out)["clean"], out
    code, out, err = run_cli(capsys, "inspect", tmp_path / "a.zarr", "--json")
    summary = json.loads(out)
    assert summary["by_source"]["scripted"]["episodes"] == 2 and summary["lineage"]["derived_episodes"] == 2
    assert summary["keys"]["data/obs"] == {"shape": [12, 3], "dtype": "float32", "chunks": [512, 3]}
    code, table, err = run_cli(capsys, "inspect", tmp_path / "a.zarr")
    assert "teleop" in table and "lineage" in table
    code, out, err = run_cli(capsys, "import", "--from", "d4rl", tmp_path / "missing.hdf5", "--out", tmp_path / "c.zarr")
    assert code == 2 and "does not exist" in err
