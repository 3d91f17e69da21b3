"""The fine-tuning loop: every algorithm runs a few hundred steps on ArmReach, WSRL's
warm-up and data rules, H2O's dynamics ratio, kill-and-resume, the report."""
import json

import numpy as np
import pytest
import torch

from agent.finetune import FinetuneConfig, finetune
from agent.logger import read_metrics
from agent.store import Store
from helpers import pretrained_calql

ENV = "sims/ArmReach-v0"  # 50-step episodes, 28-d observations, 7-d actions
ALGOS = ["wsrl", "ro2o", "h2o", "darc", "calql", "rlpd", "sac"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny noisy-expert dataset and a Cal-QL run (10 critics + LayerNorm) on it."""
    root = tmp_path_factory.mktemp("finetune")
    return {**pretrained_calql(root, episodes=8, steps=60, batch_size=32, hidden_dims=[32, 32], num_critics=10,
                               layer_norm=True, log_every=30), "root": root}


def tiny(algo: str, pretrained: dict, out, **overrides) -> FinetuneConfig:
    cfg = FinetuneConfig(algo=algo, env=ENV, data=pretrained["data"], out=str(out), steps=300, warmup_steps=100, utd=2,
                         batch_size=32, eval_every=150, eval_episodes=1, checkpoint_every=100, log_every=50)
    if algo in ("wsrl", "calql"):
        cfg.init = pretrained["init"]
    if algo in ("h2o", "darc"):
        cfg.real_data, cfg.sim_gap = pretrained["data"], ["gravity_scale=3.0"]
        getattr(cfg, algo).discriminator_dims = [32]
        cfg.h2o.model_dims = [32]
    if algo == "ro2o":
        cfg.offline_steps, cfg.ro2o.num_perturbations = 20, 4
    for name in ("ro2o", "h2o", "darc", "rlpd", "sac"):
        getattr(cfg, name).hidden_dims = [32, 32]
    cfg.calql.num_sampled_actions = 2
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.parametrize("algo", ALGOS)
def test_every_loop_runs_a_few_hundred_steps(algo, pretrained, tmp_path):
    summary = finetune(tiny(algo, pretrained, tmp_path / algo), progress=False)
    assert summary["env_steps"] == 300 and summary["online_episodes"] == 6
    assert summary["updates"] == 200 and summary["first_update_step"] == 101
    store = Store.open(tmp_path / algo / "online.zarr")
    attrs = store.episode_attrs()
    assert store.num_episodes == 6 and set(attrs["source"]) == {"online"}
    assert all(str(c).startswith(f"{algo}-") for c in attrs["checkpoint"])  # lineage: run id @ step
    rows = read_metrics(tmp_path / algo)
    evals = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in evals] == [0, 150, 300]  # step 0: the offline start
    assert all(k in evals[-1] for k in ("eval/q_calibration_gap_bootstrapped", "eval/heldout_td_error", "eval/normalized_score",
                                        "eval/ensemble_std_visited"))
    train = [r for r in rows if "train/critic_loss" in r]
    assert train and all(np.isfinite(r["train/critic_loss"]) for r in train)
    assert all(k in train[-1] for k in ("train/alpha", "train/updates_per_s"))
    if algo == "h2o":
        assert all(k in train[-1] for k in ("train/ratio_acc", "train/ratio_unsure", "train/w_p50", "train/omega_x_batch_p90"))
    if algo == "darc":
        assert all(k in train[-1] for k in ("train/disc_sas_acc", "train/reward_correction"))


def test_wsrl_makes_no_update_during_warmup_and_never_samples_offline_data(pretrained, tmp_path):
    def no_offline(source):
        assert source.offline is not None  # held for the TD diagnostic only

        def refuse(idx):
            raise AssertionError("WSRL with offline_ratio 0 sampled offline data")
        source.offline.gather = refuse
        return source

    cfg = tiny("wsrl", pretrained, tmp_path / "wsrl", warmup_steps=150, offline_ratio=0.0, steps=250)
    summary = finetune(cfg, progress=False, make_source=no_offline)
    assert summary["offline_draws"] == 0
    assert summary["first_update_step"] == 151 and summary["updates"] == 100
    # during warm-up the networks are the pretrained ones: the loaded actor acts
    train = [r for r in read_metrics(tmp_path / "wsrl") if "train/critic_loss" in r]
    assert min(r["step"] for r in train) > 150


def test_calql_baseline_draws_half_of_each_batch_offline(pretrained, tmp_path):
    summary = finetune(tiny("calql", pretrained, tmp_path / "c", steps=150), progress=False)
    assert summary["offline_draws"] == summary["updates"] * 2 * 16  # K = 2 minibatches of 16 offline rows


class Kill(Exception):
    """Raised from inside the loop to stop a run the way a crash would."""


def test_killed_and_resumed_run_continues_from_the_same_step_with_the_buffer_intact(pretrained, tmp_path):
    seen = {}

    def killer(source):
        sample = source.sample

        def sample_then_die(k, b, offline_only=False):
            if source.online.size >= 250:  # after the checkpoint at step 200, mid-way to 300
                raise Kill()
            return sample(k, b, offline_only)
        source.sample = sample_then_die
        return source

    def watch(source):
        sample = source.sample

        def first_sample(k, b, offline_only=False):
            seen.setdefault("buffer", source.online.size)
            return sample(k, b, offline_only)
        source.sample = first_sample
        return source

    cfg = tiny("wsrl", pretrained, tmp_path / "killed")
    with pytest.raises(Kill):
        finetune(cfg, progress=False, make_source=killer)
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 200 and len(ckpt["loop"]["episode_rows"]) == 4
    summary = finetune(cfg, resume=True, progress=False, make_source=watch)
    assert seen["buffer"] == 200  # the four checkpointed episodes, not the one appended after it
    assert summary["env_steps"] == 300 and summary["online_episodes"] == 6

    straight = finetune(tiny("wsrl", pretrained, tmp_path / "straight"), progress=False)
    resumed_ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "latest.pt", weights_only=True)
    straight_ckpt = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    assert resumed_ckpt["loop"]["updates"] == straight_ckpt["loop"]["updates"] == straight["updates"]
    for name, value in straight_ckpt["learner"]["actor"].items():
        torch.testing.assert_close(resumed_ckpt["learner"]["actor"][name], value)  # the same run, step for step
    # the killed run's extra episode stays in the store (append-only), outside the buffer
    assert Store.open(tmp_path / "killed" / "online.zarr").num_episodes == 7


def _transitions(env_kwargs: dict, episodes: int, seed: int):
    """Random-action transitions from episodes reset with seeds 0..episodes-1 (the same
    goals in every variant, so that only the dynamics can differ); actions from ``seed``."""
    from agent.envs import make_env

    env = make_env(ENV, **env_kwargs)
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("obs", "action", "next_obs")}
    for i in range(episodes):
        obs, _ = env.reset(seed=i)
        done = False
        while not done:
            action = rng.uniform(-1, 1, 7).astype(np.float32)
            next_obs, _, terminated, truncated, _ = env.step(action)
            for k, v in (("obs", obs), ("action", action), ("next_obs", next_obs)):
                rows[k].append(np.asarray(v, np.float32))
            obs, done = next_obs, terminated or truncated
    env.close()
    return {k: torch.as_tensor(np.stack(v)) for k, v in rows.items()}


@pytest.mark.parametrize("sim_gap", [{}, {"gravity_scale": 3.0}])
def test_h2o_dynamics_ratio_is_one_without_a_gap_and_departs_from_one_with_it(sim_gap):
    from agent.learners.common import step
    from agent.learners.h2o import H2O, H2OConfig

    torch.manual_seed(0)
    real, sim = _transitions({}, 80, 100), _transitions(sim_gap, 80, 5000)
    n = real["obs"].shape[0]
    train = int(0.8 * n)  # the last 16 episodes are held out
    learner = H2O(H2OConfig(ratio="classifier", hidden_dims=[32], discriminator_dims=[64, 64]), 28, 7)
    obs = real["obs"].numpy()
    learner.fit_normalizer(obs.mean(0), obs.var(0))
    norm = learner.normalizer
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        i, j = torch.randint(0, train, (128,), generator=g), torch.randint(0, train, (128,), generator=g)
        batch = {k: torch.cat([real[k][i], sim[k][j]]) for k in real}
        batch = {**batch, "obs": norm(batch["obs"]), "next_obs": norm(batch["next_obs"]),
                 "is_real": torch.arange(256) < 128}
        loss, _ = learner.discriminators.loss(batch)
        step(learner.disc_opt, loss, list(learner.discriminators.parameters()))
    held = slice(train, n)
    on_sim = learner.dynamics_ratio(sim["obs"][held], sim["action"][held], sim["next_obs"][held]).log().mean().item()
    on_real = learner.dynamics_ratio(real["obs"][held], real["action"][held], real["next_obs"][held]).log().mean().item()
    if sim_gap:  # measured: sim -0.67, real +0.72
        assert on_sim < -0.35 and on_real - on_sim > 0.8, f"mean log ratio on sim {on_sim:.2f}, on real {on_real:.2f}"
    else:  # measured: sim -0.01, real +0.05
        assert abs(on_sim) < 0.25 and abs(on_real) < 0.25, f"mean log ratio on sim {on_sim:.2f}, on real {on_real:.2f}"


def test_report_draws_curves_and_a_table(pretrained, tmp_path):
    from agent.finetune.report import report

    runs = []
    for algo, seed in (("sac", 0), ("sac", 1), ("wsrl", 0)):
        out = tmp_path / f"{algo}-{seed}"
        finetune(tiny(algo, pretrained, out, steps=150, seed=seed, eval_every=50, checkpoint_every=150), progress=False)
        runs.append(str(out))
    result = report(runs, str(tmp_path / "report"))
    table = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "curves.png").stat().st_size > 1000
    assert "| sac |" in table and "| wsrl |" in table
    assert json.loads((tmp_path / "report" / "report.json").read_text())["algos"]["sac"]["seeds"] == 2
    assert result["algos"]["wsrl"]["offline_start"] is not None
