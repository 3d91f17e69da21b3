"""Actor and learner in separate processes (docs/ros2.md, "Timing"): transitions reach the
store whole and with lineage, the actor acts with ever newer weights, a slow learner
lags without slowing the 50 Hz control loop, and either process dying or SIGINT stops
the other cleanly with one line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.checkpoint import load_checkpoint
from agent.collect import config_hash
from agent.envs import make_env
from agent.finetune import FinetuneConfig, finetune
from agent.finetune.actor_learner import ActorDied, TickClock
from agent.logger import read_metrics
from agent.store import Store

ENV = "sims/ArmReach-v0"  # 50-step episodes, 28-d observations, 7-d actions
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(out, **overrides) -> FinetuneConfig:
    """SAC from scratch with 32-wide nets, 50 Hz, weights pushed every 0.3 s."""
    cfg = FinetuneConfig(algo="sac", env=ENV, out=str(out), steps=300, warmup_steps=100, utd=1, batch_size=32,
                         eval_every=150, eval_episodes=1, checkpoint_every=100, log_every=50, actor_learner=True,
                         control_rate=50.0, weight_push_seconds=0.3)
    cfg.sac.hidden_dims = [32, 32]
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def cli(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "agent.cli", "finetune", "--algo", "sac", "--env", ENV, "--out", str(out),
            "--actor-learner", "--control-rate", "50", "--sac.hidden-dims", "32,32", "--batch-size", "32",
            "--warmup-steps", "60", "--eval-episodes", "0", "--log-every", "50", "--checkpoint-every", "50", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_episodes(out: Path, n: int, proc: subprocess.Popen, timeout: float = 45.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sum("train_episode/return" in r for r in read_metrics(out)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"no {n} episodes within {timeout} s")


def actor_pid(parent: int) -> int:
    """The parent's child that runs the actor (Linux /proc)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if "actor_entry" in Path(f"/proc/{pid}/cmdline").read_text():
                return int(pid)
    raise AssertionError("no actor process")


def gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True  # exited, waiting to be reaped
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_transitions_land_in_the_store_with_lineage_and_weight_versions_increase(tmp_path):
    cfg = tiny(tmp_path / "run")
    summary = finetune(cfg, progress=False)
    assert summary["env_steps"] == 300 and summary["online_episodes"] == 6 and summary["dropped_episodes"] == 0
    assert summary["actor"]["stop_reason"] == "budget" and summary["actor"]["exit_code"] == 0
    assert summary["actor"]["dropped"] == {} and summary["first_update_step"] > 100

    store = Store.open(tmp_path / "run" / "online.zarr")
    attrs = store.episode_attrs()
    assert store.num_episodes == 6 and set(attrs["source"]) == {"online"} and set(attrs["quality"]) == {"sac"}
    assert [str(c).split("@")[1] for c in attrs["checkpoint"]] == ["50", "100", "150", "200", "250", "300"]
    assert all(str(c).startswith("run-") for c in attrs["checkpoint"])  # lineage: run id @ step, as in the loop
    assert list(attrs["seed"]) == list(range(6)) and set(attrs["generator_hash"]) == {config_hash(cfg)}
    # every stored episode is exactly what the env did: replaying its actions from its seed gives its observations
    env = make_env(ENV)
    for i in (0, 5):
        episode = store.episode(i)
        obs, _ = env.reset(seed=int(attrs["seed"][i]))
        for t, action in enumerate(episode["action"]):
            np.testing.assert_allclose(episode["obs"][t], obs, atol=1e-5)
            obs, reward, *_ = env.step(action)
            assert episode["reward"][t] == pytest.approx(reward, abs=1e-5)
        assert len(episode["action"]) == 50 and "sim_state/physics" in episode

    rows = read_metrics(tmp_path / "run")
    last_versions = [r["train_episode/weight_version_last"] for r in rows if "train_episode/weight_version_last" in r]
    assert last_versions == sorted(last_versions) and last_versions[0] == 0 and last_versions[-1] >= 5
    evals = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in evals] == [0, 150, 300]  # at the eval cadence, the first the offline start
    assert evals[0]["eval/weight_version"] == 0 < evals[1]["eval/weight_version"] < evals[2]["eval/weight_version"]
    assert all(k in evals[-1] for k in ("eval/q_calibration_gap_bootstrapped", "eval/normalized_score", "eval/success_rate"))
    train = [r for r in rows if "train/critic_loss" in r]
    assert train and all(np.isfinite(r["train/critic_loss"]) for r in train)
    timing = [r for r in rows if "actor/jitter_p99_ms" in r]
    assert [r["step"] for r in timing] == [50, 100, 150, 200, 250, 300]
    assert summary["actor"]["versions_used"][0] == 0 and len(summary["actor"]["versions_used"]) >= 5

    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["loop"]["env_steps"] == 300 and len(ckpt["loop"]["episode_rows"]) == 6
    assert ckpt["actor_learner"]["next_episode"] == 6


