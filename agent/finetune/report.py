"""``agent report RUN...``: learning curves (PNG) and a markdown table across fine-tuning runs.

Runs are grouped by algorithm (from each run's config.yaml); seeds of one algorithm are
aggregated at each evaluation step by the interquartile mean (IQM), with a 95%
percentile-bootstrap band over seeds. Step 0 is the offline start (the evaluation
before any online step), marked on the plot. Scores are normalized where the task
has reference returns, raw returns otherwise. Only fine-tuning runs are accepted, and
runs of one env per report (``per_env`` writes one report per env).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from agent.logger import read_metrics

# fields only `agent finetune` writes to a run's config.yaml
FINETUNE_FIELDS = ("init", "online_store")


def iqm(values) -> float:
    """Mean of the middle 50% (the whole mean below 4 values would trim nothing sensible)."""
    x = np.sort(np.asarray(values, np.float64))
    n = x.size
    if n < 4:
        return float(x.mean())
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(x[lo:hi].mean())


def iqm_band(values, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(values, np.float64)
    if x.size < 2:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    boots = [iqm(rng.choice(x, x.size)) for _ in range(reps)]
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def load_run(run_dir: str) -> dict:
    path = Path(run_dir)
    config = path / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{run_dir!r} is not a fine-tuning run directory (no config.yaml); pass directories written by `agent finetune`.")
    cfg = yaml.safe_load(config.read_text())
    if not isinstance(cfg, dict) or not all(k in cfg for k in FINETUNE_FIELDS):
        kind = "a pretraining run (`agent pretrain`)" if (path / "pretrain_summary.json").exists() or (
            isinstance(cfg, dict) and "bc" in cfg) else "not a fine-tuning run"
        raise ValueError(f"{run_dir!r} is {kind}, whose updates are offline; agent report plots the online steps of "
                         f"runs written by `agent finetune`.")
    rows = [r for r in read_metrics(path) if "eval/return_mean" in r]
    if not rows:
        raise ValueError(f"run {run_dir!r} has no evaluations in metrics.jsonl yet; run it with --eval-episodes above 0.")
    key = "eval/normalized_score" if all(r.get("eval/normalized_score") is not None for r in rows) else "eval/return_mean"
    curve: dict[int, float] = {}
    for r in rows:  # the last value per step wins (a resumed run redoes some)
        curve[int(r["step"])] = float(r[key])
    return {"run": str(path), "algo": cfg.get("algo", "?"), "env": cfg.get("env") or _checkpoint_env(path), "seed": cfg.get("seed"),
            "metric": key, "steps": sorted(curve), "values": [curve[s] for s in sorted(curve)]}


def _checkpoint_env(path: Path) -> str:
    """The env a run trained in when its config left it to the pretrained run."""
    from agent.checkpoint import load_checkpoint

    try:
        return str(load_checkpoint(path).get("env_id") or "")
    except ValueError:
        return ""


def summarize_algo(runs: list[dict], dip_window: float = 0.2) -> dict:
    steps = sorted(set().union(*(r["steps"] for r in runs)))
    curve = []
    for s in steps:
        vals = [r["values"][r["steps"].index(s)] for r in runs if s in r["steps"]]
        lo, hi = iqm_band(vals)
        curve.append({"step": s, "iqm": iqm(vals), "low": lo, "high": hi, "n": len(vals)})
    starts = [r["values"][0] for r in runs if r["steps"][0] == 0]
    finals = [r["values"][-1] for r in runs]
    dips = []
    for r in runs:
        if r["steps"][0] != 0:
            continue
        window = [v for s, v in zip(r["steps"], r["values"]) if s <= dip_window * r["steps"][-1]]
        dips.append(min(window) - r["values"][0])
    return {"seeds": len(runs), "metric": runs[0]["metric"], "curve": curve, "offline_start": iqm(starts) if starts else None,
            "final": iqm(finals), "final_ci": list(iqm_band(finals)), "dip": iqm(dips) if dips else None,
            "online_steps": max(r["steps"][-1] for r in runs)}


def markdown_table(algos: dict) -> str:
    lines = ["| algorithm | seeds | offline start | final (IQM) | 95% CI | worst dip, first 20% | online steps |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for name, s in algos.items():
        lines.append(f"| {name} | {s['seeds']} | {fmt(s['offline_start'])} | {fmt(s['final'])} | "
                     f"[{fmt(s['final_ci'][0])}, {fmt(s['final_ci'][1])}] | {fmt(s['dip'])} | {s['online_steps']} |")
    return "\n".join(lines) + "\n"


def plot(algos: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in algos.items():
        x = [c["step"] for c in s["curve"]]
        line, = ax.plot(x, [c["iqm"] for c in s["curve"]], label=f"{name} (n={s['seeds']})")
        ax.fill_between(x, [c["low"] for c in s["curve"]], [c["high"] for c in s["curve"]], color=line.get_color(), alpha=0.2)
        if s["offline_start"] is not None:
            ax.scatter([0], [s["offline_start"]], color=line.get_color(), marker="o", zorder=3)
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.annotate("offline start", xy=(0, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                textcoords="offset points", color="gray", fontsize=8)
    metric = next(iter(algos.values()))["metric"]
    ax.set_xlabel("online environment steps")
    ax.set_ylabel("normalized score" if metric == "eval/normalized_score" else "return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(run_dirs: list[str], out: str, title: str = "", per_env: bool = False) -> dict:
    """Write ``curves.png``, ``report.md`` and ``report.json`` to ``out``; runs of several
    envs are refused, or with ``per_env`` reported separately under ``out/<env>``."""
    if not run_dirs:
        raise ValueError("report needs at least one run directory.")
    runs = [load_run(r) for r in run_dirs]
    by_env: dict[str, list[dict]] = {}
    for r in runs:
        by_env.setdefault(r["env"], []).append(r)
    if len(by_env) > 1:
        if not per_env:
            listing = "; ".join(f"{env or 'unknown env'}: {', '.join(r['run'] for r in group)}" for env, group in by_env.items())
            raise ValueError(f"the runs are of {len(by_env)} envs ({listing}); report one env at a time, or pass "
                             f"--per-env for one report per env.")
        reports = {env: _report_one(group, Path(out) / (env.replace("/", "_") or "unknown-env"), title)
                   for env, group in by_env.items()}
        table = "".join(f"\n{env}:\n{r['table']}" for env, r in reports.items())
        result = {"envs": sorted(by_env), "reports": reports, "runs": [r["run"] for r in runs],
                  "png": ", ".join(r["png"] for r in reports.values()),
                  "markdown": ", ".join(r["markdown"] for r in reports.values()), "table": table}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.json").write_text(json.dumps(result, indent=2))
        return result
    return _report_one(runs, Path(out), title)


def _report_one(runs: list[dict], out_dir: Path, title: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["algo"], []).append(r)
    algos = {name: summarize_algo(group) for name, group in groups.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    envs = sorted({r["env"] for r in runs if r["env"]})
    plot(algos, out_dir / "curves.png", title or ", ".join(envs) or "fine-tuning")
    table = markdown_table(algos)
    (out_dir / "report.md").write_text(f"# Fine-tuning report: {', '.join(envs)}\n\n![curves](curves.png)\n\n{table}")
    result = {"envs": envs, "algos": algos, "runs": [r["run"] for r in runs], "png": str(out_dir / "curves.png"),
              "markdown": str(out_dir / "report.md"), "table": table}
    (out_dir / "report.json").write_text(json.dumps(result, indent=2))
    return result
