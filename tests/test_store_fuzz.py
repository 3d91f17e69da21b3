"""Damaged stores: every read either raises one clear ValueError or returns exactly
what was written; never a traceback from inside zarr, never unpickling."""
import json
import pickle
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.store import Store, load_transitions
from helpers import ACT_SPACE, OBS_SPACE, make_episode

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "base.zarr"
    rng = np.random.default_rng(5)
    store = Store.create(path, env_id="test/none-v0", observation_space=OBS_SPACE, action_space=ACT_SPACE,
                         sim_state_dims={"qpos": 2})
    episodes = []
    for i in range(3):
        ep = make_episode(rng, 300 + 250 * i, "terminated" if i == 1 else "truncated")
        ep["sim_state/qpos"] = rng.normal(size=(ep["obs"].shape[0], 2))
        store.append_episode(ep)
        episodes.append(ep)
    store.close()
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "writer.lock")
    return path, episodes, files


def read_everything(path):
    store = Store.open(path)
    cache = load_transitions(store)
    return store, cache, [store.episode(i) for i in range(store.num_episodes)]


def check(path, episodes):
    """Either a clear ValueError, or data identical to what was written."""
    try:
        store, cache, back = read_everything(path)
    except ValueError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip() and len(message) < 600, message
        return "refused"
    assert len(back) == len(episodes)
    for got, want in zip(back, episodes):
        for key in want:
            assert got[key].dtype == np.asarray(want[key]).dtype and np.array_equal(got[key], want[key]), key
    np.testing.assert_array_equal(cache.obs, np.concatenate([e["obs"] for e in episodes]))
    return "identical"


def fresh_copy(original, tmp_path_factory):
    path, _, _ = original
    target = tmp_path_factory.mktemp("case") / "s.zarr"
    shutil.copytree(path, target)
    return target


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=6) | st.sampled_from(["object", "|O", "float64", "int32", "<f8", "pickle"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
                           max_leaves=4)


def leaf_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaf_paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from leaf_paths(v, (*prefix, i))
    yield prefix


@SETTINGS
@given(data=st.data())
def test_corrupted_metadata_is_refused_or_harmless(original, tmp_path_factory, data):
    path = fresh_copy(original, tmp_path_factory)
    metas = [f for f in original[2] if f.endswith("zarr.json")]
    name = data.draw(st.sampled_from(metas), label="file")
    doc = json.loads((path / name).read_text())
    paths = [p for p in leaf_paths(doc) if p]
    where = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(json_values, label="value")
    node = doc
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    (path / name).write_text(json.dumps(doc))
    check(path, original[1])


@SETTINGS
@given(data=st.data())
def test_damaged_bytes_are_refused_or_harmless(original, tmp_path_factory, data):
    path = fresh_copy(original, tmp_path_factory)
    name = data.draw(st.sampled_from(original[2]), label="file")
    raw = (path / name).read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "delete", "empty"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")]
    elif how == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255), label="bits")]) + raw[at + 1:]
    elif how == "empty":
        raw = b""
    if how == "delete":
        (path / name).unlink()
    else:
        (path / name).write_bytes(raw)
    outcome = check(path, original[1])
    if how in ("delete", "empty", "truncate") and "/c/" in name:
        assert outcome == "refused"


@pytest.mark.parametrize("dtype", ["float64", "int32", "bool", "object", "|O", "string"])
def test_wrong_or_object_dtypes_are_refused(original, tmp_path_factory, dtype):
    path = fresh_copy(original, tmp_path_factory)
    meta_path = path / "data" / "obs" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["data_type"] = dtype
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="data/obs"):
        read_everything(path)


def test_pickle_payloads_are_never_loaded(original, tmp_path_factory, monkeypatch):
    path = fresh_copy(original, tmp_path_factory)
    meta_path = path / "data" / "reward" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [{"name": "vlen-bytes"}, {"name": "pickle"}]
    meta_path.write_text(json.dumps(meta))
    (path / "data" / "reward" / "c" / "0").write_bytes(pickle.dumps(object()))

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    with pytest.raises(ValueError, match="codecs"):
        read_everything(path)
