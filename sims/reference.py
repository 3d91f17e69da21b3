"""Reference returns for D4RL-style normalized scores, and task success rules.

``reference_returns.json`` beside this file maps an env id to the random policy's and
the expert's mean undiscounted episode return and says how each was obtained. It is
written by ``python -m sims.reference --measure ENV_ID ...``, which rolls out the
uniform random policy and the task's scripted expert (where one exists; otherwise the
suite's maximum return of 1000 is recorded as the expert reference).
"""
from __future__ import annotations

import argparse
import json
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

_NAME = "reference_returns.json"
_PATH = Path(__file__).with_name(_NAME)  # where --measure writes: a source checkout
SUITE_MAX_RETURN = 1000.0


def _table() -> dict:
    # read as package data, so an installed wheel finds the table it ships
    table = resources.files("sims").joinpath(_NAME)
    return json.loads(table.read_text()) if table.is_file() else {}


def reference_returns(env_id: str) -> tuple[float, float] | None:
    ref = _table().get(env_id)
    return None if ref is None else (float(ref["random"]), float(ref["expert"]))


def normalized_score(env_id: str, ret: float) -> float | None:
    """100 * (R - R_random) / (R_expert - R_random), or None without references."""
    ref = reference_returns(env_id)
    if ref is None:
        return None
    lo, hi = ref
    return 100.0 * (ret - lo) / (hi - lo)


def _reacher_success(physics) -> bool:
    radii = physics.named.model.geom_size[["target", "finger"], 0].sum()
    return bool(np.linalg.norm(physics.finger_to_target()) <= radii)


_SUCCESS: dict[str, Callable] = {
    "dmc/reacher-easy-v0": _reacher_success,
    "dmc/reacher-hard-v0": _reacher_success,
}


def success_fn(env_id: str) -> Callable | None:
    return _SUCCESS.get(env_id)


def measure(env_id: str, episodes: int = 100, seed: int = 50_000) -> dict:
    import sims
    from sims.experts import RandomPolicy, has_expert, make_expert

    env = sims.make(env_id)

    def mean_return(policy) -> float:
        total = []
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            ret, done = 0.0, False
            while not done:
                obs, r, terminated, truncated, _ = env.step(policy(obs))
                ret += r
                done = terminated or truncated
            total.append(ret)
        return float(np.mean(total))

    random_ret = mean_return(RandomPolicy(env.action_space.shape[0], seed=seed))
    if has_expert(env_id):
        expert_ret, how = mean_return(make_expert(env_id, env)), f"random and scripted expert, {episodes} episodes each"
    else:
        expert_ret, how = SUITE_MAX_RETURN, f"random policy, {episodes} episodes; expert = the suite's maximum return"
    env.close()
    return {"random": round(random_ret, 3), "expert": round(expert_ret, 3), "how": how, "date": date.today().isoformat()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Measure and record reference returns.")
    parser.add_argument("--measure", nargs="+", metavar="ENV_ID", required=True)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args(argv)
    table = _table()
    for env_id in args.measure:
        table[env_id] = measure(env_id, args.episodes)
        print(env_id, table[env_id], flush=True)
        _PATH.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
