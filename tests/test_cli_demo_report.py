"""`agent demo` removes only what it wrote; `agent report` takes fine-tuning runs of one env."""
import json

import pytest
import yaml

from agent.cli import main
from agent.demo import MARKER, _prepare_out


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_demo_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--quick")
    assert code == 2 and len(err.splitlines()) == 1 and "holds files the demo did not write" in err
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "years of work"


def test_demo_rerun_removes_only_its_own_outputs(tmp_path):
    out = tmp_path / "demo"
    _prepare_out(out)  # new directory: created and marked
    assert (out / MARKER).is_file()
    (out / "bc-random").mkdir()
    (out / "bc-random" / "config.yaml").write_text("old run")
    (out / "results.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    _prepare_out(out)
    assert not (out / "bc-random").exists() and not (out / "results.json").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / MARKER).is_file()


def fake_run(path, env, algo="wsrl", seed=0, finetune=True):
    """A run directory as `agent finetune` (or `agent pretrain`) leaves it, with evaluations."""
    path.mkdir(parents=True)
    cfg = {"algo": algo, "env": env, "seed": seed, "data": "d.zarr", "out": str(path)}
    cfg.update({"init": "pre", "online_store": ""} if finetune else {"bc": {"lr": 3e-4}})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if not finetune:
        (path / "pretrain_summary.json").write_text("{}")
    rows = [{"step": s, "eval/return_mean": float(s + seed), "eval/normalized_score": None} for s in (0, 100, 200)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_refuses_a_pretraining_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [fake_run(tmp_path / "ft", "sims/ArmReach-v0"), fake_run(tmp_path / "pre", "sims/ArmReach-v0", finetune=False)]
    code, _, err = run(capsys, "report", *runs, "--out", tmp_path / "rep")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{str(runs[1])!r} is a pretraining run" in err
    assert not (tmp_path / "rep").exists()


def test_report_refuses_mixed_envs_unless_per_env(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [fake_run(tmp_path / "a0", "sims/ArmReach-v0"), fake_run(tmp_path / "a1", "sims/ArmReach-v0", seed=1),
            fake_run(tmp_path / "b0", "dmc/reacher-hard-v0")]
    code, _, err = run(capsys, "report", *runs, "--out", tmp_path / "rep")
    assert code == 2 and len(err.splitlines()) == 1 and "the runs are of 2 envs" in err and "--per-env" in err
    assert not (tmp_path / "rep").exists()
    code, out, err = run(capsys, "report", *runs, "--out", tmp_path / "rep", "--per-env", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert sorted(result["reports"]) == ["dmc/reacher-hard-v0", "sims/ArmReach-v0"]
    assert result["reports"]["sims/ArmReach-v0"]["algos"]["wsrl"]["seeds"] == 2
    assert (tmp_path / "rep" / "sims_ArmReach-v0" / "curves.png").is_file()
    assert (tmp_path / "rep" / "dmc_reacher-hard-v0" / "report.md").is_file()
    code, out, err = run(capsys, "report", *runs[:2], "--out", tmp_path / "one", "--json")
    assert code == 0 and json.loads(out)["envs"] == ["sims/ArmReach-v0"]
