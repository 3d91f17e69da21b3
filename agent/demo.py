"""``agent demo`` / ``make demo``: the whole path on the default task.

The default task is the project's own arm, ``sims/ArmReach-v0``. The demo collects its
random, medium and expert datasets from the recipes in ``datasets/`` (fewer episodes
than the full recipes), pretrains BC on each and IQL on the medium data, evaluates every
policy in the simulator and prints a table of D4RL-style normalized scores
(0 = uniform random policy, 100 = scripted expert). Then the online half: Cal-QL
pretrains on the medium data and ``--algo auto`` fine-tunes that policy in the simulator:
it compares the policy with its data, keeps or drops the data (WSRL when the policy is
clearly better), and the table's last lines give the decision and the score before and
after fine-tuning.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from agent.collect import CollectConfig, collect
from agent.config import from_dict, load_yaml
from agent.envs import normalized_score
from agent.evaluate import evaluate
from agent.pretrain import PretrainConfig, pretrain
from agent.store import Store

DEFAULT_ENV = "sims/ArmReach-v0"
RECIPES = Path(__file__).resolve().parents[1] / "datasets"
TIERS = ("random", "medium", "expert")
# offline RL runs on the medium tier, where imitation alone is not enough
OFFLINE_RL = {"algo": "iql", "iql": {"expectile": 0.9, "beta": 3.0}}
# the fine-tuning stage, sized for a CPU: Cal-QL with a 10-critic LayerNorm ensemble
# (what WSRL warm-starts from), then --algo auto online (WSRL or Cal-QL 50/50). The temperature learns 30x faster than
# the papers' 1e-4: from its start at 1.0 it must reach ~0.05 within a few thousand
# updates, not the papers' million, or the entropy bonus keeps the actor near uniform.
# WSRL's temperature learns at the same rate: online, without the conservative term, Q
# flattens over actions and at 1e-4 the entropy bonus widens the pretrained policy faster
# than the temperature falls (the dip this demo showed before: 81 -> 64).
CALQL = {"algo": "calql", "calql": {"hidden_dims": [128, 128], "num_critics": 10, "layer_norm": True, "num_sampled_actions": 4,
                                    "alpha_lr": 3e-3}}
CALQL_STEPS = 2_000
WSRL = {"warmup_steps": 1_000, "utd": 1, "batch_size": 256, "wsrl": {"alpha_lr": 3e-3}}
WSRL_STEPS = 3_000
# written first into --out, so that a later demo knows the directory for its own
MARKER = ".agent-demo"


def _outputs(out: Path) -> list[Path]:
    """Everything the demo writes under ``out``: all a rerun may remove."""
    runs = [f"bc-{tier}" for tier in TIERS] + [f"{OFFLINE_RL['algo']}-medium", "calql-medium", "auto-medium"]
    return [out / f"{tier}.zarr" for tier in TIERS] + [out / r for r in runs] + [out / "results.json", out / MARKER]


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: new or empty, or a previous demo's (only its outputs are removed)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; the demo needs a directory (new, empty, or a previous demo's).")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(f"--out {str(out)!r} holds files the demo did not write (no {MARKER} marker); "
                             f"choose a new or empty directory with --out, or delete {str(out)!r} if it only holds an "
                             f"older demo's output (`make demo` writes to runs/demo).")
        for path in _outputs(out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `agent demo`; a rerun replaces only the demo's own stores and runs here\n")


def _recipe(tier: str) -> dict:
    path = RECIPES / f"arm-reach-{tier}.yaml"
    if not path.is_file():
        raise ValueError(f"the demo's recipe {str(path)!r} is missing; run the demo from a checkout of the project.")
    return load_yaml(path)


def _evaluate_run(run_dir: Path, episodes: int) -> dict:
    from agent.policy import policy_maker

    result = evaluate(DEFAULT_ENV, policy_maker(str(run_dir), DEFAULT_ENV), episodes, progress=True)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def run_demo(out: str | Path, quick: bool = False) -> dict:
    out = Path(out)
    _prepare_out(out)
    episodes = 10 if quick else 100
    steps = 200 if quick else 5_000
    eval_episodes = 3 if quick else 20
    started = time.time()
    from sims.experts import RandomPolicy  # the baseline row of the table

    random_eval = evaluate(DEFAULT_ENV, lambda env: RandomPolicy(env.action_space.shape[0], seed=0), eval_episodes)
    rows = []
    for tier in TIERS:
        store_path = out / f"{tier}.zarr"
        collect(from_dict(CollectConfig, {**_recipe(tier), "episodes": episodes, "out": str(store_path),
                                          "num_envs": 1 if quick else 2}))
        dataset_return = float(Store.open(store_path).read("meta/episodes/return").mean())
        runs: dict[str, dict] = {"bc": {"algo": "bc"}}
        if tier == "medium":
            runs[OFFLINE_RL["algo"]] = OFFLINE_RL
        scores = {}
        for name, settings in runs.items():
            run_dir = out / f"{name}-{tier}"
            pretrain(from_dict(PretrainConfig, {"data": str(store_path), "out": str(run_dir), "steps": steps,
                                                "eval_episodes": 0, "checkpoint_every": steps, **settings}))
            scores[name] = _evaluate_run(run_dir, eval_episodes)
        rows.append({"dataset": tier, "episodes": episodes,
                     "dataset_score": normalized_score(DEFAULT_ENV, dataset_return),
                     **{f"{name}_score": r["normalized_score"] for name, r in scores.items()},
                     **{f"{name}_success": r["success_rate"] for name, r in scores.items()}})
    finetune = _finetune_stage(out, out / "medium.zarr", steps if quick else CALQL_STEPS, 300 if quick else WSRL_STEPS,
                               eval_episodes)
    table = {"env_id": DEFAULT_ENV, "random_policy_score": random_eval["normalized_score"], "rows": rows,
             "finetune": finetune, "updates": steps, "seconds": round(time.time() - started, 1), "quick": quick}
    (out / "results.json").write_text(json.dumps(table, indent=2))
    print(format_table(table))
    return table


def _finetune_stage(out: Path, store_path: Path, steps: int, online_steps: int, eval_episodes: int) -> dict:
    """Cal-QL offline on the medium data, then ``--algo auto`` online from it; its decision, scores before/after."""
    from agent.finetune import FinetuneConfig
    from agent.finetune import finetune as run_finetune
    from agent.finetune.report import load_run

    init = out / "calql-medium"
    pretrain(from_dict(PretrainConfig, {"data": str(store_path), "out": str(init), "steps": steps, "eval_episodes": 0,
                                        "checkpoint_every": steps, **CALQL}))
    run = out / "auto-medium"
    every = max(online_steps // 5, 1)
    summary = run_finetune(from_dict(FinetuneConfig, {
        "algo": "auto", "init": str(init), "env": DEFAULT_ENV, "out": str(run), "steps": online_steps, "eval_every": every,
        "eval_episodes": eval_episodes, "checkpoint_every": online_steps, "log_every": every,
        "auto": {"episodes": max(eval_episodes, 2)}, **{**WSRL, "warmup_steps": min(WSRL["warmup_steps"], online_steps // 3)}}))
    curve = load_run(str(run))
    return {"algo": summary["algo"], "init": "calql", "decision": summary["auto"], "online_steps": online_steps,
            "before": curve["values"][0], "after": curve["values"][-1], "curve": list(zip(curve["steps"], curve["values"]))}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(table: dict) -> str:
    algo = OFFLINE_RL["algo"].upper()
    lines = [
        f"Normalized scores on {table['env_id']} (0 = random policy, 100 = scripted expert), "
        f"{table['updates']} updates per run",
        f"random policy: {_fmt(table['random_policy_score'])}",
        "",
        f"| {'dataset':<8} | {'episodes':>8} | {'dataset':>8} | {'BC':>6} | {algo:>6} | {'BC success':>10} |",
        f"|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 12}|",
    ]
    for r in table["rows"]:
        success = r.get("bc_success")
        lines.append(f"| {r['dataset']:<8} | {r['episodes']:>8} | {_fmt(r['dataset_score']):>8} | {_fmt(r.get('bc_score')):>6} | "
                     f"{_fmt(r.get(OFFLINE_RL['algo'] + '_score')):>6} | "
                     f"{'-' if success is None else f'{100 * success:.0f}%':>10} |")
    ft = table.get("finetune")
    if ft:
        lines += ["", f"Fine-tuning online on {table['env_id']} ({ft['online_steps']} environment steps):",
                  f"--algo auto: {ft['decision']['branch']} the offline data -> {ft['algo']}, because "
                  f"{ft['decision']['reason']}",
                  f"Cal-QL on medium data (offline start) {_fmt(ft['before'])} -> {ft['algo']} {_fmt(ft['after'])}",
                  "  curve: " + ", ".join(f"{s}: {_fmt(v)}" for s, v in ft["curve"])]
    lines.append(f"\n({table['seconds']} s; stores and runs under the demo's --out directory)")
    return "\n".join(lines)
