"""Stores on object storage: an S3-compatible server (moto) in its own process on loopback,
reached through s3fs with the standard AWS_* environment variables."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from agent.store import Store, load_transitions
from helpers import ACT_SPACE, OBS_SPACE, make_episode

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the moto S3 server did not start within 30 s")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_server, monkeypatch, request):
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_server}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = f"b-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # each test's environment, not a cached client's
    return name


def create(url):
    return Store.create(url, env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE)


def test_a_store_written_to_s3_reads_back_like_a_local_one(bucket, tmp_path, rng):
    url = f"s3://{bucket}/demo.zarr"
    eps = [make_episode(rng, n) for n in (5, 700, 3)]  # 700 rows cross a chunk boundary
    remote, local = create(url), Store.create(tmp_path / "s.zarr", env_id="test/none-v0", observation_space=OBS_SPACE,
                                              action_space=ACT_SPACE)
    for ep in eps:
        remote.append_episode(ep)
        local.append_episode(ep)
    remote.close()
    local.close()
    again = Store.open(url)
    assert (again.num_episodes, again.num_steps) == (3, 708)
    a, b = load_transitions(again), load_transitions(Store.open(tmp_path / "s.zarr"))
    for key in ("obs", "action", "reward"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert again.commit_record["stats"] == Store.open(tmp_path / "s.zarr").commit_record["stats"]
    appended = Store.open(url, mode="a")  # appends continue after a reopen
    appended.append_episode(eps[0])
    appended.close()
    assert Store.open(url).num_episodes == 4
    with pytest.raises(ValueError, match="objects already exist under it"):
        create(url)


def test_one_writer_at_a_time_and_a_killed_writers_lease_expires(bucket, rng):
    from agent.store.durable import UrlLocation

    url = f"s3://{bucket}/lease.zarr"
    first = create(url)
    first.append_episode(make_episode(rng, 4))
    with pytest.raises(ValueError, match="already open for writing by pid"):
        Store.open(url, mode="a")
    # a writer killed without closing leaves its lease; a short one is taken over once it has expired
    first._lock.ttl = 0.5
    first._lock.renew()
    time.sleep(0.8)
    second = Store.open(url, mode="a", lock=UrlLocation(url, writable=True).writer_lock().acquire())
    assert second._lock.stale_holder["pid"] == os.getpid()
    second.append_episode(make_episode(rng, 6))
    # the first writer wakes up: it must stop before writing a row, and its close must not trim the other's arrays
    with pytest.raises(ValueError, match="lease expired and another writer took the store over"):
        first.append_episode(make_episode(rng, 9))
    second.close()
    first.close()
    final = Store.open(url)
    assert (final.num_episodes, final.num_steps) == (2, 10)
    Store.open(url, mode="a").close()  # a closed writer releases its lease at once


def test_a_torn_append_on_s3_is_invisible_and_the_next_writer_appends_after_the_commit(bucket, rng, monkeypatch):
    url = f"s3://{bucket}/torn.zarr"
    store = create(url)
    kept = make_episode(rng, 5)
    store.append_episode(kept)

    def killed(record):
        raise KeyboardInterrupt  # the writer dies after its rows are written, before the commit record

    monkeypatch.setattr(store, "_write_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append_episode(make_episode(rng, 600))
    monkeypatch.undo()
    store._lock.release()  # what an expired lease amounts to, without the wait
    reader = Store.open(url)
    assert (reader.num_episodes, reader.num_steps) == (1, 5)
    np.testing.assert_array_equal(reader.episode(0)["obs"], kept["obs"])
    writer = Store.open(url, mode="a")
    nxt = make_episode(rng, 7)
    writer.append_episode(nxt)
    writer.close()
    np.testing.assert_array_equal(Store.open(url).episode(1)["obs"], nxt["obs"])


def test_collect_writes_straight_to_s3(bucket):
    from agent.collect import CollectConfig, collect

    url = f"s3://{bucket}/reach.zarr"
    collect(CollectConfig(env="sims/ArmReach-v0", policy="random", episodes=2, out=url), progress=False)
    collect(CollectConfig(env="sims/ArmReach-v0", policy="random", episodes=1, out=url), progress=False)  # appends
    store = Store.open(url)
    assert store.num_episodes == 3 and store.sim_state_keys()


def test_urls_without_conditional_writes_stay_read_only():
    with pytest.raises(ValueError, match="writing needs s3://"):
        Store.open("memory://bucket/s.zarr", mode="a")
