"""The command line end to end, in subprocesses, as a user runs it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

ENV = "dmc/reacher-hard-v0"


def agent(*args, check=True):
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"agent {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    store = root / "expert.zarr"
    out = agent("collect", "--env", ENV, "--policy", "scripted", "--noise", "0.1", "--episodes", "2", "--out", store, "--json")
    assert json.loads(out.stdout)["episodes"] == 2
    cfg = root / "pretrain.yaml"
    cfg.write_text(f"data: {store}\nsteps: 60\nbatch_size: 32\ncheckpoint_every: 30\nlog_every: 10\neval_episodes: 0\nbc:\n  hidden_dims: [32]\n")
    agent("pretrain", "--config", cfg, "--out", root / "run")
    return root


def test_collect_pretrain_eval_inspect(trained):
    run = trained / "run"
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "latest.pt").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 60
    result = json.loads(agent("eval", "--run", run, "--episodes", "1", "--json").stdout)
    assert result["episodes"] == 1 and result["env_id"] == ENV
    assert result["normalized_score"] is not None and result["success_rate"] is not None
    assert json.loads((run / "eval.json").read_text())["return_mean"] == result["return_mean"]
    summary = json.loads(agent("inspect", trained / "expert.zarr", "--json").stdout)
    assert summary["episodes"] == 2 and summary["steps"] == 2000
    assert summary["keys"]["data/obs"]["shape"] == [2000, 6]
    text = agent("inspect", trained / "expert.zarr").stdout
    assert "scripted" in text and "data/action" in text


def test_resume_extends_a_finished_run(trained):
    agent("pretrain", "--out", trained / "run", "--resume", "--steps", "90")
    steps = [json.loads(l)["step"] for l in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 90 and len(steps) == len(set(steps))


def test_help_on_every_subcommand():
    for cmd in ("collect", "pretrain", "eval", "inspect", "demo"):
        assert "usage: agent " + cmd in agent(cmd, "--help").stdout


def refused(*args):
    proc = agent(*args, check=False)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_missing_store_path(tmp_path):
    assert "does not exist" in refused("pretrain", "--data", tmp_path / "nope.zarr", "--out", tmp_path / "r")


def test_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "is not an agent store" in refused("pretrain", "--data", tmp_path / "plain", "--out", tmp_path / "r")
    assert "is not an agent store" in refused("inspect", tmp_path / "plain")


def test_store_with_nan_actions(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(trained / "expert.zarr", bad)
    zarr.open_group(str(bad), mode="r+")["data/action"][1500, 1] = np.nan
    msg = refused("pretrain", "--data", bad, "--out", tmp_path / "r")
    assert "data/action holds NaN" in msg and "episode 1" in msg


def test_checkpoint_whose_shapes_do_not_match_the_env(trained):
    msg = refused("eval", "--run", trained / "run", "--env", "dmc/cheetah-run-v0", "--episodes", "1")
    assert "trained for observations of size 6" in msg and "dmc/cheetah-run-v0" in msg


def test_unknown_env_id_lists_known_ones(tmp_path):
    msg = refused("collect", "--env", "dmc/reacher-hardest-v0", "--episodes", "1", "--out", tmp_path / "s.zarr")
    assert "unknown env id" in msg and "dmc/reacher-hard-v0" in msg


def test_missing_checkpoint(tmp_path):
    assert "no checkpoint" in refused("eval", "--run", tmp_path, "--episodes", "1")


def test_config_with_a_wrong_type(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: many\n")
    assert "'steps' must be an integer" in refused("pretrain", "--config", cfg, "--data", tmp_path, "--out", tmp_path / "r")
