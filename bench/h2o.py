"""H2O evidence (docs/benchmarks.md, "H2O"): does the dynamics ratio measure dynamics, and does
H2O make better use of a simulator with a dynamics gap than the real data alone, the simulator
alone, or trusting every simulated row?

    python bench/h2o.py                   # arm reach: gates and performance (hours on 2 cores; resumable)
    python bench/h2o.py --task push       # the same table on arm push
    python bench/h2o.py --only zero,moderate --methods h2o-classifier   # some runs now
    python bench/h2o.py --quick           # tiny sizes, one seed: checks the pipeline, not the bars

Set-up: the "real robot" is the task's nominal env; the real data is 200 episodes of the
task's medium recipe collected there (datasets/arm-<task>-medium.yaml, with the physics
state of every step). The simulators are the same task with changed physics (``sims.gaps``):

* ``zero``: nominal physics (gate 1: the ratio must trust it);
* ``moderate``: gravity x1.6 (gate 2: the ratio must notice it);
* ``large``: gravity x2;
* ``friction``: friction x0.3, a control the arm never feels on reach (it touches nothing);
  measured by its paired gap only.

Each gap's size is measured, not assumed: ``sims.gaps.paired_gap`` restores the simulator to
1000 of the real data's states, replays the recorded action and compares next states in units
of the data's std. Every row states it.

Runs per gap (``seeds`` seeds, ``online_steps`` simulator steps; every evaluation in the
nominal env, 20 episodes, a run's "final" the mean of its last three evaluations):

* ``h2o-conditional``, ``h2o-classifier``: H2O with each dynamics-ratio estimator, 50/50
  real/sim batches, UTD 1; its own policy collects from the first step (no uniform-random
  warm-up, as in the released code);
* ``h2o-w1``: H2O with the default estimator and w fixed at 1 (``ratio_min`` 1): the same
  updates with every simulated row trusted (naive mixing, penalty kept);
* ``sac-sim``: SAC in the simulator alone;
* ``iql-real`` (once per seed): IQL on the real data alone, 20k offline updates, scored over
  50 episodes.

After each H2O run its final policy collects ``heldout`` simulator transitions the run never
trained on, and the estimator's w on them (exactly as the critic would weight them) is
recorded: median, and the mean of log w. Finished runs are written to
``bench/results/runs/<bench>/<key>.json`` as they finish (a rerun skips them); seeds run in
parallel processes with one torch thread each.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import (RESULTS, WORK, ci, collect_recipe, in_pool, iqm_ci, pool_parser, print_rows, row, saved,  # noqa: E402
                    write_results)

TASKS = {"reach": ("sims/ArmReach-v0", "arm-reach-medium.yaml"), "push": ("sims/ArmPush-v0", "arm-push-medium.yaml")}
GAPS = {"zero": {}, "moderate": {"gravity_scale": 1.6}, "large": {"gravity_scale": 2.0}}
CONTROLS = {"friction": {"friction_scale": 0.3}}
METHODS = ("h2o-conditional", "h2o-classifier", "h2o-w1", "sac-sim")
DEFAULT_RATIO = "conditional"  # the estimator h2o-w1 keeps (its penalty's omega); the library default after the gates
# CPU-sized settings, stated in every results file: H2O's own network widths (2x256) and batch
# 256; the temperature starts at 0.1 for every learner from scratch (at 1.0 the entropy bonus
# outweighs the arm's reward, at most 1 per step, for thousands of updates).
CPU = {"seeds": 3, "episodes": 200, "online_steps": 10_000, "eval_every": 1_000, "eval_episodes": 20, "hidden": [256, 256],
       "batch": 256, "warmup": 1_000, "initial_alpha": 0.1, "alpha_lr": 3e-3, "iql_steps": 20_000, "iql_episodes": 50,
       "heldout": 1_000, "gap_transitions": 1_000, "workers": 2}
TASK_SETTINGS = {"push": {"online_steps": 30_000, "eval_every": 2_500}}
QUICK = {**CPU, "seeds": 1, "episodes": 10, "online_steps": 600, "eval_every": 200, "eval_episodes": 2, "hidden": [32, 32],
         "batch": 32, "warmup": 100, "iql_steps": 200, "iql_episodes": 2, "heldout": 50, "gap_transitions": 50}


def collect_real(work: Path, s: dict, task: str) -> str:
    return collect_recipe(TASKS[task][1], work / f"{task}-real.zarr", s["episodes"])


def gap_job(job: dict) -> dict:
    """The paired gap of one simulator against the real data."""
    from agent.store import Store
    from agent.store.cache import sim_state_transitions
    from sims.gaps import paired_gap

    start = time.time()
    measured = paired_gap(job["env"], job["gap"], sim_state_transitions(Store.open(job["data"])), job["transitions"])
    return {"gap": measured["gap"], "sim": measured["sim"], "transitions": measured["transitions"],
            "minutes": (time.time() - start) / 60}


def heldout_weights(run: str, env_id: str, gap: dict, steps: int, seed: int) -> dict:
    """w on simulator transitions the run never saw, collected by its final (sampling) policy."""
    import torch

    from agent.policy import load_policy
    from sims import make

    env = make(env_id, **gap)
    learner = load_policy(run, env_id, int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape)))
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {"obs": [], "action": [], "next_obs": []}
    for _ in range(steps):
        action = learner.act(obs, deterministic=False)
        next_obs, _, terminated, truncated, _ = env.step(action)
        for k, v in (("obs", obs), ("action", action), ("next_obs", next_obs)):
            rows[k].append(np.asarray(v, np.float32))
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    w = learner.td_weights(*(torch.as_tensor(np.stack(rows[k])) for k in ("obs", "action", "next_obs"))).numpy()
    return {"median_w": float(np.median(w)), "mean_log_w": float(np.mean(np.log(w))), "share_w_below_half": float(np.mean(w < 0.5))}


def run_job(job: dict) -> dict:
    """One online run (H2O variants, SAC in the simulator) and, for H2O, its held-out weights."""
    import torch

    from agent.finetune import FinetuneConfig, finetune
    from agent.finetune.report import load_run
    from agent.logger import read_metrics

    torch.set_num_threads(1)
    s, out, method = job["settings"], Path(job["out"]), job["method"]
    algo = "sac" if method == "sac-sim" else "h2o"
    cfg = FinetuneConfig(algo=algo, env=job["env"], out=str(out), steps=s["online_steps"], seed=job["seed"],
                         batch_size=s["batch"], eval_every=s["eval_every"], eval_episodes=s["eval_episodes"],
                         checkpoint_every=s["eval_every"], log_every=max(s["eval_every"] // 5, 1),
                         sim_gap=[f"{k}={v}" for k, v in job["gap"].items()], warmup_steps=s["warmup"])
    section = getattr(cfg, algo)
    section.hidden_dims, section.initial_alpha, section.alpha_lr = s["hidden"], s["initial_alpha"], s["alpha_lr"]
    if algo == "h2o":
        cfg.real_data, cfg.warmup_policy = job["data"], "policy"
        cfg.h2o.discriminator_dims = cfg.h2o.model_dims = s["hidden"]
        cfg.h2o.ratio = DEFAULT_RATIO if method == "h2o-w1" else method.removeprefix("h2o-")
        if method == "h2o-w1":
            cfg.h2o.ratio_min = 1.0
    else:
        cfg.warmup_policy = "random"  # SAC's own recipe
    resume = (out / "checkpoints" / "latest.pt").exists()
    if not resume and out.exists():  # killed before its first checkpoint: start afresh
        shutil.rmtree(out)
    start = time.time()
    finetune(cfg, resume=resume, progress=False)
    run = load_run(str(out))
    logged = [r for r in read_metrics(out) if "train/w_p50" in r]
    result = {"method": method, "gap_name": job["gap_name"], "seed": job["seed"], "steps": run["steps"], "values": run["values"],
              "train_w_p50": [r["train/w_p50"] for r in logged]}
    if algo == "h2o":
        result["heldout"] = heldout_weights(str(out), job["env"], job["gap"], s["heldout"], 50_000 + job["seed"])
    return {**result, "minutes": (time.time() - start) / 60}


def iql_job(job: dict) -> dict:
    """IQL on the real data alone, scored in the nominal env."""
    import torch

    from agent.evaluate import evaluate
    from agent.policy import policy_maker
    from agent.pretrain import PretrainConfig, pretrain

    torch.set_num_threads(1)
    s, out = job["settings"], Path(job["out"])
    cfg = PretrainConfig(data=job["data"], algo="iql", out=str(out), steps=s["iql_steps"], seed=job["seed"], batch_size=s["batch"],
                         eval_every=s["iql_steps"], eval_episodes=s["eval_episodes"], checkpoint_every=s["iql_steps"] // 4,
                         log_every=max(s["iql_steps"] // 20, 1))
    cfg.iql.hidden_dims = s["hidden"]
    start = time.time()
    pretrain(cfg, resume=(out / "checkpoints" / "latest.pt").exists(), progress=False)
    score = evaluate(job["env"], policy_maker(str(out), job["env"]), s["iql_episodes"])["normalized_score"]
    return {"method": "iql-real", "seed": job["seed"], "score": float(score), "minutes": (time.time() - start) / 60}


def final(result: dict) -> float:
    return float(np.mean(result["values"][-3:]))


def paired_iqm(a: list[dict], b: list[dict], score=final) -> tuple[float, str]:
    """IQM of the seed-paired differences a - b, with its CI, over the seeds both have."""
    by_seed = {r["seed"]: r for r in b}
    diffs = [score(r) - score(by_seed[r["seed"]]) for r in a if r["seed"] in by_seed]
    if not diffs:
        return float("nan"), "no paired seeds"
    return iqm_ci(diffs)[0], ci(diffs) + " (seed-paired differences)"


def task_rows(s: dict, gaps: dict, runs: dict, iql: list[dict], default: str) -> list[dict]:
    """The gates and the performance rows; ``runs[(gap_name, method)]`` lists finished seeds."""
    rows = []
    gap_note = {name: f"paired gap {g['gap']:.3f} std ({json.dumps(g['sim'])})" for name, g in gaps.items()}
    heldout = {k: [r["heldout"] for r in v if "heldout" in r] for k, v in runs.items()}
    for ratio in ("conditional", "classifier"):
        zero, moderate = heldout.get(("zero", f"h2o-{ratio}")), heldout.get(("moderate", f"h2o-{ratio}"))
        tag = "" if ratio == default else f"_{ratio}"
        if zero:
            medians = [h["median_w"] for h in zero]
            rows.append(row(f"gate1_median_w_zero_gap{tag}", float(np.median(medians)), "w", ">= 0.5",
                            f"H2O ({ratio} ratio), median over seeds of the held-out median w: "
                            + ", ".join(f"{m:.3f}" for m in medians) + f"; {gap_note['zero']}"))
        if zero and moderate:
            drop = float(np.mean([h["mean_log_w"] for h in zero]) - np.mean([h["mean_log_w"] for h in moderate]))
            rows.append(row(f"gate2_log_w_drop_moderate{tag}", drop, "nats", "> 1",
                            f"H2O ({ratio} ratio), mean held-out log w: zero gap "
                            + ", ".join(f"{h['mean_log_w']:.2f}" for h in zero) + "; moderate "
                            + ", ".join(f"{h['mean_log_w']:.2f}" for h in moderate) + f"; {gap_note['moderate']}"))
    h2o = f"h2o-{default}"
    zero_h2o, zero_w1 = runs.get(("zero", h2o)), runs.get(("zero", "h2o-w1"))
    if zero_h2o and zero_w1:
        point = iqm_ci([final(r) for r in zero_h2o])[0]
        low = iqm_ci([final(r) for r in zero_w1])[1]
        rows.append(row("gate1_h2o_minus_w1_ci_low_zero_gap", point - low, "points", ">= 0",
                        f"H2O ({default}) final {ci([final(r) for r in zero_h2o])}; w fixed at 1 "
                        f"{ci([final(r) for r in zero_w1])}; {gap_note['zero']}"))
    iql_iqm = iqm_ci([r["score"] for r in iql])[0] if iql else None
    for gap in ("moderate", "large"):
        ours, w1, sac = runs.get((gap, h2o)), runs.get((gap, "h2o-w1")), runs.get((gap, "sac-sim"))
        if not (ours and w1 and iql):
            continue
        w1_iqm = iqm_ci([final(r) for r in w1])[0]
        note = (f"H2O {ci([final(r) for r in ours])}; w=1 {ci([final(r) for r in w1])}; IQL on the real data "
                f"{ci([r['score'] for r in iql])}" + (f"; SAC in the sim {ci([final(r) for r in sac])}" if sac else "")
                + f"; {gap_note[gap]}")
        if w1_iqm < iql_iqm:  # naive mixing hurts here: H2O must beat all three
            value, paired = paired_iqm(ours, w1)
            rows.append(row(f"h2o_minus_w1_{gap}", value, "points", "> 0", f"{paired}; {note}"))
            iql_by_seed = {r["seed"]: {"values": [r["score"]] * 3, "seed": r["seed"]} for r in iql}
            value, paired = paired_iqm(ours, list(iql_by_seed.values()))
            rows.append(row(f"h2o_minus_iql_real_{gap}", value, "points", "> 0", paired))
            if sac:
                value, paired = paired_iqm(ours, sac)
                rows.append(row(f"h2o_minus_sac_sim_{gap}", value, "points", "> 0", paired))
        else:  # benign gap: trusting every row already beats the real data alone
            value, paired = paired_iqm(ours, w1)
            rows.append(row(f"h2o_minus_w1_benign_{gap}", value, "points", ">= -3", f"{paired}; {note}"))
    return rows


def table(gaps: dict, runs: dict, iql: list[dict]) -> str:
    lines = ["| gap | paired gap (std) | method | final (IQM [95% CI]) | held-out median w | held-out mean log w |",
             "|---|---|---|---|---|---|"]
    for (gap, method), rs in sorted(runs.items(), key=lambda kv: (list(GAPS).index(kv[0][0]), METHODS.index(kv[0][1]))):
        point, lo, hi = iqm_ci([final(r) for r in rs])
        held = [r["heldout"] for r in rs if "heldout" in r]
        w = ", ".join(f"{h['median_w']:.2f}" for h in held) if held else "-"
        lw = ", ".join(f"{h['mean_log_w']:.2f}" for h in held) if held else "-"
        lines.append(f"| {gap} | {gaps[gap]['gap']:.3f} | {method} | {point:.1f} [{lo:.1f}, {hi:.1f}] ({len(rs)} seeds) | {w} | {lw} |")
    if iql:
        point, lo, hi = iqm_ci([r["score"] for r in iql])
        lines.append(f"| none | - | iql-real | {point:.1f} [{lo:.1f}, {hi:.1f}] ({len(iql)} seeds) | - | - |")
    for name in CONTROLS:
        if name in gaps:
            lines.append(f"| {name} (control) | {gaps[name]['gap']:.3f} | - | - | - | - |")
    return "\n".join(lines)


def plot(path: Path, title: str, runs: dict, iql: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = [g for g in GAPS if any(k[0] == g for k in runs)]
    fig, axes = plt.subplots(1, len(gaps), figsize=(4.5 * len(gaps), 3.6), squeeze=False, sharey=True)
    for ax, gap in zip(axes[0], gaps):
        for method in METHODS:
            rs = runs.get((gap, method))
            if not rs:
                continue
            steps = rs[0]["steps"]
            values = np.array([r["values"][:len(steps)] for r in rs if len(r["values"]) >= len(steps)])
            ax.plot(steps, values.mean(0), label=method)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
        if iql:
            ax.axhline(np.mean([r["score"] for r in iql]), color="k", ls="--", lw=1, label="iql-real")
        ax.set_title(f"{gap} gap")
        ax.set_xlabel("simulator steps")
    axes[0][0].set_ylabel("normalized score (nominal env)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = pool_parser(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="reach", help="reach (default) or push")
    parser.add_argument("--only", default="", help=f"comma-separated gaps to run now ({', '.join(GAPS)}); default all")
    parser.add_argument("--methods", default="", help=f"comma-separated methods to run now ({', '.join(METHODS)}, iql-real)")
    args = parser.parse_args()
    s = QUICK if args.quick else {**CPU, **TASK_SETTINGS.get(args.task, {})}
    name = "h2o" + (f".{args.task}" if args.task != "reach" else "") + (".quick" if args.quick else "")
    gap_names = [g for g in args.only.split(",") if g] or list(GAPS)
    methods = [m for m in args.methods.split(",") if m] or [*METHODS, "iql-real"]
    unknown = sorted(set(gap_names) - set(GAPS)) + sorted(set(methods) - {*METHODS, "iql-real"})
    if unknown:
        parser.error(f"--only expects gaps from {', '.join(GAPS)} and --methods from {', '.join(METHODS)}, iql-real; "
                     f"got {', '.join(unknown)}")
    start, env_id = time.time(), TASKS[args.task][0]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    data = collect_real(work, s, args.task)
    workers = args.workers or s["workers"]
    all_gaps = {**GAPS, **(CONTROLS if args.task == "reach" else {})}
    gaps = in_pool(name, gap_job, [{"key": f"gap-{g}", "env": env_id, "gap": v, "data": data, "transitions": s["gap_transitions"]}
                                   for g, v in all_gaps.items()], workers)
    gaps = {k.removeprefix("gap-"): v for k, v in gaps.items()}
    seeds = range(s["seeds"])
    base = {"settings": s, "data": data, "env": env_id}
    iql_jobs = [{**base, "seed": seed, "key": f"iql-real-{seed}", "out": str(work / f"iql-real-{seed}")} for seed in seeds]
    jobs = [{**base, "seed": seed, "gap_name": g, "gap": GAPS[g], "method": m, "key": f"{m}-{g}-{seed}", "out": str(work / f"{m}-{g}-{seed}")}
            for g in GAPS for m in METHODS for seed in seeds
            if not (m == "sac-sim" and g == "zero")]  # SAC in a nominal sim is online RL in the real env: no bar reads it
    in_pool(name, iql_job, [j for j in iql_jobs if "iql-real" in methods], workers)
    in_pool(name, run_job, [j for j in jobs if j["gap_name"] in gap_names and j["method"] in methods], workers)

    runs: dict[tuple[str, str], list[dict]] = {}
    for job in jobs:
        if (result := saved(name, job["key"])) is not None:
            runs.setdefault((job["gap_name"], job["method"]), []).append(result)
    iql = [r for j in iql_jobs if (r := saved(name, j["key"])) is not None]
    rows = task_rows(s, gaps, runs, iql, DEFAULT_RATIO)
    for r in rows:
        r["detail"] += f"; {env_id}"
    if rows:
        rows[0]["detail"] += f"; settings {json.dumps(s)}"
    md = table(gaps, runs, iql)
    print(md)
    print_rows(rows)
    (RESULTS / f"{name}.md").write_text(md + "\n")
    if runs:
        plot(RESULTS / f"{name}.png", f"H2O on {env_id}: real data {s['episodes']} medium episodes, simulators with a dynamics gap",
             runs, iql)
    out = write_results(name, rows, merge=True, extra={"gaps": gaps})
    print(f"wrote {out} in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
