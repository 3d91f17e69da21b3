"""Atomic commits, the writer lock, fsck, and kill-at-random-moments trials."""
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from agent.store import Store, fsck, load_transitions
from agent.store.crashcheck import run_trials
from helpers import ACT_SPACE, OBS_SPACE, make_episode


def new_store(path, **kw):
    return Store.create(path, env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE, **kw)


def test_append_is_atomic_under_kill(tmp_path):
    results = run_trials(tmp_path / "crash.zarr", trials=3, seed=3, max_delay_s=0.8)
    for r in results:
        assert r["opens"] and r["identical"] and r["fsck_clean_after"] and not r["fsck_problems"], r
    assert results[-1]["episodes"] > 0


def test_append_is_atomic_under_kill_on_a_dm_control_store_with_zero_width_state(tmp_path):
    # cheetah randomizes no model rows: its store has a zero-width sim_state/task, which has no chunk files
    path = tmp_path / "cheetah.zarr"
    results = run_trials(path, trials=3, seed=5, max_delay_s=0.8, env_id="dmc/cheetah-run-v0")
    for r in results:
        assert r["opens"] and r["identical"] and r["fsck_clean_after"] and not r["fsck_problems"], r
    assert any(r["torn"] for r in results)  # killed mid-append: fsck had rows past the commit to trim
    store = Store.open(path)
    assert store.num_episodes > 0 and store.array_specs["data/sim_state/task"]["row"] == [0]
    assert store.read("data/sim_state/task").shape == (store.num_steps, 0)


def test_second_writer_is_refused_and_readers_are_not(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    store.append_episode(make_episode(rng, 5))
    with pytest.raises(ValueError, match=r"already open for writing by pid \d+ on host"):
        Store.open(tmp_path / "s.zarr", mode="a")
    reader = Store.open(tmp_path / "s.zarr")
    store.append_episode(make_episode(rng, 4))
    assert reader.num_steps == 5  # a reader keeps the committed prefix it opened
    assert Store.open(tmp_path / "s.zarr").num_steps == 9
    store.close()
    with Store.open(tmp_path / "s.zarr", mode="a") as again:
        again.append_episode(make_episode(rng, 3))
    assert Store.open(tmp_path / "s.zarr").num_episodes == 3


def test_second_writer_in_another_process_is_refused(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    code = ("import sys\nfrom agent.store import Store\n"
            "try:\n    Store.open(sys.argv[1], mode='a')\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.zarr")], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
    assert f"pid {os.getpid()}" in out and "one writer at a time" in out
    store.close()


def test_stale_lock_from_a_dead_process_is_detected(tmp_path, rng):
    new_store(tmp_path / "s.zarr").close()
    # a writer that died without closing leaves its record behind, but not its flock
    (tmp_path / "s.zarr" / "writer.lock").write_text('{"pid": 999999999, "host": "%s", "since": "then"}' % os.uname().nodename)
    with Store.open(tmp_path / "s.zarr", mode="a") as store:
        assert store.stale_lock["pid"] == 999999999
        store.append_episode(make_episode(rng, 3))


def test_fsck_trims_uncommitted_tails_and_partial_files(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    ep = make_episode(rng, 6)
    store.append_episode(ep)
    store.close()
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group["data/obs"].resize((40, 3))
    group["data/obs"][6:40] = 7.0
    (tmp_path / "s.zarr" / "data" / "obs" / "zarr.json.1234.partial").write_bytes(b"torn")
    report = fsck(tmp_path / "s.zarr", repair=False)
    assert not report["clean"] and report["tails"] == {"data/obs": 34} and report["partial_files"]
    report = fsck(tmp_path / "s.zarr")
    assert report["trimmed"] == {"data/obs": 34} and len(report["removed_partial_files"]) == 1
    assert not report["problems"]
    assert fsck(tmp_path / "s.zarr")["clean"]
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["data/obs"].shape == (6, 3)
    np.testing.assert_array_equal(Store.open(tmp_path / "s.zarr").episode(0)["obs"], ep["obs"])


def test_fsck_reports_damage_it_cannot_repair(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    store.append_episode(make_episode(rng, 6))
    store.close()
    chunk = tmp_path / "s.zarr" / "data" / "action" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-9])
    report = fsck(tmp_path / "s.zarr")
    assert not report["clean"] and any("chunk 0 of data/action" in p for p in report["problems"])


def test_commit_record_holds_normalization_stats_of_the_committed_prefix(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    eps = [make_episode(rng, 30) for _ in range(2)]
    for ep in eps:
        store.append_episode(ep)
    record = Store.open(tmp_path / "s.zarr").commit_record
    obs = np.concatenate([e["obs"] for e in eps]).astype(np.float64)
    assert record["stats"]["count"] == 60
    np.testing.assert_allclose(record["stats"]["obs_sum"], obs.sum(0))
    stats = load_transitions(Store.open(tmp_path / "s.zarr")).stats
    np.testing.assert_allclose(stats["obs_mean"], obs.mean(0), rtol=1e-6)


def test_refused_append_leaves_every_file_as_it_was(tmp_path, rng):
    store = new_store(tmp_path / "s.zarr")
    store.append_episode(make_episode(rng, 5))

    def snapshot():
        root = tmp_path / "s.zarr"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "writer.lock"}

    before = snapshot()
    bad = make_episode(rng, 5)
    bad["reward"][3] = np.inf
    with pytest.raises(ValueError, match="episode 1 .* reward holds a non-finite value"):
        store.append_episode(bad)
    bad = make_episode(rng, 5)
    bad["obs"] = bad["obs"].astype(object)
    with pytest.raises(ValueError, match="obs has object dtype"):
        store.append_episode(bad)
    with pytest.raises(ValueError, match="unknown key"):
        store.append_episode({**make_episode(rng, 5), "extra": np.zeros(5)})
    assert snapshot() == before
