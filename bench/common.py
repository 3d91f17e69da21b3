"""Shared pieces of the benchmarks: results files in the format of docs/benchmarks.md, resumable
per-seed work, IQM with bootstrap confidence intervals, machine description."""
from __future__ import annotations

import json
import operator
import os
import platform
import re
import sys
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / "_work"

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def holds(value, target: str) -> bool:
    """Evaluate a target such as '>= 80' or '< 2' against a value."""
    match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*(-?[0-9.eE+-]+)\s*", target)
    if not match:
        raise ValueError(f"target {target!r} is not of the form '<op> <number>'")
    if value is None:
        return False
    return bool(_OPS[match.group(1)](float(value), float(match.group(2))))


def row(name: str, value, unit: str, target: str, detail: str = "") -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "holds": holds(value, target), "detail": detail}


def machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} vCPU {platform.machine()}, {mem:.0f} GiB, {gpu} "
            f"({platform.system()} {platform.release()}, python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__})")


def write_results(name: str, rows: list[dict], command: str | None = None, merge: bool = False,
                  extra: dict | None = None) -> Path:
    """Write bench/results/<name>.json. With ``merge``, rows of an earlier run whose
    names this run did not measure are kept (a bench run in parts); ``extra`` adds
    top-level keys after the rows (lists a row's detail refers to)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    command = command or "python " + " ".join(sys.argv)
    if merge and out.exists():
        earlier = json.loads(out.read_text())
        names = {r["name"] for r in rows}
        kept = [r for r in earlier.get("rows", []) if r["name"] not in names]
        rows = kept + rows
        if kept:
            command = f"{earlier.get('command')}; {command}"
    payload = {"bench": name, "machine": machine(), "date": date.today().isoformat(), "command": command, "rows": rows,
               **(extra or {})}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def print_rows(rows: list[dict]) -> None:
    print(f"{'bar':<38}{'value':>12} {'unit':<10}{'target':>10}  holds  detail")
    for r in rows:
        value = r["value"] if not isinstance(r["value"], float) else f"{r['value']:.3g}"
        print(f"{r['name']:<38}{value!s:>12} {r['unit']:<10}{r['target']:>10}  {str(r['holds']):<5}  {r['detail']}")


def cached(bench: str, key: str, compute):
    """Return the saved result of ``key`` or compute and save it (resumable work)."""
    path = WORK / bench / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def iqm_ci(scores: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean and a 95% bootstrap confidence interval over runs (rliable's
    stratified bootstrap when it imports; otherwise the same percentile bootstrap over
    runs, which for one task is what the stratified one reduces to)."""
    x = np.asarray(scores, np.float64)
    try:
        from rliable import library as rly
        from rliable import metrics

        point, ci = rly.get_interval_estimates({"m": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps)
        return float(point["m"][0]), float(ci["m"][0, 0]), float(ci["m"][1, 0])
    except Exception:  # rliable missing, or its `arch` dependency broken by a newer pandas
        from scipy import stats

        def iqm(v):
            return float(stats.trim_mean(v, 0.25))

        rng = np.random.default_rng(seed)
        boots = [iqm(rng.choice(x, x.size)) for _ in range(reps)]
        return iqm(x), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def runs_dir(name: str) -> Path:
    """Where a bench keeps one JSON per finished run (committed, so reruns skip them)."""
    return RESULTS / "runs" / name


def saved(name: str, key: str) -> dict | None:
    path = runs_dir(name) / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save(name: str, key: str, result: dict) -> None:
    path = runs_dir(name) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def _call(task):
    """One job; a failure comes back as its traceback, so that the other runs in the pool go on."""
    import traceback

    fn, job = task
    try:
        return job["key"], fn(job)
    except Exception:
        return job["key"], {"error": traceback.format_exc()}


def in_pool(name: str, fn, jobs: list[dict], workers: int) -> dict[str, dict]:
    """Run ``fn(job)`` for the jobs whose result is not saved yet, ``workers`` processes at a time
    (spawned, so each sets its own torch threads); each result is saved as it finishes."""
    import multiprocessing

    todo = [(fn, j) for j in jobs if saved(name, j["key"]) is None]
    if todo:
        with multiprocessing.get_context("spawn").Pool(max(1, min(workers, len(todo)))) as pool:
            for key, result in pool.imap_unordered(_call, todo):
                if "error" in result:
                    print(f"  FAILED {key} (not saved; a rerun retries it):\n{result['error']}", flush=True)
                    continue
                save(name, key, result)
                print(f"  finished {key} ({result.get('minutes', 0):.1f} min)", flush=True)
    return {j["key"]: saved(name, j["key"]) for j in jobs if saved(name, j["key"]) is not None}


def ci(values) -> str:
    point, lo, hi = iqm_ci(values)
    return f"IQM {point:.1f} [{lo:.1f}, {hi:.1f}] over {len(values)} seeds"


def collect_recipe(recipe: str, path: Path, episodes: int | None = None, append: bool = False) -> str:
    """Episodes of ``datasets/<recipe>`` (with ``episodes`` to change its count) into the store
    ``path``: once (skipped when the store is there), or appended with ``append``."""
    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml

    if append or not (path / "zarr.json").exists():
        config = {**load_yaml(RESULTS.parents[1] / "datasets" / recipe), "out": str(path)}
        if episodes:
            config["episodes"] = episodes
        collect(from_dict(CollectConfig, config), progress=False)
    return str(path)


def pool_parser(doc: str):
    """The arguments every per-run bench takes: --quick and --workers."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one seed (pipeline check, not the bars)")
    parser.add_argument("--workers", type=int, default=None, help="runs in parallel (default 2), one torch thread each")
    return parser
