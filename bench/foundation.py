"""Foundation bars (docs/benchmarks.md): BC on the default task's expert data, the demo, bad input.

    python bench/foundation.py            # full: 3 seeds, demo, bad-input checks
    python bench/foundation.py --quick    # a short version (1 seed, fewer updates)
    python bench/foundation.py --fresh-clone   # also `make test` in a fresh clone

Each seed's result is saved under bench/results/_work/foundation/ as it finishes and
is skipped on a rerun. Writes bench/results/foundation.json and foundation_bc.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims
os.environ.setdefault("MUJOCO_GL", "egl")

from common import RESULTS, WORK, cached, iqm_ci, print_rows, row, write_results  # noqa: E402

ENV = "sims/ArmReach-v0"  # the default task (agent.demo.DEFAULT_ENV)
RECIPE = ROOT / "datasets" / "arm-reach-expert.yaml"


def expert_store(work: Path) -> Path:
    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml

    cfg = from_dict(CollectConfig, {**load_yaml(RECIPE), "out": str(work / "expert.zarr")})
    if not (work / "expert.zarr" / "zarr.json").exists():
        collect(cfg)
    return work / "expert.zarr"


def bc_seed(store: Path, work: Path, seed: int, steps: int, eval_every: int, eval_episodes: int) -> dict:
    from agent.logger import read_metrics
    from agent.pretrain import PretrainConfig, pretrain

    run = work / f"bc-seed{seed}"
    if run.exists():
        shutil.rmtree(run)  # an unfinished seed restarts (finished ones are cached)
    pretrain(PretrainConfig(data=str(store), out=str(run), steps=steps, seed=seed, eval_every=eval_every,
                            eval_episodes=eval_episodes, checkpoint_every=steps))
    curve = [(m["step"], m["eval/normalized_score"]) for m in read_metrics(run) if "eval/normalized_score" in m]
    from agent.evaluate import evaluate
    from agent.policy import policy_maker

    final = evaluate(ENV, policy_maker(str(run), ENV), 20, seed=20_000 + 100 * seed)
    return {"seed": seed, "final_score": final["normalized_score"], "success_rate": final["success_rate"], "curve": curve}


def plot_curves(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, scores = zip(*r["curve"]) if r["curve"] else ([], [])
        ax.plot(steps, scores, marker="o", label=f"seed {r['seed']} (final {r['final_score']:.1f})")
    ax.axhline(80, color="gray", ls="--", lw=1, label="bar: 80")
    ax.set_xlabel("gradient updates")
    ax.set_ylabel("normalized score")
    ax.set_title(f"BC on the expert dataset of {ENV}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bad_inputs(work: Path, store: Path) -> tuple[int, int, list[str]]:
    """Run the five bad-input refusals through the CLI; count one-line, non-zero exits."""
    import numpy as np
    import zarr

    plain = work / "plain-dir"
    plain.mkdir(exist_ok=True)
    nan_store = work / "nan.zarr"
    if nan_store.exists():
        shutil.rmtree(nan_store)
    shutil.copytree(store, nan_store)
    zarr.open_group(str(nan_store), mode="r+")["data/action"][10, 0] = np.nan
    run = work / "bc-seed0"
    cases = {
        "missing store": ["pretrain", "--data", str(work / "missing.zarr"), "--out", str(work / "x")],
        "not a store": ["pretrain", "--data", str(plain), "--out", str(work / "x")],
        "NaN actions": ["pretrain", "--data", str(nan_store), "--out", str(work / "x")],
        "checkpoint shape mismatch": ["eval", "--run", str(run), "--env", "dmc/cheetah-run-v0", "--episodes", "1"],
        "unknown env id": ["collect", "--env", "dmc/nothing-v0", "--out", str(work / "y.zarr")],
    }
    ok, messages = 0, []
    for name, args in cases.items():
        proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        good = proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr
        ok += good
        messages.append(f"{name}: {lines[-1][:160] if lines else '(nothing)'}")
    return ok, len(cases), messages


def demo(work: Path) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--out", str(work / "demo")],
                          capture_output=True, text=True, cwd=ROOT)
    return {"ok": proc.returncode == 0 and "| expert" in proc.stdout, "seconds": time.time() - started,
            "table": proc.stdout[-1500:]}


def fresh_clone_test() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "clone", "-q", str(ROOT), tmp + "/repo"], check=True)
        started = time.time()
        proc = subprocess.run(["make", "test"], cwd=tmp + "/repo", capture_output=True, text=True)
        return {"ok": proc.returncode == 0, "seconds": time.time() - started, "tail": proc.stdout[-400:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--fresh-clone", action="store_true", help="also run `make test` in a fresh clone")
    args = p.parse_args()
    seeds = 1 if args.quick else args.seeds
    steps = 2_000 if args.quick else args.steps
    tag = "quick" if args.quick else f"s{steps}"
    work = WORK / "foundation"
    work.mkdir(parents=True, exist_ok=True)

    store = expert_store(work)
    results = [cached("foundation", f"bc-{tag}-seed{s}", lambda s=s: bc_seed(store, work, s, steps, steps // 5, 5))
               for s in range(seeds)]
    scores = [r["final_score"] for r in results]
    mean = sum(scores) / len(scores)
    iqm, lo, hi = iqm_ci(scores)
    plot_curves(results, RESULTS / "foundation_bc.png")
    rows = [row("bc_expert_normalized_score", round(mean, 2), "score", ">= 80",
                f"mean over {seeds} seeds of 20 eval episodes each; per seed {[round(s, 1) for s in scores]}; "
                f"IQM {iqm:.1f} [95% CI {lo:.1f}, {hi:.1f}]; {steps} updates, batch 256, "
                f"data: datasets/arm-reach-expert.yaml")]
    ok, total, messages = bad_inputs(work, store)
    rows.append(row("bad_input_refused_one_line", ok, "cases", f">= {total}", " | ".join(messages)))
    if not args.quick:
        d = cached("foundation", "demo", lambda: demo(work))
        rows.append(row("make_demo_runs", int(d["ok"]), "bool", ">= 1", f"agent demo printed the table in {d['seconds']:.0f} s"))
        rows.append(row("make_demo_seconds", round(d["seconds"], 1), "s", "< 600", "collect + pretrain + eval, 2 cores"))
    if args.fresh_clone:
        f = fresh_clone_test()
        rows.append(row("make_test_fresh_clone", int(f["ok"]), "bool", ">= 1", f"{f['seconds']:.0f} s incl. set-up; {f['tail'].strip().splitlines()[-1] if f['tail'].strip() else ''}"))
    print_rows(rows)
    write_results("foundation" + (".quick" if args.quick else ""), rows)
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
