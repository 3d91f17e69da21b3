"""``agent demo`` / ``make demo``: the whole path on the default task.

Collect random, medium and expert datasets with the task's scripted expert and noise,
pretrain BC on each, evaluate every policy in the simulator and print a table of
D4RL-style normalized scores (random policy, dataset, BC).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from agent.collect import CollectConfig, collect
from agent.envs import normalized_score
from agent.evaluate import evaluate
from agent.pretrain import PretrainConfig, pretrain
from agent.store import Store

DEFAULT_ENV = "dmc/reacher-hard-v0"


@dataclass
class Tier:
    name: str
    policy: str
    noise: float
    epsilon: float
    episodes: int
    seed: int


TIERS = [
    Tier("random", "random", 0.0, 0.0, 20, 1_000),
    Tier("medium", "scripted", 0.0, 0.9, 50, 2_000),
    Tier("expert", "scripted", 0.1, 0.0, 50, 3_000),
]


def run_demo(out: str | Path, env_id: str = DEFAULT_ENV, quick: bool = False) -> dict:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scale = 0.08 if quick else 1.0
    steps = 300 if quick else 20_000
    eval_episodes = 2 if quick else 10
    started = time.time()
    rows = []
    from sims.experts import RandomPolicy  # baseline policy for the table

    random_eval = evaluate(env_id, lambda env: RandomPolicy(env.action_space.shape[0], seed=0), eval_episodes, progress=True)
    for tier in TIERS:
        store_path = out / f"{tier.name}.zarr"
        collect(CollectConfig(env=env_id, policy=tier.policy, episodes=max(2, int(tier.episodes * scale)),
                              noise=tier.noise, epsilon=tier.epsilon, seed=tier.seed, quality=tier.name,
                              out=str(store_path)))
        store = Store.open(store_path)
        dataset_return = float(store.read("meta/episodes/return").mean())
        run_dir = out / f"bc-{tier.name}"
        pretrain(PretrainConfig(data=str(store_path), algo="bc", out=str(run_dir), steps=steps,
                                eval_episodes=0, checkpoint_every=steps, seed=0))
        from agent.policy import load_policy

        def make_policy(env, run_dir=run_dir):
            learner = load_policy(str(run_dir), env_id, env.observation_space.shape[0], env.action_space.shape[0])
            return lambda obs: learner.act(obs, deterministic=True)

        bc_eval = evaluate(env_id, make_policy, eval_episodes, progress=True)
        (run_dir / "eval.json").write_text(json.dumps(bc_eval, indent=2))
        rows.append({"dataset": tier.name, "episodes": store.num_episodes, "steps": store.num_steps,
                     "dataset_score": normalized_score(env_id, dataset_return),
                     "bc_score": bc_eval["normalized_score"], "bc_success": bc_eval["success_rate"]})
    table = {"env_id": env_id, "random_policy_score": random_eval["normalized_score"], "rows": rows,
             "seconds": round(time.time() - started, 1), "quick": quick}
    (out / "results.json").write_text(json.dumps(table, indent=2))
    print(format_table(table))
    return table


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(table: dict) -> str:
    lines = [
        f"Normalized scores on {table['env_id']} (100 = scripted expert, 0 = random policy)",
        f"random policy: {_fmt(table['random_policy_score'])}",
        "",
        f"| {'dataset':<8} | {'episodes':>8} | {'dataset score':>13} | {'BC score':>8} | {'BC success':>10} |",
        f"|{'-' * 10}|{'-' * 10}|{'-' * 15}|{'-' * 10}|{'-' * 12}|",
    ]
    for r in table["rows"]:
        lines.append(f"| {r['dataset']:<8} | {r['episodes']:>8} | {_fmt(r['dataset_score']):>13} | "
                     f"{_fmt(r['bc_score']):>8} | {_fmt(None if r['bc_success'] is None else 100 * r['bc_success']):>9}% |")
    lines.append(f"\n({table['seconds']} s)")
    return "\n".join(lines)
