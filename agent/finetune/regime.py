"""Regime-aware fine-tuning (``agent finetune --algo auto``): keep the offline data or drop it.

"The Three Regimes of Offline-to-Online RL" (2025) finds that what helps online depends
on whether the pretrained policy is better than the data it was trained on: when it is,
the data holds the policy back and fine-tuning should drop it (WSRL); when it is not,
the data still teaches and every batch should keep a share of it (Cal-QL 50/50, RLPD,
IQL). ``auto`` measures that before the first online step: the pretrained policy's
deterministic returns over ``--auto.episodes`` evaluation episodes against the returns of
the offline data's episodes, and a bootstrap confidence interval on the difference of
their means. The policy is "clearly better" when the interval's lower end lies above
``--auto.margin``; anything else (data better, or a tie) keeps the data.

Branches, by the algorithm of the ``--init`` run:

============  =============================  ===================================
init          drop the data                  keep the data (50/50 batches)
============  =============================  ===================================
calql         WSRL                           Cal-QL
cql, sacn     WSRL                           WSRL's learner with 50/50 batches
iql           IQL on online data only        IQL
============  =============================  ===================================

A drop branch starts updating only after a warm-up (``--auto.drop-warmup-steps`` env steps
with the pretrained policy, 5,000 as WSRL's, unless ``--warmup-steps`` is given), so that
online-only batches are not drawn from a buffer of one episode; IQL online-only without it
fell from 33 to 0 within 2,500 steps on arm push. A keep branch takes its algorithm's own
warm-up (none for Cal-QL and IQL, WSRL's for the WSRL learner with 50/50 batches).

The decision is printed, saved as ``auto_decision.json`` in the run directory, logged
under ``auto/`` at step 0 and returned in the run's summary; a resumed run reuses it.
``--auto.branch drop|keep`` forces a branch (the measurement still runs and is saved).
The evaluation runs in the env fine-tuning runs in (``--env``, ``--env-kwargs``), before
anything else: on a robot, on the arm, in the process that starts the run.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from agent.config import option

DECISION_FILE = "auto_decision.json"

# (init algorithm, branch) -> (algorithm run, offline share of each batch)
BRANCHES: dict[tuple[str, str], tuple[str, float]] = {
    ("calql", "drop"): ("wsrl", 0.0), ("calql", "keep"): ("calql", 0.5),
    ("cql", "drop"): ("wsrl", 0.0), ("cql", "keep"): ("wsrl", 0.5),
    ("sacn", "drop"): ("wsrl", 0.0), ("sacn", "keep"): ("wsrl", 0.5),
    ("iql", "drop"): ("iql", 0.0), ("iql", "keep"): ("iql", 0.5),
}


@dataclass
class AutoConfig:
    branch: Literal["measure", "drop", "keep"] = option("measure", "measure: choose from the comparison; drop / keep: force that branch")
    episodes: int = option(20, "evaluation episodes of the pretrained policy the comparison uses", min=2)
    margin: float = option(0.0, "return by which the interval's lower end must beat the data for the policy to count as "
                                "better (in normalized points when the env has reference returns, else raw return)", min=0)
    confidence: float = option(0.95, "confidence level of the bootstrap interval", gt=0, lt=1)
    drop_warmup_steps: int = option(5_000, "env steps with the pretrained policy before a drop branch's first update "
                                           "(when --warmup-steps is not given)", min=0)


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The means of ``resamples`` bootstrap resamples of ``values``."""
    return values[rng.integers(0, values.size, size=(resamples, values.size))].mean(1)


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100.0 - tail))


