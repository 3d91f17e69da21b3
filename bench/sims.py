"""Bars of the simulated tasks (docs/benchmarks.md): expert success, medium datasets' scores, env throughput.

    python bench/sims.py            # 100 expert episodes per task, the full medium recipes
    python bench/sims.py --quick    # 20 episodes, 40-episode medium datasets

Writes bench/results/sims.json (quick runs: sims.quick.json). Every piece of work is
cached under bench/results/_work/sims*/ so an interrupted run resumes; delete that
folder to measure again.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import cached, print_rows, row, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARM_TASKS = ["sims/ArmReach-v0", "sims/ArmPush-v0", "sims/ArmPickPlace-v0"]
RECIPES = {"sims/ArmReach-v0": "arm-reach", "sims/ArmPush-v0": "arm-push", "sims/ArmPickPlace-v0": "arm-pick-place"}
THROUGHPUT_ENV = "sims/ArmPickPlace-v0"


def expert_success(env_id: str, episodes: int) -> dict:
    import sims
    from sims.experts import make_expert

    env = sims.make(env_id)
    expert = make_expert(env_id, env)
    successes, returns = [], []
    for i in range(episodes):
        obs, info = env.reset(seed=20_000 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert(obs))
            total += reward
            done = terminated or truncated
        successes.append(bool(info["success"]))
        returns.append(total)
    return {"success_rate": float(np.mean(successes)), "return_mean": float(np.mean(returns))}


def medium_dataset(env_id: str, episodes: int | None) -> dict:
    """Collect the medium recipe into a scratch store; the normalized score of its data."""
    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml
    from sims.reference import normalized_score

    recipe = ROOT / "datasets" / f"{RECIPES[env_id]}-medium.yaml"
    data = load_yaml(recipe)
    scratch = tempfile.mkdtemp(prefix="bench-sims-")
    data.update(out=str(Path(scratch) / "store"), save_sim_state=False, num_envs=2)
    if episodes is not None:
        data["episodes"] = episodes
    try:
        result = collect(from_dict(CollectConfig, data), progress=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"normalized": normalized_score(env_id, result["return_mean"]), "episodes": result["collected"],
            "epsilon": data.get("epsilon", 0.0)}


def throughput_ratio(steps: int, reps: int) -> dict:
    """env.step vs a raw mj_step loop replaying the same controls, interleaved repetitions."""
    import sims

    env = sims.make(THROUGHPUT_ENV)
    u = env.unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 7))
    ratios, env_rates, raw_rates = [], [], []
    for rep in range(reps):
        env.reset(seed=rep)
        start = u.get_sim_state()
        ctrls = []
        for a in actions:  # record the controls the env applies, outside the timing
            env.step(a)
            ctrls.append(u.data.ctrl.copy())
        u.set_sim_state(start)
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        t_env = time.perf_counter() - t0
        u.set_sim_state(start)
        model, data, substeps = u.model, u.data, u.substeps
        t0 = time.perf_counter()
        for c in ctrls:
            data.ctrl[:] = c
            mujoco.mj_step(model, data, nstep=substeps)
        t_raw = time.perf_counter() - t0
        ratios.append(t_raw / t_env)
        env_rates.append(steps / t_env)
        raw_rates.append(steps / t_raw)
    return {"ratio": float(np.median(ratios)), "env": float(np.median(env_rates)), "raw": float(np.median(raw_rates))}


def _stepper(steps: int, ready, go, out) -> None:
    import sims

    env = sims.make(THROUGHPUT_ENV)
    env.reset(seed=0)
    actions = np.random.default_rng(1).uniform(-1, 1, (steps, 7))
    ready.put(True)
    go.wait()
    for i, a in enumerate(actions):
        if env.step(a)[3]:
            env.reset(seed=i)
    out.put(time.perf_counter())


def subprocess_rate(k: int, steps: int) -> float:
    """Total steps/s of k subprocess envs stepping at once (each steps ``steps`` times)."""
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_stepper, args=(steps, ready, go, out)) for _ in range(k)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    t0 = time.perf_counter()
    go.set()
    ends = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return k * steps / (max(ends) - t0)


def parallel_speedup(steps: int, reps: int) -> dict:
    ones, twos = [], []
    for _ in range(reps):  # interleaved
        ones.append(subprocess_rate(1, steps))
        twos.append(subprocess_rate(2, steps))
    return {"ratio": float(np.median(twos) / np.median(ones)), "one": float(np.median(ones)), "two": float(np.median(twos)),
            "load": float(os.getloadavg()[0])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 expert episodes, 40-episode medium datasets")
    args = parser.parse_args(argv)
    name = "sims.quick" if args.quick else "sims"
    episodes = 20 if args.quick else 100
    rows = []
    for env_id in ARM_TASKS:
        short = env_id.split("/")[1]
        res = cached(name, f"expert-{short}-{episodes}", lambda: expert_success(env_id, episodes))
        rows.append(row(f"expert_success_{short}", res["success_rate"], "fraction", ">= 0.9",
                        f"{episodes} episodes, mean return {res['return_mean']:.1f}"))
    for env_id in ARM_TASKS:
        short = env_id.split("/")[1]
        res = cached(name, f"medium-{short}", lambda: medium_dataset(env_id, 40 if args.quick else None))
        for target in (">= 25", "<= 45"):
            rows.append(row(f"medium_dataset_{short}{'_low' if '>' in target else '_high'}", res["normalized"], "normalized",
                            target, f"{res['episodes']} episodes of datasets/{RECIPES[env_id]}-medium.yaml (epsilon {res['epsilon']})"))
    res = cached(name, "throughput", lambda: throughput_ratio(300 if args.quick else 1000, 5 if args.quick else 9))
    rows.append(row("env_throughput_vs_raw_mj_step", res["ratio"], "ratio", ">= 0.7",
                    f"{THROUGHPUT_ENV}: env {res['env']:.0f} steps/s, raw mj_step loop {res['raw']:.0f} steps/s "
                    f"(25 substeps each, same controls, median of interleaved reps)"))
    res = cached(name, "parallel", lambda: parallel_speedup(500 if args.quick else 2000, 3 if args.quick else 5))
    rows.append(row("two_subprocess_envs_vs_one", res["ratio"], "ratio", ">= 1.6",
                    f"{THROUGHPUT_ENV}: one {res['one']:.0f} steps/s, two {res['two']:.0f} steps/s in total "
                    f"({os.cpu_count()} CPUs shared with other work, 1-min load average {res.get('load', float('nan')):.1f} "
                    f"after the run; median of interleaved reps)"))
    print_rows(rows)
    print(f"wrote {write_results(name, rows)}")


if __name__ == "__main__":
    main()