def test_a_slow_learner_lags_while_the_actor_keeps_50_hz(tmp_path):
    def slow(source):
        sample = source.sample

        def sample_slowly(k, b, offline_only=False):
            time.sleep(0.05)  # a learner 2.5 times slower than the 20 ms control period
            return sample(k, b, offline_only)
        source.sample = sample_slowly
        return source

    summary = finetune(tiny(tmp_path / "slow", warmup_steps=50, eval_episodes=0), progress=False, make_source=slow)
    actor = summary["actor"]
    print("slow learner:", {k: actor[k] for k in ("ticks", "missed_ticks", "period_p50_ms", "jitter_p50_ms", "jitter_p99_ms")},
          "updates", summary["updates"], "skipped", summary["skipped_updates"])
    assert summary["env_steps"] == 300 and summary["online_episodes"] == 6 and actor["dropped"] == {}
    assert actor["missed_fraction"] < 0.05 and actor["period_p50_ms"] == pytest.approx(20.0, abs=1.0)
    # the learner owed one update per step after the warm-up and made fewer: it lags, not the actor
    assert summary["updates"] + summary["skipped_updates"] == 250
    assert summary["updates"] < 150
    # what it trained at, reported next to what was configured: updates made per step owed
    assert summary["utd_configured"] == 1.0
    assert summary["utd_delivered"] == pytest.approx(summary["updates"] / 250) and summary["utd_delivered"] < 0.6


def test_killing_the_learner_stops_the_actor_with_a_clear_message(tmp_path):
    proc = cli(tmp_path / "run", "--steps", "100000")
    wait_for_episodes(tmp_path / "run", 1, proc)
    actor = actor_pid(proc.pid)
    proc.kill()
    _, stderr = proc.communicate(timeout=30)  # returns once the actor, which shares stderr, has exited
    assert gone(actor, 5.0)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("agent finetune (actor): the learner process is gone"), stderr
    assert Store.open(tmp_path / "run" / "online.zarr").num_episodes >= 1  # what was stored stays readable


def test_killing_the_actor_stops_the_learner_with_a_clear_message(tmp_path):
    seen = {"samples": 0}

    def kill_actor_midway(source):
        sample = source.sample

        def sample_then_kill(k, b, offline_only=False):
            seen["samples"] += 1
            if seen["samples"] == 20:
                os.kill(actor_pid(os.getpid()), signal.SIGKILL)
            return sample(k, b, offline_only)
        source.sample = sample_then_kill
        return source

    with pytest.raises(ActorDied, match=r"the actor process died \(exit code -9\) after \d+ environment steps"):
        finetune(tiny(tmp_path / "run", steps=100_000, warmup_steps=60, eval_episodes=0), progress=False,
                 make_source=kill_actor_midway)
    summary = json.loads((tmp_path / "run" / "finetune_summary.json").read_text())
    assert summary["actor"]["stop_reason"] == "died"
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["loop"]["episode_rows"] == list(range(Store.open(tmp_path / "run" / "online.zarr").num_episodes))


