"""Importers read each key as what it is, write atomically, state success only where the
format does, keep time limits, and work without the optional extras where they can."""
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from agent.store import EpisodeAttrs, Store
from agent.store.importers import export_dataset, import_dataset
from helpers import ACT_SPACE, OBS_SPACE, make_episode

ROOT = Path(__file__).resolve().parents[1]


def _replay_buffer(path, rng, ends=(4, 9)):
    n = ends[-1]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arrays = {"state": rng.normal(size=(n, 5)).astype(np.float32),
              "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
              "reward": rng.uniform(0, 1, size=n).astype(np.float32),
              "timestamp": np.arange(n, dtype=np.float64) / 10,
              "stage": np.arange(n, dtype=np.int64) % 3,
              "n_contacts": np.arange(n, dtype=np.int64),
              "img": np.zeros((n, 4, 4, 3), np.uint8)}
    for key, value in arrays.items():
        root.create_array(f"data/{key}", data=value, chunks=value.shape)
    root.create_array("meta/episode_ends", data=np.array(ends), chunks=(10,))
    return arrays


def test_zarr_v2_reads_reward_as_reward_and_skips_bookkeeping_with_a_note(tmp_path, rng):
    arrays = _replay_buffer(tmp_path / "rb.zarr", rng)
    result = import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.obs_dim == 5 and result["obs_keys"] == ["state"]
    np.testing.assert_array_equal(store.episode(0)["obs"], arrays["state"][:3])
    # each episode keeps T-1 transitions: frames 0..2 and 4..7 carry rewards
    np.testing.assert_array_equal(store.episode(0)["reward"], arrays["reward"][:3])
    np.testing.assert_array_equal(store.episode(1)["reward"], arrays["reward"][4:8])
    assert set(result["skipped_keys"]) == {"data/timestamp", "data/stage", "data/n_contacts", "data/img"}
    assert "bookkeeping" in result["skipped_keys"]["data/stage"] and "images" in result["skipped_keys"]["data/img"]
    notes = store.attrs["imported_from"]["notes"]
    assert notes["skipped_keys"] == result["skipped_keys"] and notes["read_as"] == {"reward": "data/reward"}
    assert result["warnings"] == []


def test_zarr_v2_obs_keys_override_the_name_rules(tmp_path, rng):
    arrays = _replay_buffer(tmp_path / "rb.zarr", rng)
    result = import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "s.zarr", obs_keys=["n_contacts", "state"])
    store = Store.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.episode(0)["obs"][:, 0], arrays["n_contacts"][:3])
    np.testing.assert_array_equal(store.episode(0)["obs"][:, 1:], arrays["state"][:3])
    np.testing.assert_array_equal(store.episode(0)["reward"], arrays["reward"][:3])
    assert result["skipped_keys"]["data/timestamp"] == "not in --obs-keys" and "data/reward" not in result["skipped_keys"]
    with pytest.raises(ValueError, match="data/action is the action"):
        import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "t.zarr", obs_keys=["state", "action"])


def test_zarr_v2_without_reward_says_so(tmp_path, rng):
    root = zarr.open_group(str(tmp_path / "rb.zarr"), mode="w", zarr_format=2)
    root.create_array("data/agent_pos", data=rng.normal(size=(6, 2)).astype(np.float32), chunks=(6, 2))
    root.create_array("data/action", data=rng.uniform(-1, 1, size=(6, 2)).astype(np.float32), chunks=(6, 2))
    root.create_array("meta/episode_ends", data=np.array([6]), chunks=(1,))
    result = import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "s.zarr")
    assert any("no reward key" in w for w in result["warnings"])
    assert Store.open(tmp_path / "s.zarr").attrs["imported_from"]["notes"]["warnings"] == result["warnings"]


def _d4rl(path, obs, *, timeouts=None, next_obs=None, terminals=None):
    n = obs.shape[0]
    with h5py.File(path, "w") as f:
        f["observations"], f["actions"] = obs, np.zeros((n, 2), np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool) if terminals is None else terminals
        if timeouts is not None:
            f["timeouts"] = timeouts
        if next_obs is not None:
            f["next_observations"] = next_obs


