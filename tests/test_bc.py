import numpy as np
import pytest
import torch

from agent.checkpoint import load_checkpoint
from agent.collect import CollectConfig, collect
from agent.learners.bc import BC, BCConfig
from agent.logger import read_metrics
from agent.pretrain import PretrainConfig, pretrain, to_tensors
from agent.store import Store, load_transitions

ENV = "dmc/reacher-hard-v0"


@pytest.fixture(scope="module")
def expert_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "expert.zarr"
    collect(CollectConfig(env=ENV, policy="scripted", noise=0.1, episodes=2, seed=0, out=str(path)), progress=False)
    return path


@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_bc_loss_falls(expert_store, head):
    cache = load_transitions(Store.open(expert_store))
    torch.manual_seed(0)
    bc = BC(BCConfig(head=head, hidden_dims=[64, 64], lr=1e-3), 6, 2)
    bc.fit_normalizer(cache.obs.mean(0), cache.obs.var(0))
    rng = np.random.default_rng(0)
    fixed = to_tensors(cache.sample(512, np.random.default_rng(1)), "cpu")

    def loss():
        with torch.no_grad():
            return float(bc.loss_fn(bc.actor, {**fixed, "obs": bc.normalizer(fixed["obs"])})[0])

    before = loss()
    for _ in range(300):
        metrics = bc.update(to_tensors(cache.sample(128, rng), "cpu"))
    assert all(isinstance(float(v), float) for v in metrics.values())
    assert loss() < before - 0.5 * abs(before) if head == "deterministic" else loss() < before - 1.0


def test_gaussian_bc_loss_matches_a_hand_computed_likelihood():
    torch.manual_seed(0)
    bc = BC(BCConfig(hidden_dims=[8]), 3, 2)
    obs = torch.randn(5, 3)
    act = torch.rand(5, 2) * 1.8 - 0.9
    mu, log_std = bc.actor.net(obs).chunk(2, -1)  # obs given as normalized
    normal = torch.distributions.Normal(torch.tanh(mu), log_std.clamp(-5, 2).exp())
    expected = normal.log_prob(act).sum(-1)
    torch.testing.assert_close(bc.actor.log_prob(obs, act), expected)


def small_cfg(store, out, steps):
    return PretrainConfig(data=str(store), out=str(out), steps=steps, batch_size=64, log_every=10,
                          checkpoint_every=50, eval_episodes=0, bc={"hidden_dims": [32, 32]} and BCConfig(hidden_dims=[32, 32]))


def test_resumed_run_matches_an_uninterrupted_one(expert_store, tmp_path):
    pretrain(small_cfg(expert_store, tmp_path / "full", 100), progress=False)
    # the "killed" run stopped after its checkpoint at step 50 and is resumed to 100
    pretrain(small_cfg(expert_store, tmp_path / "part", 50), progress=False)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "train/bc_loss": 123.0}\n')  # logged after the checkpoint, then killed
    pretrain(small_cfg(expert_store, tmp_path / "part", 100), resume=True, progress=False)
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in full] == [m["step"] for m in part]
    assert [m["train/bc_loss"] for m in full] == [m["train/bc_loss"] for m in part]
    a = load_checkpoint(tmp_path / "full")["learner"]["actor"]
    b = load_checkpoint(tmp_path / "part")["learner"]["actor"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_checkpoint_loads_weights_only_and_lists_its_parts(expert_store, tmp_path):
    pretrain(small_cfg(expert_store, tmp_path / "r", 50), progress=False)
    path = tmp_path / "r" / "checkpoints" / "latest.pt"
    ckpt = torch.load(path, weights_only=True)
    assert {"learner", "rng", "algo", "algo_config", "step", "obs_dim", "act_dim", "env_id"} <= set(ckpt)
    assert {"actor", "optimizer"} <= set(ckpt["learner"])
    assert (tmp_path / "r" / "checkpoints" / "step_00000050.pt").exists()
    assert (tmp_path / "r" / "config.yaml").exists() and list((tmp_path / "r" / "tb").iterdir())


def test_save_load_gives_identical_actions(expert_store, tmp_path):
    from agent.policy import load_policy

    pretrain(small_cfg(expert_store, tmp_path / "r", 50), progress=False)
    a = load_policy(str(tmp_path / "r"), ENV, 6, 2)
    b = load_policy(str(tmp_path / "r"), ENV, 6, 2)
    obs = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    np.testing.assert_array_equal(a.act(obs), b.act(obs))


def test_checkpoint_with_other_shapes_is_refused(expert_store, tmp_path):
    from agent.policy import load_policy

    pretrain(small_cfg(expert_store, tmp_path / "r", 50), progress=False)
    with pytest.raises(ValueError, match="trained for observations of size 6 and actions of size 2"):
        load_policy(str(tmp_path / "r"), "dmc/cheetah-run-v0", 17, 6)


def test_pretrain_refuses_to_overwrite_a_run(expert_store, tmp_path):
    pretrain(small_cfg(expert_store, tmp_path / "r", 50), progress=False)
    with pytest.raises(ValueError, match="--resume"):
        pretrain(small_cfg(expert_store, tmp_path / "r", 50), progress=False)
