"""``--algo auto`` and IQL fine-tuning: the regime decision on synthetic returns (policy
better, data better, a tie), the branches each start takes, and short runs on ArmReach
that keep or drop the offline data as decided."""
import json

import numpy as np
import pytest

from agent.finetune import FinetuneConfig, finetune
from agent.finetune.regime import DECISION_FILE, BRANCHES, choose, compare, mean_ci
from agent.logger import read_metrics
from agent.store import Store
from helpers import pretrained_calql, pretrained_iql

ENV = "sims/ArmReach-v0"


def test_a_policy_clearly_better_than_its_data_drops_the_data():
    rng = np.random.default_rng(0)
    c = compare(rng.normal(60, 5, 20), rng.normal(30, 10, 200))
    assert c["policy_better"] and 25 < c["difference"] < 35
    lo, hi = c["difference_ci"]
    assert 0 < lo < c["difference"] < hi
    assert choose("calql", c) == {**choose("calql", c), "branch": "drop", "algo": "wsrl", "offline_ratio": 0.0}
    assert choose("iql", c)["algo"] == "iql" and choose("iql", c)["offline_ratio"] == 0.0


def test_data_better_than_the_policy_keeps_the_data():
    rng = np.random.default_rng(1)
    c = compare(rng.normal(25, 5, 20), rng.normal(33, 10, 200))
    assert not c["policy_better"] and c["difference_ci"][1] < 0
    assert {k: choose("calql", c)[k] for k in ("branch", "algo", "offline_ratio")} == {"branch": "keep", "algo": "calql",
                                                                                      "offline_ratio": 0.5}
    assert choose("iql", c)["offline_ratio"] == 0.5 and choose("cql", c)["algo"] == "wsrl"


def test_a_tie_keeps_the_data_and_a_small_lead_inside_the_noise_is_a_tie():
    rng = np.random.default_rng(2)
    tie = compare(rng.normal(40, 10, 20), rng.normal(40, 10, 200))
    assert tie["difference_ci"][0] < 0 < tie["difference_ci"][1] and not tie["policy_better"]
    # a 3-point lead over 20 noisy episodes is not "clearly better"
    lead = compare(rng.normal(43, 15, 20), rng.normal(40, 15, 200))
    assert not lead["policy_better"] and choose("calql", lead)["branch"] == "keep"


def test_the_margin_is_applied_to_the_lower_end_of_the_interval():
    policy, data = np.full(20, 50.0), np.full(50, 40.0)  # no noise: the interval is the point
    assert compare(policy, data)["difference_ci"] == [10.0, 10.0]
    assert compare(policy, data, margin=9.5)["policy_better"] and not compare(policy, data, margin=10.0)["policy_better"]


def test_the_interval_covers_the_true_difference_at_its_level():
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(200):
        c = compare(rng.normal(5, 10, 20), rng.normal(0, 10, 100), resamples=2000, seed=i)
        covered += c["difference_ci"][0] <= 5 <= c["difference_ci"][1]
    assert 0.88 <= covered / 200 <= 0.99  # percentile bootstrap at 95%, slightly narrow for n = 20
    mean, lo, hi = mean_ci(np.arange(10.0))
    assert mean == 4.5 and lo < 4.5 < hi


def test_a_forced_branch_wins_and_says_so():
    c = compare(np.full(5, 90.0), np.full(5, 10.0))
    forced = choose("calql", c, forced="keep")
    assert forced["branch"] == "keep" and forced["forced"] and "forced by --auto.branch keep" in forced["reason"]
    with pytest.raises(ValueError, match="fine-tunes a .* run, but --init holds a 'bc' run"):
        choose("bc", c)