def test_bad_row_is_named_and_the_failed_import_leaves_nothing(tmp_path, rng):
    obs = rng.normal(size=(12, 3)).astype(np.float32)
    timeouts = np.zeros(12, bool)
    timeouts[[4, 11]] = True
    bad = obs.copy()
    bad[7, 1] = np.nan
    _d4rl(tmp_path / "d.hdf5", bad, timeouts=timeouts, next_obs=np.roll(bad, -1, axis=0))
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError) as err:
        import_dataset("d4rl", tmp_path / "d.hdf5", out)
    assert not out.exists()  # not a valid-looking store of the episodes before the bad row
    assert "observations holds a non-finite value (NaN or inf) at row 7" in str(err.value)
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=timeouts, next_obs=np.roll(obs, -1, axis=0))
    assert import_dataset("d4rl", tmp_path / "d.hdf5", out)["episodes"] == 2


def test_failure_while_writing_leaves_nothing_and_the_retry_works(tmp_path, rng):
    obs = rng.normal(size=(12, 3)).astype(np.float32)
    timeouts = np.zeros(12, bool)
    timeouts[[4, 11]] = True
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=timeouts, next_obs=np.roll(obs, -1, axis=0))
    with h5py.File(tmp_path / "d.hdf5", "a") as f:  # bounds the file states, broken in the second episode
        f.attrs["agent_store"] = json.dumps({"env_id": "test/none-v0", "action_space": {"low": [-1, -1], "high": [1, 1]}})
        f["actions"][8] = [3.0, 0.0]
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError) as err:
        import_dataset("d4rl", tmp_path / "d.hdf5", out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d.hdf5"]
    assert re.search(r"episode 1 of .*d\.hdf5'.*outside the action bounds.*nothing was written to", str(err.value))
    assert ".importing-" not in str(err.value) and "\n" not in str(err.value)
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        f["actions"][8] = [0.0, 0.0]
    assert import_dataset("d4rl", tmp_path / "d.hdf5", out)["episodes"] == 2
    assert Store.open(out).num_episodes == 2


def test_interrupted_import_leaves_nothing(tmp_path, rng, monkeypatch):
    _replay_buffer(tmp_path / "rb.zarr", rng)
    real = Store.append_episode

    def interrupted(self, episode, attrs=None):
        if self.num_episodes == 1:
            raise KeyboardInterrupt
        return real(self, episode, attrs)

    monkeypatch.setattr(Store, "append_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_dataset("zarr_v2", tmp_path / "rb.zarr", tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rb.zarr"]


def test_import_onto_an_existing_path_is_refused_and_leaves_it_alone(tmp_path, rng):
    obs = rng.normal(size=(6, 3)).astype(np.float32)
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=np.r_[np.zeros(5, bool), True], next_obs=obs)
    for existing in (tmp_path / "full", tmp_path / "empty"):
        existing.mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for existing in (tmp_path / "full", tmp_path / "empty"):
        with pytest.raises(ValueError, match="the path already exists; pass a new --out"):
            import_dataset("d4rl", tmp_path / "d.hdf5", existing)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not any((tmp_path / "empty").iterdir())


def test_d4rl_without_timeouts_is_reported(tmp_path, rng):
    obs = rng.normal(size=(10, 3)).astype(np.float32)
    nxt = np.roll(obs, -1, axis=0)
    nxt[4] = rng.normal(size=3)  # a time-limit cut the file does not mark
    _d4rl(tmp_path / "a.hdf5", obs, next_obs=nxt)
    result = import_dataset("d4rl", tmp_path / "a.hdf5", tmp_path / "a.zarr")
    assert result["episodes"] == 2 and len(result["warnings"]) == 1 and "has no timeouts" in result["warnings"][0]
    _d4rl(tmp_path / "b.hdf5", obs)
    result = import_dataset("d4rl", tmp_path / "b.hdf5", tmp_path / "b.zarr")
    assert "neither timeouts nor next_observations" in result["warnings"][0]
    assert "cannot be told apart" in result["warnings"][0]
    assert Store.open(tmp_path / "b.zarr").attrs["imported_from"]["notes"]["warnings"] == result["warnings"]