def test_sigint_stops_both_in_order_and_the_run_resumes(tmp_path):
    proc = cli(tmp_path / "run", "--steps", "100000")
    wait_for_episodes(tmp_path / "run", 2, proc)
    actor = actor_pid(proc.pid)
    proc.send_signal(signal.SIGINT)  # the parent only: it stops the actor itself
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and gone(actor, 5.0)
    ckpt = load_checkpoint(tmp_path / "run")
    episodes = len(ckpt["loop"]["episode_rows"])
    # the unfinished episode is dropped and its steps uncounted: the checkpoint sits at the last whole episode
    assert episodes >= 2 and ckpt["actor_learner"]["next_episode"] == episodes and ckpt["loop"]["env_steps"] == 50 * episodes
    # as in the single-process loop: what was kept and the command that resumes it
    assert [ln for ln in stderr.splitlines() if ln.strip()] == [
        f"agent finetune: stopped and checkpointed at step {50 * episodes}; {episodes} online episodes of this run are "
        f"kept in {tmp_path / 'run' / 'online.zarr'} (an unfinished episode is dropped and redone); "
        f"resume with: agent finetune --out {tmp_path / 'run'} --resume",
        "agent finetune: interrupted"], stderr
    assert json.loads((tmp_path / "run" / "finetune_summary.json").read_text())["interrupted"] is True

    # resume unpaced (a sim needs no pacing) for two more episodes
    cfg = tiny(tmp_path / "run", steps=50 * episodes + 100, warmup_steps=60, eval_episodes=0, checkpoint_every=50,
               control_rate=0.0)
    summary = finetune(cfg, resume=True, progress=False)
    assert summary["resumed"] and summary["env_steps"] == cfg.steps and summary["online_episodes"] == episodes + 2
    seeds = [int(s) for s in Store.open(tmp_path / "run" / "online.zarr").episode_attrs()["seed"]]
    assert seeds == list(range(episodes + 2))  # the redone episode keeps its reset seed; none repeated
    assert "jitter_p99_ms" not in summary["actor"] and summary["actor"]["missed_ticks"] == 0  # unpaced: no schedule


@pytest.mark.parametrize("field, value, match", [
    ("control_rate", -5.0, "config field 'control_rate' must be at least 0, got -5.0"),
    ("weight_push_seconds", 0.0, "config field 'weight_push_seconds' must be above 0, got 0.0"),
    ("env", "sims/NoSuchArm-v0", "the actor stopped: unknown env id 'sims/NoSuchArm-v0'"),
])
def test_bad_settings_are_refused_in_one_sentence(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        finetune(tiny(tmp_path / "run", **{field: value}), progress=False)


def test_the_clock_counts_skipped_slots_as_missed_and_does_not_catch_up():
    clock = TickClock(0.01, pace=True)
    starts = []
    for i in range(12):
        clock.wait()
        starts.append(time.perf_counter())
        if i == 5:
            time.sleep(0.035)  # a tick that overruns by 2.5 periods: two slots pass without a tick
    stats = clock.summary()
    assert stats["ticks"] == 12 and 2 <= stats["missed_ticks"] <= 3  # 3 only if the machine stalls another 5 ms
    # back on the 10 ms grid: no tick before its slot (the last one is in slot 13 or later), no
    # burst of ticks to make up for the lost ones (a burst would start ticks microseconds apart)
    assert starts[-1] - starts[0] > 0.125 and np.diff(starts).min() > 0.002  # catching up would end near 0.11 s


def test_sigint_between_checkpoints_writes_latest_only(tmp_path):
    """The learner's state at the stop goes to latest.pt at the last whole episode; no
    step-numbered copy is written with it (one there would hold another state)."""
    def interrupt_at_the_thirtieth_draw(source):
        sample, draws = source.sample, []

        def sample_then_interrupt(k, b, offline_only=False):
            draws.append(1)
            if len(draws) == 30:
                os.kill(os.getpid(), signal.SIGINT)
            return sample(k, b, offline_only)
        source.sample = sample_then_interrupt
        return source

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny(run, steps=100_000, warmup_steps=40, eval_episodes=0, checkpoint_every=100_000), progress=False,
                 make_source=interrupt_at_the_thirtieth_draw)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]
    ckpt = load_checkpoint(run)
    episodes = len(ckpt["loop"]["episode_rows"])
    assert episodes >= 1 and ckpt["loop"]["env_steps"] == 50 * episodes and ckpt["loop"]["updates"] >= 30
    assert ckpt["env_kwargs"] == {}
