"""The offline loop across algorithms: device-resident sampling, refusing foreign checkpoints."""
import numpy as np
import pytest
import torch

from agent.collect import CollectConfig, collect
from agent.config import from_dict
from agent.learners.calql import returns_to_go
from agent.logger import read_metrics
from agent.pretrain import BatchSource, PretrainConfig, pretrain
from agent.store import Store, load_transitions

ENV = "sims/ArmReach-v0"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reach.zarr"
    collect(CollectConfig(env=ENV, policy="scripted", epsilon=0.5, episodes=4, seed=0, out=str(path)), progress=False)
    return path


def tiny(store, out, algo, steps=20, **extra):
    sizes = {"hidden_dims": [16, 16]}
    return from_dict(PretrainConfig, {"data": str(store), "out": str(out), "algo": algo, "steps": steps,
                                      "batch_size": 16, "log_every": 5, "checkpoint_every": 10, "eval_episodes": 0,
                                      algo: sizes, **extra})


@pytest.mark.parametrize("algo", ["iql", "riql", "cql", "calql", "td3bc", "prdc", "sacn"])
def test_every_offline_algorithm_trains_and_resumes_exactly(store, tmp_path, algo):
    pretrain(tiny(store, tmp_path / "full", algo), progress=False)
    pretrain(tiny(store, tmp_path / "part", algo, steps=10), progress=False)
    pretrain(tiny(store, tmp_path / "part", algo), resume=True, progress=False)
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in full] == [m["step"] for m in part] == [5, 10, 15, 20]
    for a, b in zip(full, part):
        assert a == b
    assert all(np.isfinite(v) for m in full for k, v in m.items())


def test_resuming_with_another_algorithm_is_refused(store, tmp_path):
    pretrain(tiny(store, tmp_path / "r", "iql", steps=10), progress=False)
    with pytest.raises(ValueError, match="checkpoint is for 'iql', not 'cql'"):
        pretrain(tiny(store, tmp_path / "r", "cql"), resume=True, progress=False)


def test_device_resident_batches_match_the_cache(store):
    cache = load_transitions(Store.open(store))
    extras = {"mc_return": returns_to_go(cache.reward, cache.episode_ends, cache.terminated, 0.99)}
    source = BatchSource(cache, extras, "cpu", np.random.default_rng(0), on_device=True)
    batch = source.sample(64)
    assert batch["obs"].shape == (64, cache.obs_table.shape[1]) and batch["mc_return"].shape == (64,)
    # every drawn row is a real transition: next_obs follows obs within its episode
    rows = {tuple(np.round(o, 5)) : i for i, o in enumerate(cache.obs)}
    for o, n in zip(batch["obs"].numpy()[:16], batch["next_obs"].numpy()[:16]):
        i = rows[tuple(np.round(o, 5))]
        np.testing.assert_array_equal(n, cache.obs_table[cache.next_index[i]])
    state = source.state()
    again = source.sample(8)
    source.load_state(state)
    torch.testing.assert_close(source.sample(8), again)