def test_d4rl_success_is_not_recorded_unless_the_file_states_it(tmp_path, rng):
    obs = rng.normal(size=(6, 3)).astype(np.float32)
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=np.r_[np.zeros(5, bool), True], next_obs=obs)
    result = import_dataset("d4rl", tmp_path / "d.hdf5", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert result["notes"]["success"].startswith("not recorded") and not store.attrs["imported_from"]["success_recorded"]
    # inspect says unknown, not a success rate of 0
    from agent.inspect import format_summary, summarize_store
    summary = summarize_store(store)
    assert summary["success_rate"] is None and summary["by_source"]["imported"]["success_rate"] is None
    assert "unknown" in format_summary(summary)
    # exporting it again does not invent a success column
    export_dataset("d4rl", tmp_path / "s.zarr", tmp_path / "e.hdf5")
    with h5py.File(tmp_path / "e.hdf5") as f:
        assert "agent/episodes/success" not in f


def _minari_hdf5(root, episodes, env_spec, infos_success=None):
    data = root / "data"
    data.mkdir(parents=True)
    box = {"type": "Box", "dtype": "float32", "shape": [3], "low": [-1e9] * 3, "high": [1e9] * 3}
    act = {"type": "Box", "dtype": "float32", "shape": [1], "low": [-2.0], "high": [2.0]}
    (data / "metadata.json").write_text(json.dumps({
        "dataset_id": "test/pend-v0", "data_format": "hdf5", "observation_space": json.dumps(box),
        "action_space": json.dumps(act), "env_spec": json.dumps(env_spec), "total_episodes": len(episodes)}))
    with h5py.File(data / "main_data.hdf5", "w") as f:
        for i, (obs, action, rewards, term, trunc) in enumerate(episodes):
            g = f.create_group(f"episode_{i}")
            g["observations"], g["actions"], g["rewards"] = obs, action, rewards
            g["terminations"], g["truncations"] = term, trunc
            g["infos/angle"] = np.zeros(len(obs))
            if infos_success is not None:
                g["infos/success"] = infos_success[i]


def _pendulum_episodes(rng):
    episodes = []
    for i, t in enumerate((4, 6)):
        episodes.append((rng.normal(size=(t + 1, 3)).astype(np.float32), rng.uniform(-2, 2, size=(t, 1)).astype(np.float32),
                         rng.normal(size=t), np.r_[np.zeros(t - 1, bool), [i == 0]], np.r_[np.zeros(t - 1, bool), [i == 1]]))
    return episodes


SPEC = {"id": "Pendulum-v1", "entry_point": "gymnasium.envs.classic_control.pendulum:PendulumEnv",
        "max_episode_steps": 6, "kwargs": {"g": 9.81}}


def test_minari_terminations_are_not_successes_and_the_time_limit_is_kept(tmp_path, rng):
    _minari_hdf5(tmp_path / "pend", _pendulum_episodes(rng), SPEC)
    result = import_dataset("minari", tmp_path / "pend", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.episode(0)["terminated"][-1]           # the pendulum fell: terminated, not a success
    assert not store.episode_attrs()["success"].any()
    assert not store.attrs["imported_from"]["success_recorded"]
    assert store.attrs["env_kwargs"] == {"g": 9.81, "max_episode_steps": 6}
    assert result["notes"]["time_limit"] == 6
    assert result["skipped_keys"] == {"infos/angle": "step info, not imported"}


def test_minari_success_read_from_infos(tmp_path, rng):
    _minari_hdf5(tmp_path / "pend", _pendulum_episodes(rng), SPEC,
                 infos_success=[np.zeros(5, bool), np.r_[np.zeros(6, bool), True]])
    result = import_dataset("minari", tmp_path / "pend", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.episode_attrs()["success"].tolist() == [False, True]
    assert store.attrs["imported_from"]["success_recorded"] and result["notes"]["success"] == "read from infos/success"


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_minari_written_by_minari_keeps_time_limit_and_unknown_success(tmp_path, monkeypatch, data_format, rng):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    buffers = [EpisodeBuffer(observations=obs, actions=act, rewards=rew, terminations=term, truncations=trunc, infos={})
               for obs, act, rew, term, trunc in _pendulum_episodes(rng)]
    with pytest.warns():
        minari.create_dataset_from_buffers(dataset_id=f"test/pend-{data_format}-v0", buffer=buffers,
                                           env=gym.make("Pendulum-v1", max_episode_steps=6),
                                           algorithm_name="random", data_format=data_format)
    import_dataset("minari", tmp_path / "minari" / "test" / f"pend-{data_format}-v0", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert store.episode(0)["terminated"][-1] and not store.episode_attrs()["success"].any()
    assert store.attrs["env_kwargs"]["max_episode_steps"] == 6


def _robomimic(path, rng, env_kwargs):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": env_kwargs})
        for name, t in (("demo_0", 5), ("demo_1", 4)):
            g = data.create_group(name)
            for part in ("obs", "next_obs"):
                g[f"{part}/robot0_eef_pos"] = rng.normal(size=(t, 3))
                g[f"{part}/timestamp"] = np.arange(t, dtype=np.float64)
                g[f"{part}/agentview_image"] = np.zeros((t, 4, 4, 3), np.uint8)
            g["actions"] = rng.uniform(-1, 1, size=(t, 7))
            g["rewards"] = rng.uniform(0.1, 0.5, size=t)  # shaped: positive on every step
            g["dones"] = np.r_[np.zeros(t - 1), 1].astype(np.int64)
            g["action_dict/abs_pos"] = rng.normal(size=(t, 3))


def test_robomimic_dense_rewards_state_no_success_and_skipped_keys_are_listed(tmp_path, rng):
    _robomimic(tmp_path / "r.hdf5", rng, {"reward_shaping": True})
    result = import_dataset("robomimic", tmp_path / "r.hdf5", tmp_path / "s.zarr")
    store = Store.open(tmp_path / "s.zarr")
    assert result["obs_keys"] == ["robot0_eef_pos"] and store.obs_dim == 3
    assert not store.episode_attrs()["success"].any() and not store.attrs["imported_from"]["success_recorded"]
    assert set(result["skipped_keys"]) == {"obs/timestamp", "obs/agentview_image", "action_dict"}


def test_lerobot_success_unknown_without_next_success_and_skipped_keys(tmp_path, rng):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    features = {"observation.state": {"dtype": "float32", "shape": [2]},
                "observation.images.top": {"dtype": "video", "shape": [8, 8, 3]},
                "action": {"dtype": "float32", "shape": [1]}, "timestamp": {"dtype": "float32", "shape": [1]},
                "episode_index": {"dtype": "int64", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                "next.done": {"dtype": "bool", "shape": [1]}}
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10, "features": features}))
    rows = [{"observation.state": rng.normal(size=2).astype(np.float32).tolist(), "action": [0.5], "timestamp": i / 10,
             "episode_index": 0, "frame_index": i, "next.done": i == 3} for i in range(4)]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "episode_000000.parquet")
    result = import_dataset("lerobot", root, tmp_path / "s.zarr")
    assert not Store.open(tmp_path / "s.zarr").attrs["imported_from"]["success_recorded"]
    assert set(result["skipped_keys"]) == {"observation.images.top", "timestamp", "next.done"}
    assert any("no next.reward" in w for w in result["warnings"])


def _store(path, rng):
    store = Store.create(path, env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)
    for _ in range(2):
        store.append_episode(make_episode(rng, 4), EpisodeAttrs())
    store.close()


def test_export_onto_a_directory_is_one_sentence_and_leaves_it_alone(tmp_path, rng, capsys):
    from agent.cli import main

    _store(tmp_path / "a.zarr", rng)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is a directory, which an export never replaces"):
        export_dataset("d4rl", tmp_path / "a.zarr", tmp_path / "dir")
    assert main(["export", "--to", "d4rl", str(tmp_path / "a.zarr"), str(tmp_path / "dir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "directory" in err
    assert (tmp_path / "dir" / "keep.txt").read_text() == "mine" and len(list((tmp_path / "dir").iterdir())) == 1
    # onto the store itself: refused too, and the store stays readable
    assert main(["export", "--to", "d4rl", str(tmp_path / "a.zarr"), str(tmp_path / "a.zarr")]) == 2
    assert Store.open(tmp_path / "a.zarr").num_episodes == 2


def test_cli_import_prints_warnings_and_reads_obs_keys(tmp_path, rng, capsys):
    from agent.cli import main

    _replay_buffer(tmp_path / "rb.zarr", rng)
    code = main(["import", "--from", "zarr_v2", str(tmp_path / "rb.zarr"), "--out", str(tmp_path / "s.zarr"),
                 "--obs-keys", "state, n_contacts", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["obs_keys"] == ["state", "n_contacts"] and result["obs_dim"] == 6
    assert result["skipped_keys"]["data/stage"] == "not in --obs-keys"
    code = main(["import", "--from", "zarr_v2", str(tmp_path / "rb.zarr"), "--out", str(tmp_path / "s.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and err.count("\n") == 1


_NO_H5PY = """
import json, sys
sys.modules["h5py"] = None  # as if the io extra were not installed
from agent.cli import main
zarr_args, d4rl_args = json.loads(sys.argv[1])
if main(zarr_args) != 0:
    sys.exit(99)
sys.exit(main(d4rl_args))
"""


def test_without_h5py_zarr_v2_works_and_d4rl_names_the_extra(tmp_path, rng):
    _replay_buffer(tmp_path / "rb.zarr", rng)
    obs = rng.normal(size=(6, 3)).astype(np.float32)
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=np.r_[np.zeros(5, bool), True], next_obs=obs)
    runs = [["import", "--from", "zarr_v2", str(tmp_path / "rb.zarr"), "--out", str(tmp_path / "s.zarr"), "--json"],
            ["import", "--from", "d4rl", str(tmp_path / "d.hdf5"), "--out", str(tmp_path / "t.zarr")]]
    # one process for both: its exit code and stderr are the d4rl import's once the zarr import succeeded
    proc = subprocess.run([sys.executable, "-c", _NO_H5PY, json.dumps(runs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["episodes"] == 2 and Store.open(tmp_path / "s.zarr").num_episodes == 2
    assert "agent[io]" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("agent import: error: ") and ". " not in proc.stderr
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize("missing,args", [
    ("h5py", ("import", "--from", "robomimic", "{d}/d.hdf5", "--out", "{d}/t.zarr")),
    ("h5py", ("import", "--from", "minari", "{d}/pend", "--out", "{d}/t.zarr")),
    ("pyarrow.parquet", ("import", "--from", "lerobot", "{d}/ds", "--out", "{d}/t.zarr")),
    ("h5py", ("export", "--to", "d4rl", "{d}/a.zarr", "{d}/a.hdf5")),
])
def test_each_format_names_its_missing_extra_in_one_sentence(tmp_path, rng, capsys, monkeypatch, missing, args):
    from agent.cli import main

    obs = rng.normal(size=(6, 3)).astype(np.float32)
    _d4rl(tmp_path / "d.hdf5", obs, timeouts=np.r_[np.zeros(5, bool), True], next_obs=obs)
    _minari_hdf5(tmp_path / "pend", _pendulum_episodes(rng), SPEC)
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "features": {
        "action": {"dtype": "float32", "shape": [1]}, "observation.state": {"dtype": "float32", "shape": [2]}}}))
    _store(tmp_path / "a.zarr", rng)
    monkeypatch.setitem(sys.modules, missing, None)
    code = main([a.format(d=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and "agent[io]" in err and err.count("\n") == 1, err
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "a.hdf5").exists()