def mean_ci(values: np.ndarray, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of ``values``."""
    values = np.asarray(values, np.float64)
    lo, hi = _percentile_interval(_resampled_means(values, resamples, np.random.default_rng(seed)), confidence)
    return float(values.mean()), lo, hi


def compare(policy: np.ndarray, data: np.ndarray, confidence: float = 0.95, margin: float = 0.0,
            resamples: int = 10_000, seed: int = 0) -> dict:
    """The policy's mean return minus the data's, with a percentile-bootstrap interval that
    resamples both groups independently; ``policy_better`` when its lower end exceeds ``margin``."""
    policy, data = np.asarray(policy, np.float64), np.asarray(data, np.float64)
    if policy.size < 2 or data.size < 2:
        raise ValueError(f"the regime comparison needs at least 2 policy and 2 data episodes, found {policy.size} and "
                         f"{data.size}; raise --auto.episodes or use a store with more episodes.")
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(policy, resamples, rng) - _resampled_means(data, resamples, rng)
    lo, hi = _percentile_interval(diffs, confidence)
    p, d = mean_ci(policy, confidence, resamples, seed + 1), mean_ci(data, confidence, resamples, seed + 2)
    return {"policy_mean": p[0], "policy_ci": [p[1], p[2]], "data_mean": d[0], "data_ci": [d[1], d[2]],
            "difference": p[0] - d[0], "difference_ci": [lo, hi], "policy_episodes": int(policy.size),
            "data_episodes": int(data.size), "confidence": confidence, "margin": margin, "policy_better": lo > margin}


def check_init(init_algo: str) -> None:
    if not any(algo == init_algo for algo, _ in BRANCHES):
        starts = ", ".join(sorted({algo for algo, _ in BRANCHES}))
        raise ValueError(f"--algo auto fine-tunes a {starts} run, but --init holds a {init_algo!r} run; pretrain one of "
                         f"those (e.g. `agent pretrain --algo iql`) or pick the fine-tuning algorithm with --algo.")


def choose(init_algo: str, comparison: dict, forced: str = "measure") -> dict:
    """The branch, the algorithm and the offline share for an ``init_algo`` start."""
    if forced not in ("measure", "drop", "keep"):
        raise ValueError(f"--auto.branch must be measure, drop or keep, got {forced!r}.")
    check_init(init_algo)
    branch = forced if forced != "measure" else "drop" if comparison["policy_better"] else "keep"
    algo, ratio = BRANCHES[(init_algo, branch)]
    lo, hi = comparison["difference_ci"]
    why = (f"policy {comparison['policy_mean']:.1f} vs data {comparison['data_mean']:.1f}: difference "
           f"{comparison['difference']:+.1f}, {100 * comparison['confidence']:.0f}% CI [{lo:+.1f}, {hi:+.1f}]")
    if forced != "measure":
        reason = f"forced by --auto.branch {forced} ({why})"
    elif branch == "drop":
        reason = f"the policy is clearly better than its data ({why}, above the margin {comparison['margin']:g})"
    else:
        reason = f"the policy is not clearly better than its data ({why}, not above the margin {comparison['margin']:g})"
    return {"branch": branch, "algo": algo, "offline_ratio": ratio, "init_algo": init_algo, "forced": forced != "measure",
            "reason": reason}


def resolve(cfg, resume: bool = False, progress: bool = True):
    """``cfg`` (algo ``auto``) as the concrete run it decides on, and the decision. A run
    directory that holds a decision already (a resumed run) keeps it."""
    from agent.checkpoint import load_checkpoint
    from agent.envs import normalized_score, reference_returns
    from agent.evaluate import evaluate
    from agent.finetune.config import loop_setting, parse_env_kwargs
    from agent.finetune.loop import _pretrained_data
    from agent.policy import policy_maker
    from agent.store import Store

    if not cfg.out:
        raise ValueError("finetune needs --out (the run directory).")
    saved = Path(cfg.out) / DECISION_FILE
    if not resume and (Path(cfg.out) / "checkpoints" / "latest.pt").exists():
        raise ValueError(f"run directory {cfg.out!r} already holds a checkpoint; pass --resume to continue it or choose another --out.")
    if resume and saved.is_file():
        decision = json.loads(saved.read_text())
        return _concrete(cfg, decision), decision
    if not cfg.init:
        raise ValueError("--algo auto fine-tunes a pretrained policy: pass --init RUN (a Cal-QL, CQL, SAC-N or IQL run), "
                         "or pick an algorithm that starts from scratch with --algo (e.g. rlpd).")
    if cfg.offline_ratio is not None:
        raise ValueError(f"--algo auto chooses the offline share itself (0 or 0.5), found --offline-ratio {cfg.offline_ratio}; "
                         f"drop --offline-ratio, or pick the algorithm with --algo to set it.")
    ckpt = load_checkpoint(cfg.init)
    data = cfg.data or _pretrained_data(cfg.init)
    if not data:
        raise ValueError("--algo auto compares the --init policy with its offline data, but none is known; pass --data STORE.")
    env_id = cfg.env or ckpt.get("env_id", "")
    if not env_id:
        raise ValueError("finetune needs --env (or --init RUN, whose env is used).")
    check_init(str(ckpt.get("algo")))  # before the episodes are spent
    for branch in ("drop", "keep"):
        algo, ratio = BRANCHES[(str(ckpt["algo"]), branch)]
        warmup = int(loop_setting(_concrete(cfg, {"algo": algo, "offline_ratio": ratio, "branch": branch}), "warmup_steps"))
        if cfg.steps <= warmup:
            raise ValueError(f"--steps must be above the warm-up of either branch --algo auto may take ({branch}: {algo} "
                             f"waits {warmup} environment steps before its first update), found {cfg.steps}; raise --steps "
                             f"or lower --warmup-steps.")
    result = evaluate(env_id, policy_maker(cfg.init, env_id), cfg.auto.episodes, env_kwargs=parse_env_kwargs(cfg.env_kwargs),
                      progress=progress)
    returns = np.asarray(Store.open(data).read("meta/episodes/return"), np.float64)  # the store keeps each episode's return
    policy = np.asarray(result["returns"], np.float64)
    unit = "return"
    if reference_returns(env_id) is not None:  # normalized points, so that --auto.margin reads the same on every task
        policy = np.array([normalized_score(env_id, r) for r in policy])
        returns = np.array([normalized_score(env_id, r) for r in returns])
        unit = "normalized score"
    comparison = compare(policy, returns, cfg.auto.confidence, cfg.auto.margin, seed=cfg.seed)
    decision = {**choose(str(ckpt["algo"]), comparison, cfg.auto.branch), "comparison": comparison, "unit": unit,
                "env_id": env_id, "data": str(data), "init": str(cfg.init)}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(decision, indent=2))
    print(f"agent finetune --algo auto: {decision['branch']} the offline data -> {decision['algo']} "
          f"(offline share {decision['offline_ratio']:g}); {decision['reason']}; saved in {saved}", file=sys.stderr, flush=True)
    return _concrete(cfg, decision), decision


def _concrete(cfg, decision: dict):
    warmup = cfg.warmup_steps
    if warmup is None and decision["branch"] == "drop":
        warmup = cfg.auto.drop_warmup_steps
    return replace(cfg, algo=decision["algo"], offline_ratio=float(decision["offline_ratio"]), warmup_steps=warmup,
                   warmup_policy="policy" if cfg.warmup_policy == "default" else cfg.warmup_policy)


def saved_decision(cfg) -> dict | None:
    """The decision an ``auto`` run saved in ``cfg.out``, when it is the one ``cfg`` continues."""
    saved = Path(cfg.out) / DECISION_FILE if cfg.out else None
    if saved is None or not saved.is_file():
        return None
    decision = json.loads(saved.read_text())
    return decision if decision.get("algo") == cfg.algo else None


def summary_entry(decision: dict | None) -> dict:
    """The decision as the run summary's ``auto`` entry (empty without one)."""
    if decision is None:
        return {}
    return {"auto": {k: decision[k] for k in ("branch", "algo", "offline_ratio", "reason")}}


def log_decision(logger, decision: dict | None, resumed: bool) -> None:
    """An ``auto`` run's decision in its metrics (``auto/`` at step 0), once: not again on resume."""
    if decision is None or resumed:
        return
    c = decision["comparison"]
    logger.log(0, {"keep_data": float(decision["branch"] == "keep"), "policy_mean": c["policy_mean"], "data_mean": c["data_mean"],
                   "difference": c["difference"], "difference_lo": c["difference_ci"][0],
                   "difference_hi": c["difference_ci"][1]}, prefix="auto/")
