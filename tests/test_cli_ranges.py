"""Zero, negative and absurd flag values: exit 2 with one sentence naming the field, never a traceback."""
import os
import subprocess
import sys

import pytest

from agent.cli import main

CASES = [
    ("pretrain", "--steps", "0", "'steps' must be at least 1, got 0"),
    ("pretrain", "--steps", "-5", "'steps' must be at least 1, got -5"),
    ("pretrain", "--batch-size", "0", "'batch_size' must be at least 1, got 0"),
    ("pretrain", "--log-every", "0", "'log_every' must be at least 1, got 0"),
    ("pretrain", "--checkpoint-every", "0", "'checkpoint_every' must be at least 1, got 0"),
    ("pretrain", "--device", "tpu", "'device' must be auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
    ("pretrain", "--seed", "-1", "'seed' must be at least 0, got -1"),
    ("pretrain", "--bc.lr", "nan", "'bc.lr' must be above 0, got nan"),
    ("pretrain", "--iql.gamma", "5", "'iql.gamma' must be in [0, 1], got 5.0"),
    ("pretrain", "--cql.hidden-dims", "256,0", "'cql.hidden_dims[1]' must be at least 1, got 0"),
    ("eval", "--episodes", "0", "'episodes' must be at least 1, got 0"),
    ("collect", "--epsilon", "1.5", "'epsilon' must be in [0, 1], got 1.5"),
    ("collect", "--num-envs", "0", "'num_envs' must be at least 1, got 0"),
    ("finetune", "--utd", "0", "'utd' must be at least 1, got 0"),
    ("finetune", "--eval-every", "0", "'eval_every' must be at least 1, got 0"),
    ("finetune", "--heldout-fraction", "1", "'heldout_fraction' must be in [0, 1), got 1.0"),
    ("finetune", "--wsrl.tau", "0", "'wsrl.tau' must be in (0, 1], got 0.0"),
    ("finetune", "--device", "cuda:one", "'device' must be auto, cpu, mps, cuda or cuda:N, got 'cuda:one'"),
    ("augment", "--ensemble-members", "1", "'ensemble_members' must be at least 2, got 1"),
    ("augment", "--rotate-max-deg", "1e9", "'rotate_max_deg' must be in [0, 180], got 1000000000.0"),
]


@pytest.mark.parametrize("command, flag, value, message", CASES, ids=[f"{c[0]}{c[1]}={c[2]}" for c in CASES])
def test_out_of_range_flags_exit_2_with_one_sentence(tmp_path, capsys, command, flag, value, message):
    out = tmp_path / "out"
    rc = main([command, flag, value, *(["--out", str(out)] if command != "eval" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"agent {command}: error: config field ") and message in err[0], err
    assert not out.exists()  # refused before anything was written


def test_the_same_in_a_subprocess_without_traceback(tmp_path):
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    for args in (["eval", "--episodes", "0", "--policy", "random", "--env", "sims/ArmReach-v0"],
                 ["pretrain", "--batch-size", "0", "--data", str(tmp_path), "--out", str(tmp_path / "r")]):
        proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
