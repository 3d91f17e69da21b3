"""Imperfect-data evidence (docs/benchmarks.md, "Data"): do the dataset measures mean what
they say, and do the tools for mixed, corrupted and partly unlabelled data help?

    python bench/data.py                    # every group (hours on 2 cores; resumable, run it again)
    python bench/data.py --only weighting   # some groups now (quality, weighting, corruption, action_free, prdc)
    python bench/data.py --quick            # tiny sizes, one seed: checks the pipeline, not the bars

Groups (``seeds`` seeds each; a run is an offline learner trained for ``steps`` updates and
scored over ``episodes`` evaluation episodes, normalized):

* ``quality``: the five arm-push tiers (datasets/arm-push-{random,medium,expert,mixed,replay}.yaml);
  TQ and SACo (against the replay tier, 4 intervals per dimension) per tier, BC and IQL on
  each. Rows: TQ orders random < medium < expert; BC's score tracks TQ (Spearman over tiers);
  IQL's gain over BC grows with SACo (Spearman); plot ``data_quality.png``.
* ``weighting``: arm reach, 5% expert and 95% random episodes; IQL with uniform and with
  return-weighted sampling (agent/trajectory_weights.py). Row: the gain, >= 15.
* ``corruption``: arm reach medium data with 30% of transitions corrupted, each kind
  (random mode, scale 1; rewards scale 0.1, U[-3, 3], since the arm's rewards are at most 1
  per step); IQL against RIQL, and both on the clean data. Rows: RIQL - IQL averaged over
  the kinds >= 10; on clean data >= -5.
* ``action_free``: arm reach medium with 90% of episodes made action-free and labelled by
  ``agent label``; IQL on that against IQL on the fully labelled data. Row: ratio >= 0.9.
* ``prdc``: arm push medium; PRDC against TD3+BC (IQL reported). Row: PRDC's IQM not below
  TD3+BC's interval.

Each run's score is written to ``bench/results/runs/data[.quick]/<key>.json`` as it finishes
(a rerun skips it); seeds run in parallel processes with one torch thread each.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import RESULTS, WORK, ci, collect_recipe, in_pool, iqm_ci, pool_parser, print_rows, row, write_results  # noqa: E402

GROUPS = ("quality", "weighting", "corruption", "action_free", "prdc")
TIERS = ("random", "medium", "expert", "mixed", "replay")
KINDS = ("obs", "action", "reward", "dynamics")
CPU = {"seeds": 5, "steps": 20_000, "episodes": 50, "batch": 256, "hidden": [256, 256], "data_episodes": None,
       "label_steps": 5_000, "forget": 0.9, "workers": 2}
QUICK = {**CPU, "seeds": 1, "steps": 200, "episodes": 2, "batch": 32, "hidden": [32, 32], "data_episodes": 10,
         "label_steps": 100, "forget": 0.7}


def recipe_store(work: Path, name: str, s: dict) -> str:
    """datasets/<name>.yaml collected into the work folder (once)."""
    return collect_recipe(f"{name}.yaml", work / f"{name}.zarr", s["data_episodes"])


def train_job(job: dict) -> dict:
    """One offline run, scored in the store's env."""
    import torch

    from agent.evaluate import evaluate
    from agent.policy import policy_maker
    from agent.pretrain import PretrainConfig, pretrain
    from agent.store import Store

    torch.set_num_threads(1)
    s, out = job["settings"], Path(job["out"])
    cfg = PretrainConfig(data=job["data"], algo=job["algo"], out=str(out), steps=s["steps"], seed=job["seed"],
                         batch_size=s["batch"], eval_episodes=0, checkpoint_every=max(s["steps"] // 4, 1),
                         log_every=max(s["steps"] // 20, 1), sampling=job.get("sampling", "uniform"))
    getattr(cfg, job["algo"]).hidden_dims = s["hidden"]
    start = time.time()
    pretrain(cfg, resume=(out / "checkpoints" / "latest.pt").exists(), progress=False)
    env_id = Store.open(job["data"]).env_id
    score = evaluate(env_id, policy_maker(str(out), env_id), s["episodes"])["normalized_score"]
    return {**{k: v for k, v in job.items() if k not in ("settings", "out")}, "score": float(score),
            "minutes": (time.time() - start) / 60}


def prepare(work: Path, s: dict, groups: list[str]) -> dict[str, str]:
    """Every store the groups train on, made once."""
    from agent.corrupt import CorruptConfig, corrupt
    from agent.label import LabelConfig, label

    stores: dict[str, str] = {}
    if "quality" in groups or "prdc" in groups:
        for tier in TIERS if "quality" in groups else ("medium",):
            stores[f"push-{tier}"] = recipe_store(work, f"arm-push-{tier}", s)
    if {"corruption", "action_free"} & set(groups):
        stores["reach-medium"] = recipe_store(work, "arm-reach-medium", s)
    if "corruption" in groups:
        for kind in KINDS:
            path = work / f"reach-{kind}.zarr"
            if not (path / "zarr.json").exists():
                corrupt(CorruptConfig(data=stores["reach-medium"], out=str(path), kind=kind, rate=0.3,
                                      scale=0.1 if kind == "reward" else 1.0))
            stores[f"reach-{kind}"] = str(path)
    if "action_free" in groups:
        partly, labelled = work / "reach-partly.zarr", work / "reach-labelled.zarr"
        if not (partly / "zarr.json").exists():
            label(LabelConfig(data=stores["reach-medium"], out=str(partly), forget=s["forget"]))
        if not (labelled / "zarr.json").exists():
            report = label(LabelConfig(data=str(partly), out=str(labelled), steps=s["label_steps"]))
            (work / "label_report.json").write_text(json.dumps({**report, "settings": {"forget": s["forget"]}}))
        stores["reach-labelled"] = str(labelled)
    if "weighting" in groups:
        path = work / "reach-mix5.zarr"
        if not (path / "zarr.json").exists():  # 5% expert, 95% random episodes in one store
            total = s["data_episodes"] or 200
            collect_recipe("arm-reach-expert.yaml", path, max(1, total // 20), append=True)
            collect_recipe("arm-reach-random.yaml", path, total - max(1, total // 20), append=True)
        stores["reach-mix5"] = str(path)
    return stores


def jobs_for(groups: list[str], stores: dict, s: dict, work: Path) -> list[dict]:
    plan = []
    for g in groups:
        if g == "quality":
            plan += [(g, f"push-{t}", a, "uniform") for t in TIERS for a in ("bc", "iql")]
        elif g == "weighting":
            plan += [(g, "reach-mix5", "iql", w) for w in ("uniform", "return")]
        elif g == "corruption":
            plan += [(g, f"reach-{k}", a, "uniform") for k in ("medium", *KINDS) for a in ("iql", "riql")]
        elif g == "action_free":
            plan += [(g, d, "iql", "uniform") for d in ("reach-medium", "reach-labelled")]
        elif g == "prdc":
            plan += [(g, "push-medium", a, "uniform") for a in ("prdc", "td3bc", "iql")]
    jobs = []
    for group, data, algo, sampling in dict.fromkeys(plan):
        for seed in range(s["seeds"]):
            key = f"{data}-{algo}-{sampling}-{seed}"
            jobs.append({"key": key, "group": group, "data_name": data, "data": stores[data], "algo": algo,
                         "sampling": sampling, "seed": seed, "settings": s, "out": str(work / key)})
    return jobs


def scores(name: str, data: str, algo: str, sampling: str = "uniform") -> list[float]:
    return [json.loads(p.read_text())["score"] for p in sorted((RESULTS / "runs" / name).glob(f"{data}-{algo}-{sampling}-*.json"))]


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def rows_for(name: str, groups: list[str], stores: dict, work: Path, quick: bool) -> tuple[list[dict], dict]:
    from agent.quality import store_quality
    from agent.store import Store

    rows, extra = [], {}
    if "quality" in groups and all(scores(name, f"push-{t}", "bc") for t in TIERS):
        ref = Store.open(stores["push-replay"])
        q = {t: store_quality(Store.open(stores[f"push-{t}"]), ref)["groups"]["all"] for t in TIERS}
        bc = {t: iqm_ci(scores(name, f"push-{t}", "bc"))[0] for t in TIERS}
        iql = {t: iqm_ci(scores(name, f"push-{t}", "iql"))[0] for t in TIERS if scores(name, f"push-{t}", "iql")}
        detail = "; ".join(f"{t}: TQ {q[t]['tq']:.2f} SACo {q[t]['saco']:.2f} BC {bc[t]:.1f}" + (f" IQL {iql[t]:.1f}" if t in iql else "")
                           for t in TIERS)
        ordered = float(q["random"]["tq"] < q["medium"]["tq"] < q["expert"]["tq"])
        rows += [row("quality_tq_orders_tiers", ordered, "bool", "== 1", detail),
                 row("quality_bc_tracks_tq", spearman([q[t]["tq"] for t in TIERS], [bc[t] for t in TIERS]), "spearman", ">= 0.7",
                     "BC's IQM against TQ over the five push tiers")]
        if len(iql) == len(TIERS):
            rows.append(row("quality_offline_rl_gain_grows_with_saco",
                            spearman([q[t]["saco"] for t in TIERS], [iql[t] - bc[t] for t in TIERS]), "spearman", "> 0",
                            "IQL - BC against SACo over the tiers"))
        extra["quality"] = {t: {**q[t], "bc": bc[t], "iql": iql.get(t)} for t in TIERS}
        plot_quality(RESULTS / f"{name}_quality.png", extra["quality"])
    if "weighting" in groups and (u := scores(name, "reach-mix5", "iql")) and (w := scores(name, "reach-mix5", "iql", "return")):
        rows.append(row("weighting_return_minus_uniform", iqm_ci(w)[0] - iqm_ci(u)[0], "points", ">= 15",
                        f"IQL on 5% expert + 95% random reach: return-weighted {ci(w)}, uniform {ci(u)}"))
    if "corruption" in groups:
        gaps = {k: iqm_ci(scores(name, f"reach-{k}", "riql"))[0] - iqm_ci(scores(name, f"reach-{k}", "iql"))[0]
                for k in ("medium", *KINDS) if scores(name, f"reach-{k}", "riql") and scores(name, f"reach-{k}", "iql")}
        if all(k in gaps for k in KINDS):
            rows.append(row("corruption_riql_minus_iql", float(np.mean([gaps[k] for k in KINDS])), "points", ">= 10",
                            "30% corrupted, random mode; per kind " + ", ".join(f"{k} {gaps[k]:+.1f}" for k in KINDS)))
        if "medium" in gaps:
            rows.append(row("corruption_riql_minus_iql_clean", gaps["medium"], "points", ">= -5", "clean reach medium data"))
    if "action_free" in groups and (full := scores(name, "reach-medium", "iql")) and (lab := scores(name, "reach-labelled", "iql")):
        report = json.loads((work / "label_report.json").read_text())
        rows.append(row("action_free_labelled_over_full", iqm_ci(lab)[0] / max(iqm_ci(full)[0], 1e-9), "ratio", ">= 0.9",
                        f"IQL with {100 * (1 - report.get('settings', {}).get('forget', 0.9)):.0f}% of episodes labelled, the rest by agent label (held-out MSE {report['heldout_mse']:.4f} "
                        f"vs {report['heldout_mse_of_the_mean_action']:.4f} for the mean action): {ci(lab)}; fully labelled {ci(full)}"))
    if "prdc" in groups and (p := scores(name, "push-medium", "prdc")) and (t := scores(name, "push-medium", "td3bc")):
        i = scores(name, "push-medium", "iql")
        rows.append(row("prdc_minus_td3bc_ci_low", iqm_ci(p)[0] - iqm_ci(t)[1], "points", ">= 0",
                        f"push medium: PRDC {ci(p)}; TD3+BC {ci(t)}" + (f"; IQL {ci(i)}" if i else "")))
    return rows, extra


def plot_quality(path: Path, quality: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    points = ax.scatter([v["saco"] for v in quality.values()], [v["tq"] for v in quality.values()],
                        c=[v["bc"] for v in quality.values()], cmap="viridis", s=60)
    for tier, v in quality.items():
        ax.annotate(tier, (v["saco"], v["tq"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    fig.colorbar(points, label="BC normalized score (IQM)")
    ax.set_xlabel("SACo (against the replay tier)")
    ax.set_ylabel("TQ")
    ax.set_title("arm push tiers: TQ, SACo and what BC gets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = pool_parser(__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated groups to run now ({', '.join(GROUPS)}); default all")
    args = parser.parse_args()
    s = QUICK if args.quick else CPU
    name = "data" + (".quick" if args.quick else "")
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    if unknown := sorted(set(groups) - set(GROUPS)):
        parser.error(f"--only expects groups from {', '.join(GROUPS)}; got {', '.join(unknown)}")
    start = time.time()
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    stores = prepare(work, s, groups)
    in_pool(name, train_job, jobs_for(groups, stores, s, work), args.workers or s["workers"])
    rows, extra = rows_for(name, groups, stores, work, args.quick)
    if rows:
        rows[0]["detail"] += f"; settings {json.dumps(s)}"
    print_rows(rows)
    out = write_results(name, rows, merge=True, extra=extra or None)
    print(f"wrote {out} in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
