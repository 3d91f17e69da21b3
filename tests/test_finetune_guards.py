"""What a fine-tuning run writes is what ran: a step budget inside the warm-up is refused,
config.yaml holds the sizes taken from the --init checkpoint, a resume with nothing to do
changes nothing on disk, and Ctrl-C checkpoints at the last whole episode and says how to
resume."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.checkpoint import load_checkpoint
from agent.cli import main
from agent.finetune import FinetuneConfig, finetune
from agent.logger import read_metrics
from agent.store import Store
from helpers import pretrained_calql

ENV = "sims/ArmReach-v0"  # 50-step episodes
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calql(tmp_path_factory):
    """A Cal-QL run whose sizes all differ from WSRL's defaults (256x3 widths, 10 critics, LayerNorm)."""
    return pretrained_calql(tmp_path_factory.mktemp("guards"), episodes=2, steps=5, batch_size=16, hidden_dims=[16, 16],
                            num_critics=4, layer_norm=False)


def sac(out, **overrides) -> FinetuneConfig:
    cfg = FinetuneConfig(algo="sac", env=ENV, out=str(out), steps=100, warmup_steps=50, utd=1, batch_size=16,
                         eval_episodes=0, checkpoint_every=50, log_every=50)
    cfg.sac.hidden_dims = [16]
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def snapshot(run: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``run`` with its modification time and content digest."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("actor_learner", [False, True])
@pytest.mark.parametrize("steps, warmup, shown", [(50, 50, 50), (30, 50, 50), (300, None, 5000)])
def test_steps_inside_the_warmup_are_refused_before_anything_is_written(tmp_path, steps, warmup, shown, actor_learner):
    cfg = sac(tmp_path / "run", steps=steps, warmup_steps=warmup, actor_learner=actor_learner)
    with pytest.raises(ValueError, match=rf"^--steps must be above the warm-up of {shown} environment steps "
                                         rf"\(no update happens before step {shown + 1}\), found {steps}; "
                                         rf"raise --steps or lower --warmup-steps\.$"):
        finetune(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_config_yaml_holds_the_sizes_taken_from_the_init_checkpoint(calql, tmp_path):
    cfg = FinetuneConfig(algo="wsrl", init=calql["init"], out=str(tmp_path / "wsrl"), steps=60, warmup_steps=50, utd=1,
                         batch_size=16, eval_episodes=0, checkpoint_every=50, log_every=50)
    finetune(cfg, progress=False)
    saved = yaml.safe_load((tmp_path / "wsrl" / "config.yaml").read_text())
    ckpt = load_checkpoint(tmp_path / "wsrl")
    assert saved["wsrl"] == ckpt["algo_config"]  # every setting the learner was built with
    assert (saved["wsrl"]["hidden_dims"], saved["wsrl"]["num_critics"], saved["wsrl"]["layer_norm"]) == ([16, 16], 4, False)
    assert saved["env"] == ENV and saved["data"] == calql["data"]  # taken from the --init run too
    # the saved config is what a resume builds from: it continues without complaint
    assert main(["finetune", "--out", str(tmp_path / "wsrl"), "--resume", "--steps", "100"]) == 0
    assert load_checkpoint(tmp_path / "wsrl")["loop"]["env_steps"] == 100


def test_config_yaml_of_a_same_algorithm_init_holds_the_checkpoints_settings(calql, tmp_path):
    cfg = FinetuneConfig(algo="calql", init=calql["init"], env=ENV, out=str(tmp_path / "c"), steps=60, warmup_steps=50,
                         utd=1, batch_size=16, eval_episodes=0, checkpoint_every=50, log_every=50)
    finetune(cfg, progress=False)
    saved = yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())
    assert saved["calql"] == load_checkpoint(calql["init"])["algo_config"]
    assert saved["calql"]["num_sampled_actions"] == 2 and saved["calql"]["hidden_dims"] == [16, 16]


@pytest.mark.parametrize("algo, field, value, match", [
    ("wsrl", "num_critics", 6, r"--wsrl\.num-critics 6 differs from the 4 of the --init checkpoint"),
    ("wsrl", "hidden_dims", [64, 64], r"--wsrl\.hidden-dims 64,64 differs from the 16,16 of the --init checkpoint"),
    ("calql", "num_critics", 3, r"--calql\.num-critics 3 differs from the 4 of the --init checkpoint"),
])
def test_an_explicit_size_that_differs_from_the_checkpoint_is_refused(calql, tmp_path, algo, field, value, match):
    cfg = FinetuneConfig(algo=algo, init=calql["init"], env=ENV, out=str(tmp_path / "run"), steps=60, warmup_steps=50,
                         eval_episodes=0)
    setattr(getattr(cfg, algo), field, value)
    with pytest.raises(ValueError, match=match + r".*; drop --"):
        finetune(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_with_nothing_to_do_changes_nothing_on_disk(tmp_path, capsys):
    run = tmp_path / "run"
    finetune(sac(run), progress=False)
    before = snapshot(run)
    assert main(["finetune", "--out", str(run), "--resume", "--steps", "100"]) == 0
    assert "nothing to do: the run is already at step 100" in capsys.readouterr().out
    assert main(["finetune", "--out", str(run), "--resume", "--steps", "60"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["agent finetune: error: --steps must be at least the run's current step 100 to resume it, found 60; "
                   "pass --steps above 100 to continue it (or choose another --out to start over)."]
    result = finetune(sac(run, actor_learner=True), resume=True, progress=False)  # the actor-learner path too
    assert result["status"].startswith("nothing to do") and result["env_steps"] == 100
    assert snapshot(run) == before


def _wait_for_episodes(run: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sum("train_episode/return" in r for r in read_metrics(run)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} episodes within {timeout} s")


def test_ctrl_c_checkpoints_at_the_last_episode_says_how_to_resume_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    # no periodic checkpoint within the run: only the interrupt writes one
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "finetune", "--algo", "sac", "--env", ENV, "--out", str(run),
                             "--steps", "100000", "--warmup-steps", "60", "--sac.hidden-dims", "16", "--batch-size", "16",
                             "--eval-episodes", "0", "--log-every", "50", "--checkpoint-every", "100000"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for_episodes(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    ckpt = load_checkpoint(run)
    episodes = len(ckpt["loop"]["episode_rows"])
    assert episodes >= 2 and ckpt["step"] == ckpt["loop"]["env_steps"] == 50 * episodes  # the unfinished one dropped
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == [f"agent finetune: stopped and checkpointed at step {50 * episodes}; {episodes} online episodes of "
                     f"this run are kept in {run / 'online.zarr'} (an unfinished episode is dropped and redone); "
                     f"resume with: agent finetune --out {run} --resume",
                     "agent finetune: interrupted"], stderr
    assert Store.open(run / "online.zarr").num_episodes == episodes

    assert main(["finetune", "--out", str(run), "--resume", "--steps", str(50 * episodes + 100)]) == 0
    ckpt = load_checkpoint(run)
    assert ckpt["loop"]["env_steps"] == 50 * episodes + 100 and len(ckpt["loop"]["episode_rows"]) == episodes + 2
    seeds = [int(s) for s in Store.open(run / "online.zarr").episode_attrs()["seed"]]
    assert seeds == list(range(episodes + 2))  # every episode once, the dropped one redone from its seed


@pytest.mark.parametrize("actor_learner", [False, True])
def test_ctrl_c_in_the_offline_phase_checkpoints_it_and_the_run_resumes(calql, tmp_path, capsys, actor_learner):
    def interrupt_at_the_tenth_draw(source):
        sample, draws = source.sample, []

        def sample_then_interrupt(k, b, offline_only=False):
            draws.append(1)
            if len(draws) == 10:
                os.kill(os.getpid(), signal.SIGINT)  # the handler only notes it: the update in progress completes
            return sample(k, b, offline_only)
        source.sample = sample_then_interrupt
        return source

    run = tmp_path / "ro2o"
    cfg = FinetuneConfig(algo="ro2o", env=ENV, data=calql["data"], out=str(run), steps=60, warmup_steps=50, utd=1,
                         batch_size=16, offline_steps=40, eval_episodes=0, checkpoint_every=50, log_every=50,
                         actor_learner=actor_learner, control_rate=0.0)
    cfg.ro2o.hidden_dims, cfg.ro2o.num_critics, cfg.ro2o.num_perturbations = [16], 2, 2
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, progress=False, make_source=interrupt_at_the_tenth_draw)
    ckpt = load_checkpoint(run)
    assert ckpt["loop"]["offline_updates"] == 10 and ckpt["loop"]["env_steps"] == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"agent finetune: stopped in the offline phase and checkpointed after 10 of 40 offline updates; "
        f"resume with: agent finetune --out {run} --resume")
    written = json.loads((run / "finetune_summary.json").read_text())
    assert written["interrupted"] is True and written["offline_updates"] == 10 and written["env_steps"] == 0
    summary = finetune(cfg, resume=True, progress=False)
    assert summary["env_steps"] == 60 and load_checkpoint(run)["loop"]["offline_updates"] == 40


def interrupt_at_draw(n: int, before=None):
    """A ``make_source`` that sends this process SIGINT at the n-th batch draw (after ``before()``)."""
    def wrap(source):
        sample, draws = source.sample, []

        def sample_then_interrupt(k, b, offline_only=False):
            draws.append(1)
            if len(draws) == n:
                if before is not None:
                    before()
                os.kill(os.getpid(), signal.SIGINT)  # noted by the handler: the step in progress completes
            return sample(k, b, offline_only)
        source.sample = sample_then_interrupt
        return source
    return wrap


def test_ctrl_c_after_a_checkpoint_at_the_last_episode_end_writes_nothing(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    seen: dict = {}
    # updates once the first episode is stored (draw n at step 49 + n): the checkpoint at step 50 holds one
    cfg = sac(run, steps=1000, warmup_steps=40)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, progress=False, make_source=interrupt_at_draw(22, lambda: seen.update(snapshot(ckpts))))
    assert seen and snapshot(ckpts) == seen  # step_00000050.pt and latest.pt are as they were: nothing rewritten
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 50 and ckpt["loop"]["updates"] == 1 and ckpt["loop"]["episode_rows"] == [0]
    summary = finetune(sac(run, steps=150, warmup_steps=40), resume=True, progress=False)
    assert summary["updates"] == 101 and summary["online_episodes"] == 3  # the 21 updates after step 50 redone
    assert [int(s) for s in Store.open(run / "online.zarr").episode_attrs()["seed"]] == [0, 1, 2]


def test_ctrl_c_between_checkpoints_writes_latest_only_with_the_updates_made(tmp_path):
    run = tmp_path / "run"
    cfg = sac(run, steps=1000, warmup_steps=40, checkpoint_every=1000)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, progress=False, make_source=interrupt_at_draw(72))  # step 120, in the third episode
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]  # no step_00000100.pt
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == ckpt["loop"]["env_steps"] == 100 and ckpt["loop"]["episode_rows"] == [0, 1]
    assert ckpt["loop"]["updates"] == 72  # the networks, optimizers and count of the stop
    summary = finetune(sac(run, steps=150, warmup_steps=40, checkpoint_every=1000), resume=True, progress=False)
    assert summary["updates"] == 122 and summary["online_episodes"] == 3
    assert [int(s) for s in Store.open(run / "online.zarr").episode_attrs()["seed"]] == [0, 1, 2]


@pytest.mark.parametrize("actor_learner", [False, True])
def test_checkpoints_record_the_env_kwargs_evaluation_uses(tmp_path, actor_learner):
    cfg = sac(tmp_path / "run", steps=60, env_kwargs=["reward=sparse"], sim_gap=["gravity_scale=2.0"],
              actor_learner=actor_learner, control_rate=0.0)
    finetune(cfg, progress=False)
    assert load_checkpoint(tmp_path / "run")["env_kwargs"] == {"reward": "sparse"}  # without the dynamics gap


@pytest.mark.parametrize("actor_learner", [False, True])
@pytest.mark.parametrize("handler", ["ignored", "callers"])
def test_a_sigint_handler_other_than_pythons_default_is_left_in_place(calql, tmp_path, handler, actor_learner):
    def callers_handler(signum, frame):
        pass

    during = []

    def record(source):
        sample = source.sample

        def sample_and_record(k, b, offline_only=False):
            during.append(signal.getsignal(signal.SIGINT))
            return sample(k, b, offline_only)
        source.sample = sample_and_record
        return source

    mine = signal.SIG_IGN if handler == "ignored" else callers_handler
    previous = signal.signal(signal.SIGINT, mine)
    try:
        # the offline phase's draws come while the run's own handler would be in place, on either path
        finetune(sac(tmp_path / "run", steps=60, data=calql["data"], offline_steps=3, actor_learner=actor_learner,
                     control_rate=0.0), progress=False, make_source=record)
        assert during and all(h is mine for h in during)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("actor_learner", [False, True])
def test_the_default_sigint_handler_is_restored_after_a_run(tmp_path, actor_learner):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finetune(sac(tmp_path / "run", steps=60, actor_learner=actor_learner, control_rate=0.0), progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_setting_no_init_run_can_have_is_refused_with_a_remedy_that_exists(calql, tmp_path):
    cfg = FinetuneConfig(algo="wsrl", init=calql["init"], out=str(tmp_path / "run"), steps=60, warmup_steps=50,
                         eval_episodes=0)
    cfg.wsrl.actor_layer_norm = True
    with pytest.raises(ValueError, match=r"^--wsrl\.actor-layer-norm true cannot be used: wsrl fine-tuning of the calql "
                                         r"checkpoint '.*' needs false for its networks to load; drop "
                                         r"--wsrl\.actor-layer-norm\.$"):
        finetune(cfg, progress=False)
    assert not (tmp_path / "run").exists()
