"""`agent pretrain` as a user runs it: on an imported dataset without a simulator, a
resume that has nothing to do, and Ctrl-C mid-run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from agent.checkpoint import load_checkpoint
from agent.cli import main
from agent.logger import read_metrics

OBS, ACT = 28, 7  # the sizes of sims/ArmReach-v0, so that --env can evaluate in it
TINY = ["--batch-size", "16", "--log-every", "5", "--bc.hidden-dims", "16"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A store imported from a D4RL file: its env id, d4rl/reach-medium, names no simulator."""
    h5py = pytest.importorskip("h5py")
    from agent.store.importers import import_dataset

    root = tmp_path_factory.mktemp("imported")
    rng = np.random.default_rng(0)
    steps = 200
    obs = rng.normal(size=(steps, OBS)).astype(np.float32)
    timeouts = np.zeros(steps, bool)
    timeouts[49::50] = True
    with h5py.File(root / "reach-medium.hdf5", "w") as f:
        f["observations"], f["next_observations"] = obs, np.roll(obs, -1, axis=0)
        f["actions"] = rng.uniform(-1, 1, size=(steps, ACT)).astype(np.float32)
        f["rewards"], f["terminals"], f["timeouts"] = rng.normal(size=steps), np.zeros(steps, bool), timeouts
    import_dataset("d4rl", root / "reach-medium.hdf5", root / "store.zarr")
    return root / "store.zarr"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_an_imported_store_trains_without_a_simulator(imported, tmp_path, capsys):
    code, out, err = run(capsys, "pretrain", "--data", imported, "--out", tmp_path / "r", "--steps", "20", *TINY, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["note"].startswith("not evaluated: the store's env id 'd4rl/reach-medium' is not a registered environment")
    assert not any(k.startswith("eval_") for k in result)
    ckpt = load_checkpoint(tmp_path / "r")
    assert (ckpt["step"], ckpt["env_id"], ckpt["obs_dim"], ckpt["act_dim"]) == (20, "d4rl/reach-medium", OBS, ACT)


def test_env_flag_evaluates_in_an_env_of_the_store_sizes(imported, tmp_path, capsys):
    code, out, err = run(capsys, "pretrain", "--data", imported, "--out", tmp_path / "r", "--steps", "10", *TINY,
                         "--env", "sims/ArmReach-v0", "--eval-episodes", "1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "note" not in result and result["eval_length_mean"] == 50.0
    assert load_checkpoint(tmp_path / "r")["env_id"] == "sims/ArmReach-v0"


def test_env_flag_of_other_sizes_is_refused_in_one_sentence(imported, tmp_path, capsys):
    code, _, err = run(capsys, "pretrain", "--data", imported, "--out", tmp_path / "r", "--steps", "10", *TINY,
                       "--env", "dmc/reacher-hard-v0")
    assert code == 2 and len(err.splitlines()) == 1
    assert "--env dmc/reacher-hard-v0 has observations of size 6 and actions of size 2, but store" in err
    assert f"holds observations of size {OBS} and actions of size {ACT}" in err
    assert not (tmp_path / "r").exists()


def test_eval_of_a_run_on_imported_data_needs_env(imported, tmp_path, capsys):
    assert run(capsys, "pretrain", "--data", imported, "--out", tmp_path / "r", "--steps", "10", *TINY)[0] == 0
    code, _, err = run(capsys, "eval", "--run", tmp_path / "r", "--episodes", "1")
    assert code == 2 and len(err.splitlines()) == 1
    assert "'d4rl/reach-medium', which is not a registered environment; pass --env ID" in err
    assert not (tmp_path / "r" / "eval.json").exists()
    code, out, err = run(capsys, "eval", "--run", tmp_path / "r", "--env", "sims/ArmReach-v0", "--episodes", "1", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["return_mean"] == json.loads(out)["return_mean"]


def test_a_resume_below_or_at_the_current_step_changes_nothing(imported, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run(capsys, "pretrain", "--data", imported, "--out", run_dir, "--steps", "20", *TINY)[0] == 0
    files = ("config.yaml", "pretrain_summary.json", "metrics.jsonl", "checkpoints/latest.pt")
    before = {f: (run_dir / f).read_bytes() for f in files}
    code, _, err = run(capsys, "pretrain", "--out", run_dir, "--resume", "--steps", "10", "--batch-size", "8")
    assert code == 2 and len(err.splitlines()) == 1
    assert "is already at step 20, past --steps 10" in err
    code, out, err = run(capsys, "pretrain", "--out", run_dir, "--resume", "--steps", "20", "--batch-size", "8", "--json")
    assert code == 0 and json.loads(out)["note"].startswith("nothing to do: the run is already at step 20")
    assert {f: (run_dir / f).read_bytes() for f in files} == before


def agent_process(*args):
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_ctrl_c_checkpoints_the_current_step_and_the_run_resumes_from_it(imported, tmp_path):
    run_dir = tmp_path / "r"
    flags = [*TINY, "--checkpoint-every", "100000", "--eval-episodes", "0"]
    proc = agent_process("pretrain", "--data", imported, "--out", run_dir, "--steps", "1000000", *flags)
    deadline = time.monotonic() + 120
    while len(read_metrics(run_dir)) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"resume with: agent pretrain --out {run_dir} --resume" in err
    step = load_checkpoint(run_dir)["step"]
    assert 100 <= step < 100000  # written on interrupt, not by the schedule
    assert max(m["step"] for m in read_metrics(run_dir)) <= step

    proc = agent_process("pretrain", "--out", run_dir, "--resume", "--steps", step + 12)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert load_checkpoint(run_dir)["step"] == step + 12
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == step + 12
    # the same updates as a run that was never interrupted: the checkpoint held a whole step
    proc = agent_process("pretrain", "--data", imported, "--out", tmp_path / "straight", "--steps", step + 12, *flags)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    resumed = [m for m in read_metrics(run_dir) if m["step"] > step]
    straight = [m for m in read_metrics(tmp_path / "straight") if m["step"] > step]
    assert resumed and resumed == straight


def _reach_store(path, env_kwargs):
    from gymnasium import spaces

    from agent.store import EpisodeAttrs, Store
    from helpers import make_episode

    rng = np.random.default_rng(0)
    store = Store.create(path, env_id="sims/ArmReach-v0", env_kwargs=env_kwargs,
                         observation_space=spaces.Box(-np.inf, np.inf, (OBS,), np.float32),
                         action_space=spaces.Box(-1.0, 1.0, (ACT,), np.float32))
    for _ in range(2):
        store.append_episode(make_episode(rng, 20, obs_dim=OBS, act_dim=ACT), EpisodeAttrs(source="imported"))
    return path


def test_the_stores_env_arguments_apply_to_evaluation_in_its_own_env(tmp_path, capsys):
    """A store made with env arguments (an imported dataset's time limit) is evaluated with them,
    during pretraining and by `agent eval --run`; --env evaluates in that env as it is."""
    _reach_store(tmp_path / "s.zarr", {"max_episode_steps": 7})
    code, out, err = run(capsys, "pretrain", "--data", tmp_path / "s.zarr", "--algo", "bc", "--out", tmp_path / "run",
                         "--steps", "5", "--eval-episodes", "1", "--json", *TINY)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run")["env_kwargs"] == {"max_episode_steps": 7}
    code, out, err = run(capsys, "eval", "--run", tmp_path / "run", "--episodes", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["length_mean"] == 7
    code, out, err = run(capsys, "eval", "--run", tmp_path / "run", "--env", "sims/ArmReach-v0", "--episodes", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["length_mean"] > 7
    # recorded whether or not pretraining evaluates
    code, out, err = run(capsys, "pretrain", "--data", tmp_path / "s.zarr", "--algo", "bc", "--out", tmp_path / "run0",
                         "--steps", "5", "--eval-episodes", "0", "--json", *TINY)
    assert code == 0, err
    assert load_checkpoint(tmp_path / "run0")["env_kwargs"] == {"max_episode_steps": 7}


def test_cal_ql_refuses_a_discount_of_one_in_one_sentence(imported, tmp_path, capsys):
    """Cal-QL bootstraps a truncated tail with r_min / (1 - gamma): gamma 1 is refused, not a ZeroDivisionError."""
    code, out, err = run(capsys, "pretrain", "--data", imported, "--algo", "calql", "--out", tmp_path / "run",
                         "--steps", "2", "--calql.gamma", "1.0", *TINY)
    assert code == 2 and err == "agent pretrain: error: config field 'calql.gamma' must be in [0, 1), got 1.0.", err


def test_a_run_stopped_after_its_last_update_finishes_its_evaluation_on_resume(tmp_path, capsys):
    """Interrupted after the last checkpoint (during the final evaluation), a resume at the same
    --steps runs the final evaluation and writes the summary instead of saying nothing is left."""
    _reach_store(tmp_path / "s.zarr", {"max_episode_steps": 5})
    flags = ["--algo", "bc", "--steps", "5", "--eval-episodes", "1", "--eval-every", "0", "--json", *TINY]
    assert run(capsys, "pretrain", "--data", tmp_path / "s.zarr", "--out", tmp_path / "run", *flags)[0] == 0
    (tmp_path / "run" / "pretrain_summary.json").unlink()  # what an interrupted final evaluation leaves
    evals_before = [m for m in read_metrics(tmp_path / "run") if "eval/return_mean" in m]
    code, out, err = run(capsys, "pretrain", "--out", tmp_path / "run", "--resume", "--steps", "5", "--json")
    assert code == 0, err
    assert "note" not in json.loads(out) and "eval_return_mean" in json.loads(out)
    assert (tmp_path / "run" / "pretrain_summary.json").exists()
    assert len([m for m in read_metrics(tmp_path / "run") if "eval/return_mean" in m]) == len(evals_before) + 1