def test_the_branch_table_is_the_documented_one():
    assert BRANCHES == {
        ("calql", "drop"): ("wsrl", 0.0), ("calql", "keep"): ("calql", 0.5),
        ("cql", "drop"): ("wsrl", 0.0), ("cql", "keep"): ("wsrl", 0.5),
        ("sacn", "drop"): ("wsrl", 0.0), ("sacn", "keep"): ("wsrl", 0.5),
        ("iql", "drop"): ("iql", 0.0), ("iql", "keep"): ("iql", 0.5)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("regime")
    calql = pretrained_calql(root, episodes=8, steps=40, batch_size=32, hidden_dims=[32, 32], num_critics=2, layer_norm=True)
    return {**calql, "iql": pretrained_iql(root, calql["data"], steps=40, batch_size=32, hidden_dims=[32, 32])}


def tiny(runs, out, algo="auto", init="iql", **overrides) -> FinetuneConfig:
    cfg = FinetuneConfig(algo=algo, env=ENV, init=runs[init], data=runs["data"], out=str(out), steps=200, warmup_steps=50,
                         utd=1, batch_size=32, eval_every=100, eval_episodes=1, checkpoint_every=100, log_every=50)
    cfg.auto.episodes = 3
    cfg.calql.num_sampled_actions = 2
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_iql_finetuning_appends_online_data_and_keeps_sampling_offline_data(runs, tmp_path):
    batches = []

    def watch(source):
        sample = source.sample

        def record(k, b, offline_only=False):
            batch = sample(k, b, offline_only)
            batches.append((source.online.size, batch))
            return batch
        source.sample = record
        return source

    summary = finetune(tiny(runs, tmp_path / "iql", algo="iql", calibration_horizon=80), progress=False, make_source=watch)
    assert summary["updates"] == 150 and summary["offline_draws"] == 150 * 16  # half of each 32-row batch
    assert Store.open(tmp_path / "iql" / "online.zarr").num_episodes == 4  # 50-step episodes appended as they end
    online_size, last = batches[-1]
    assert online_size == 200  # the fourth episode ends at step 200, before that step's update
    offline = Store.open(runs["data"]).read("data/obs")
    in_offline = [any(np.array_equal(o, row) for row in offline) for o in last["obs"]]
    assert sum(in_offline) == 16  # 16 offline rows, 16 online rows in the batch
    evals = [r for r in read_metrics(tmp_path / "iql") if "eval/q_calibration_gap_long" in r]
    assert [r["step"] for r in evals] == [0, 100, 200] and evals[0]["eval/calibration_tail_weight"] == pytest.approx(0.99 ** 30)


def refuse_to_evaluate(*args, **kwargs):
    raise AssertionError("the policy was evaluated again")


def test_auto_measures_decides_saves_logs_and_runs_the_branch(runs, tmp_path, monkeypatch):
    from agent.envs import normalized_score

    out = tmp_path / "auto"
    summary = finetune(tiny(runs, out), progress=False)
    decision = json.loads((out / DECISION_FILE).read_text())
    c = decision["comparison"]
    assert c["policy_episodes"] == 3 and c["data_episodes"] == 8
    assert decision["unit"] == "normalized score" and decision["init_algo"] == "iql"
    data = [normalized_score(ENV, r) for r in Store.open(runs["data"]).read("meta/episodes/return")]
    assert c["data_mean"] == pytest.approx(np.mean(data))  # the data's own episodes, normalized like the policy's
    # a 40-update IQL policy is far below the noisy expert's data: keep it
    assert c["policy_mean"] < c["data_mean"] and decision["branch"] == "keep" and decision["offline_ratio"] == 0.5
    assert summary["auto"]["algo"] == "iql" == summary["algo"] and summary["auto"]["branch"] == "keep"
    assert json.loads((out / "finetune_summary.json").read_text())["auto"]["branch"] == "keep"
    assert summary["offline_draws"] == 150 * 16
    assert "algo: iql" in (out / "config.yaml").read_text()  # a resume continues the chosen branch
    # resumed (as the CLI does, from config.yaml), it keeps its decision, measures nothing and logs it once
    before = (out / DECISION_FILE).read_text()
    monkeypatch.setattr("agent.evaluate.evaluate", refuse_to_evaluate)
    again = finetune(tiny(runs, out, steps=300, algo="iql", offline_ratio=0.5), resume=True, progress=False)
    assert again["env_steps"] == 300 and (out / DECISION_FILE).read_text() == before and again["auto"]["branch"] == "keep"
    logged = [r for r in read_metrics(out) if "auto/keep_data" in r]
    assert len(logged) == 1 and logged[0]["step"] == 0 and logged[0]["auto/keep_data"] == 1.0
    assert logged[0]["auto/data_mean"] == pytest.approx(np.mean(data))
    finetune(tiny(runs, out, steps=400), resume=True, progress=False)  # --algo auto --resume: the saved decision
    assert (out / DECISION_FILE).read_text() == before


def test_a_stale_decision_file_is_not_read_into_another_run(runs, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / DECISION_FILE).write_text(json.dumps({"algo": "iql", "branch": "keep", "comparison": {}}))
    summary = finetune(tiny(runs, out, algo="iql"), progress=False)
    assert "auto" not in summary and not [r for r in read_metrics(out) if "auto/keep_data" in r]


def test_auto_checks_the_step_budget_and_the_run_directory_before_measuring(runs, tmp_path, monkeypatch):
    monkeypatch.setattr("agent.evaluate.evaluate", refuse_to_evaluate)
    cfg = tiny(runs, tmp_path / "short", steps=4_000, warmup_steps=None)  # the drop branch would wait 5,000 steps
    with pytest.raises(ValueError, match=r"above the warm-up of either branch.*drop: iql waits 5000"):
        finetune(cfg, progress=False)
    (tmp_path / "used" / "checkpoints").mkdir(parents=True)
    (tmp_path / "used" / "checkpoints" / "latest.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        finetune(tiny(runs, tmp_path / "used"), progress=False)
    assert not (tmp_path / "short").exists() and not (tmp_path / "used" / DECISION_FILE).exists()


def test_the_heldout_td_error_of_iql_uses_its_value_target(runs):
    import torch

    from agent.finetune.diagnostics import heldout_td_error
    from agent.policy import load_policy

    learner = load_policy(runs["iql"], ENV, 28, 7)
    rng = np.random.default_rng(0)
    batch = {"obs": torch.randn(64, 28), "next_obs": torch.randn(64, 28), "action": torch.rand(64, 7) * 2 - 1,
             "reward": torch.rand(64), "terminated": torch.as_tensor(rng.random(64) < 0.3)}
    with torch.no_grad():  # plainly: Q_e(s, a) averaged over members against r + gamma (1 - d) V(s')
        obs, nxt = learner.normalizer(batch["obs"]), learner.normalizer(batch["next_obs"])
        y = batch["reward"] + 0.99 * (~batch["terminated"]).float() * learner.value(nxt)
        want = float(((learner.critic(obs, batch["action"]).mean(0) - y) ** 2).mean())
    assert heldout_td_error(learner, batch) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("branch,algo,draws", [("drop", "wsrl", 0), ("keep", "calql", 150 * 16)])
def test_a_forced_branch_from_a_calql_start_runs_wsrl_or_calql_5050(runs, tmp_path, branch, algo, draws):
    cfg = tiny(runs, tmp_path / branch, init="init")
    cfg.auto.branch = branch
    summary = finetune(cfg, progress=False)
    assert summary["algo"] == algo and summary["offline_draws"] == draws
    assert json.loads((tmp_path / branch / DECISION_FILE).read_text())["forced"]


def test_auto_refuses_without_init_and_with_a_set_offline_ratio_before_writing(runs, tmp_path):
    with pytest.raises(ValueError, match="pass --init RUN"):
        finetune(FinetuneConfig(algo="auto", env=ENV, data=runs["data"], out=str(tmp_path / "a")), progress=False)
    with pytest.raises(ValueError, match="chooses the offline share itself"):
        finetune(tiny(runs, tmp_path / "b", offline_ratio=0.25), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_drop_branch_waits_for_wsrls_warmup_unless_one_is_given():
    from agent.finetune.regime import _concrete

    drop = {"algo": "iql", "offline_ratio": 0.0, "branch": "drop"}
    cfg = _concrete(FinetuneConfig(algo="auto"), drop)
    assert (cfg.algo, cfg.offline_ratio, cfg.warmup_steps, cfg.warmup_policy) == ("iql", 0.0, 5_000, "policy")
    short = FinetuneConfig(algo="auto")
    short.auto.drop_warmup_steps = 300
    assert _concrete(short, drop).warmup_steps == 300
    assert _concrete(FinetuneConfig(algo="auto", warmup_steps=10), drop).warmup_steps == 10
    keep = _concrete(FinetuneConfig(algo="auto"), {"algo": "iql", "offline_ratio": 0.5, "branch": "keep"})
    assert keep.warmup_steps is None and keep.offline_ratio == 0.5  # IQL's own default: no warm-up
