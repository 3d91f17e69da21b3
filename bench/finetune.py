"""Online fine-tuning evidence (docs/benchmarks.md, "Fine-tuning"): does fine-tuning make a
pretrained arm policy better, without first making it worse?

    python bench/finetune.py                  # arm push: the bars (hours on 2 cores; resumable, run it again)
    python bench/finetune.py --task reach     # arm reach (20k online steps): auto must drop the data and end >= 95
    python bench/finetune.py --task pick      # arm pick-and-place: the same table, reported
    python bench/finetune.py --only auto,iql  # some groups now (auto, iql, wsrl, calql, rlpd, ro2o, resume, calibration)
    python bench/finetune.py --speed          # the loop's env steps/s against the rate its parts predict
    python bench/finetune.py --quick          # tiny sizes, one seed: checks the pipeline, not the bars

Pipeline per task: collect the medium data (datasets/arm-<task>-medium.yaml); pretrain Cal-QL
(10 LayerNorm critics, WSRL's start) and IQL (2x256, the IQL paper's size) for
``pretrain_steps`` updates each, with an evaluation curve that shows whether the offline
start has plateaued, and score each checkpoint over 50 episodes (the "offline start");
fine-tune online for ``online_steps`` env steps:

* ``auto`` (5 seeds): ``--algo auto`` from the seed's Cal-QL run when it scores 10 points
  above its data (auto's drop branch, WSRL, needs its critic), otherwise from the better of
  the two pretrained runs (by offline start); it keeps or drops the data as it measures;
* baselines (3 seeds): WSRL and Cal-QL 50/50 from the Cal-QL start, IQL fine-tuning from
  the IQL start, RLPD from scratch with the data. When auto kept the data from the seed's
  IQL start, it ran IQL fine-tuning with the same seed and settings, so that run is the IQL
  baseline's (the loop is deterministic on CPU: the same seed gives the same curve) and is
  saved under both names (``reused_from``);
* RO2O (3 seeds): its own offline phase, then online.

Every finished run's curve and numbers are written to ``bench/results/runs/<bench>/<key>.json``
(committed) as it finishes, so a rerun on any machine skips finished seeds; pretrained
checkpoints live under ``bench/results/_work/`` and are rebuilt when a run still needs them.
Seeds run in parallel processes (``--workers``, default 2) with one torch thread each.
Scores are normalized returns over 20 evaluation episodes; a run's "final" is the mean of
its last three evaluations.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import (RESULTS, WORK, ci, collect_recipe, in_pool, iqm_ci, pool_parser, print_rows, row, runs_dir,  # noqa: E402
                    save, saved, write_results)

TASKS = {"push": ("sims/ArmPush-v0", "arm-push-medium.yaml"), "reach": ("sims/ArmReach-v0", "arm-reach-medium.yaml"),
         "pick": ("sims/ArmPickPlace-v0", "arm-pick-place-medium.yaml")}
GROUPS = ("auto", "iql", "wsrl", "calql", "rlpd", "ro2o", "resume", "calibration", "plateau")
PUSH_ONLY = ("ro2o", "resume", "calibration", "plateau")
BASELINES = ("wsrl", "calql", "rlpd", "iql")
CLEARLY = 10.0  # points above the data's mean at which a Cal-QL start is taken for auto whatever IQL's start
CALIBRATION_EXTRA = 400  # steps run past the time limit for q_calibration_gap_long (gamma^400 = 1.8% of the tail left)

# CPU-sized settings, stated in every results file. What is cut from the papers, and why the
# method keeps its character: RLPD's ensemble is 2 critics (REDQ-style min over 2 of 10 in the
# paper; 2 is RLPD's own ablation with LayerNorm) at UTD 4 (20 in the paper); WSRL keeps its 10
# LayerNorm critics at UTD 2 (4 in the paper); Cal-QL 50/50 keeps UTD 1 (the paper's); IQL keeps
# its 2x256 networks, batch 256 and UTD 1. Actor/critic widths are 2x128 for the SAC family
# (2x256 to 3x256 in the papers). The temperature rate is 3e-3 for Cal-QL and WSRL: at the
# papers' 1e-4 the entropy bonus undoes a pretrained policy before the temperature follows.
# Learners that start from scratch start at temperature 0.1 (the arm's reward is at most 1 per
# step and |A| = 7: at 1.0 the entropy bonus outweighs the reward for thousands of updates).
# RO2O: 5 critics and 2 perturbations (10 and 20 in the paper), LayerNorm critics, lambda held at 1.0.
CPU = {"auto_seeds": 5, "seeds": 3, "episodes": 200, "hidden": [128, 128], "iql_hidden": [256, 256], "iql_batch": 256,
       "pretrain_steps": 20_000, "pretrain_eval_every": 5_000, "start_episodes": 50, "online_steps": 50_000,
       "eval_every": 2_500, "eval_episodes": 20, "warmup": 2_500, "utd": 2, "rlpd_utd": 4, "batch": 128,
       "sampled_actions": 2, "alpha_lr": 3e-3, "rlpd_critics": 2, "scratch_alpha": 0.1, "ro2o_critics": 5,
       "perturbations": 2, "ro2o_layer_norm": True, "ro2o_lambda": 1.0, "ro2o_offline_steps": 20_000, "workers": 2}
# reach: 20k online steps (at 10k WSRL from the Cal-QL starts is still rising, final IQM 92.9)
TASK_SETTINGS = {"reach": {"online_steps": 20_000, "eval_every": 1_000}}
QUICK = {**CPU, "auto_seeds": 1, "seeds": 1, "episodes": 10, "hidden": [32, 32], "iql_hidden": [32, 32], "iql_batch": 32,
         "pretrain_steps": 200, "pretrain_eval_every": 100, "start_episodes": 3, "online_steps": 600, "eval_every": 200,
         "eval_episodes": 2, "warmup": 100, "utd": 1, "rlpd_utd": 2, "batch": 32, "ro2o_offline_steps": 100}


def collect_data(work: Path, s: dict, task: str) -> str:
    return collect_recipe(TASKS[task][1], work / f"{task}-medium.zarr", s["episodes"])


def data_scores(data: str) -> list[float]:
    """Normalized return of every episode of a store."""
    from agent.envs import normalized_score
    from agent.store import Store

    store = Store.open(data)
    return [float(normalized_score(store.env_id, r)) for r in store.read("meta/episodes/return")]


def behaviour(run: str, env_id: str, episodes: int) -> dict:
    """What a policy does with the cube (push, pick): the share of episodes whose gripper comes
    within 5 cm of the cube's centre (it is 4 cm wide), that move it by 2 cm or more, and that
    end closer to the goal than they began, and the mean final cube-to-goal distance. A plateau
    reads "reaches the cube but does not push it" or "pushes it the wrong way" from these."""
    from agent.envs import make_env
    from agent.policy import load_policy

    env = make_env(env_id)
    learner = load_policy(run, env_id, int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape)))
    physics = env.unwrapped.physics
    reached = moved = closer = 0
    finals = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        start_obj = physics.object_pos().copy()
        start_goal = float(np.linalg.norm(physics.goal_pos()[:2] - start_obj[:2]))
        near, done = np.inf, False
        while not done:
            obs, _, terminated, truncated, _ = env.step(learner.act(obs, deterministic=True))
            near = min(near, float(np.linalg.norm(physics.object_pos() - physics.grip_pos())))
            done = terminated or truncated
        obj = physics.object_pos()
        final_goal = float(np.linalg.norm(physics.goal_pos()[:2] - obj[:2]))
        reached += near < 0.05
        moved += float(np.linalg.norm(obj[:2] - start_obj[:2])) >= 0.02
        closer += final_goal < start_goal
        finals.append(final_goal)
    env.close()
    return {"reaches_cube": reached / episodes, "moves_cube": moved / episodes, "ends_closer": closer / episodes,
            "final_goal_distance_cm": 100 * float(np.mean(finals)), "episodes": episodes}


def pretrain_job(job: dict) -> dict:
    import torch

    from agent.evaluate import evaluate
    from agent.logger import read_metrics
    from agent.policy import policy_maker
    from agent.pretrain import PretrainConfig, pretrain

    torch.set_num_threads(1)
    s, out, algo = job["settings"], Path(job["out"]), job["algo"]
    cfg = PretrainConfig(data=job["data"], algo=algo, out=str(out), steps=s["pretrain_steps"], seed=job["seed"],
                         batch_size=s["iql_batch"] if algo in ("iql", "bc") else s["batch"], eval_every=s["pretrain_eval_every"],
                         eval_episodes=s["eval_episodes"], checkpoint_every=s["pretrain_eval_every"],
                         log_every=max(s["pretrain_steps"] // 20, 1))
    section = getattr(cfg, algo)
    if algo == "calql":
        section.hidden_dims, section.num_critics, section.layer_norm = s["hidden"], 10, True
        section.num_sampled_actions, section.alpha_lr = s["sampled_actions"], s["alpha_lr"]
    else:
        section.hidden_dims = s["iql_hidden"]
    start = time.time()
    pretrain(cfg, resume=(out / "checkpoints" / "latest.pt").exists(), progress=False)
    curve = [(r["step"], r["eval/normalized_score"]) for r in read_metrics(out) if "eval/normalized_score" in r]
    env_id = TASKS[job["task"]][0]
    score = evaluate(env_id, policy_maker(str(out), env_id), s["start_episodes"])["normalized_score"]
    probe = behaviour(str(out), env_id, s["eval_episodes"]) if job["task"] != "reach" else None
    return {"algo": algo, "seed": job["seed"], "offline_start": score, "curve_steps": [c[0] for c in curve],
            "curve": [c[1] for c in curve], "behaviour": probe, "minutes": (time.time() - start) / 60, "run": str(out)}


def finetune_job(job: dict) -> dict:
    import torch

    from agent.finetune import FinetuneConfig, finetune
    from agent.finetune.report import load_run
    from agent.logger import read_metrics

    torch.set_num_threads(1)
    s, out, algo = job["settings"], Path(job["out"]), job["algo"]
    cfg = FinetuneConfig(algo=algo, env=TASKS[job["task"]][0], out=str(out), steps=s["online_steps"], seed=job["seed"],
                         batch_size=s["batch"], eval_every=s["eval_every"], eval_episodes=s["eval_episodes"],
                         checkpoint_every=s["eval_every"], log_every=max(s["eval_every"] // 5, 1), init=job.get("init", ""),
                         data=job["data"], offline_steps=s["ro2o_offline_steps"] if algo == "ro2o" else 0)
    init_algo = job.get("init_algo", "")
    cfg.calql.num_sampled_actions = s["sampled_actions"]
    cfg.wsrl.alpha_lr = s["alpha_lr"]
    cfg.auto.episodes = s["eval_episodes"]
    if init_algo == "iql" or algo == "iql":
        cfg.batch_size = s["iql_batch"]
    if algo == "wsrl":
        cfg.utd, cfg.warmup_steps = s["utd"], s["warmup"]
    if algo == "auto":  # a drop branch warms up as the WSRL baseline; a keep branch takes its algorithm's own warm-up
        cfg.auto.drop_warmup_steps = s["warmup"]
        if init_algo == "calql":
            cfg.utd = s["utd"]  # WSRL's UTD on either branch (so a Cal-QL keep branch runs at 2, the baseline at 1)
    if algo in ("rlpd", "ro2o"):
        section = getattr(cfg, algo)
        section.hidden_dims, section.initial_alpha, section.alpha_lr = s["hidden"], s["scratch_alpha"], s["alpha_lr"]
        cfg.warmup_steps = s["warmup"]
    if algo == "rlpd":
        cfg.utd, cfg.rlpd.num_critics = s["rlpd_utd"], s["rlpd_critics"]
    if algo == "ro2o":  # 50/50 batches online (the data beats RO2O's own start on push), UTD 1
        cfg.ro2o.num_critics, cfg.ro2o.num_perturbations, cfg.offline_ratio = s["ro2o_critics"], s["perturbations"], 0.5
        # a 20k-update phase is too short for the paper's 1.0 -> 0.1 decay of lambda: held at 1.0 offline and online,
        # with LayerNorm critics, the offline policy reaches BC's level (bench/README.md, "RO2O's offline phase")
        cfg.ro2o.layer_norm = s["ro2o_layer_norm"]
        cfg.ro2o.ood_lambda_end = cfg.ro2o.online_ood_lambda = s["ro2o_lambda"]
    from agent.envs import make_env

    probe = make_env(cfg.env)
    cfg.calibration_horizon = int(probe.unwrapped.time_limit) + CALIBRATION_EXTRA
    probe.close()
    resume = (out / "checkpoints" / "latest.pt").exists()
    if not resume and out.exists():  # killed before its first checkpoint: start afresh
        shutil.rmtree(out)
    start = time.time()
    summary = finetune(cfg, resume=resume, progress=False)
    run = load_run(str(out))
    evals = [r for r in read_metrics(out) if "eval/normalized_score" in r]
    diag = {k: [r.get(f"eval/{k}") for r in evals] for k in ("q_visited", "return_bootstrapped_visited", "success_rate")}
    decision = json.loads((out / "auto_decision.json").read_text()) if (out / "auto_decision.json").exists() else None
    # the offline start of the network this run began from (a rebuilt pretraining would score another one)
    start_score = saved(out.parent.name, f"pretrain-{init_algo}-{job['seed']}")["offline_start"] if init_algo else None
    probe = behaviour(str(out), cfg.env, s["eval_episodes"]) if job["task"] != "reach" else None
    return {"algo": algo, "ran": summary["algo"], "seed": job["seed"], "init_algo": init_algo, "offline_start": start_score,
            "steps": run["steps"],
            "values": run["values"], "diagnostics": diag, "decision": decision, "updates": summary["updates"],
            "behaviour": probe, "minutes": (time.time() - start) / 60}


def plateau_job(job: dict) -> dict:
    """bench/plateau.py on push: the oracle-filtered BC ceiling and each IQL start's critic."""
    import torch

    from plateau import critic_discrimination, expert_labels, filtered_bc

    torch.set_num_threads(1)
    s, start = job["settings"], time.time()
    labelled = expert_labels(job["data"])  # read and labelled once for all the measurements
    ceiling = filtered_bc(labelled, s["iql_hidden"], s["pretrain_steps"], s["iql_batch"], s["pretrain_eval_every"],
                          s["eval_episodes"], s["start_episodes"])
    critics = {f"iql-{seed}": critic_discrimination(run, labelled) for seed, run in job["iql_runs"].items()}
    return {"filtered_bc": ceiling, "critics": critics, "minutes": (time.time() - start) / 60}


def final(result: dict) -> float:
    return float(np.mean(result["values"][-3:]))


def dip(result: dict, start: float, window: float = 0.2) -> float:
    """Lowest evaluation after step 0 within the first ``window`` of online steps (at least the
    first one), minus ``start``."""
    later = [(st, v) for st, v in zip(result["steps"], result["values"]) if st > 0]
    return min(v for st, v in later if st <= max(window * result["steps"][-1], later[0][0])) - start


def kill_and_resume(work: Path, init: str, env: str) -> tuple[float, str]:
    """Start a WSRL run in a subprocess, SIGKILL it after its second checkpoint, resume it."""
    import torch

    from agent.config import from_dict, load_yaml
    from agent.finetune import FinetuneConfig, finetune
    from agent.store import Store

    out = work / "killed"
    steps, every = 1_000, 200
    args = [sys.executable, "-m", "agent.cli", "finetune", "--algo", "wsrl", "--init", init, "--env", env, "--out", str(out),
            "--steps", str(steps), "--warmup-steps", "100", "--batch-size", "32", "--eval-episodes", "0",
            "--checkpoint-every", str(every), "--log-every", "50"]
    if out.exists():  # a finished run from an earlier bench would have nothing left to resume
        shutil.rmtree(out)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while proc.poll() is None and not (out / "checkpoints" / f"step_{2 * every:08d}.pt").exists():
        time.sleep(0.2)
    time.sleep(1.0)  # run on past the checkpoint, then kill without warning
    proc.kill()  # SIGKILL
    proc.wait()
    ckpt = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    store = Store.open(out / "online.zarr")
    lengths = store.episode_attrs()["length"]
    expected = int(sum(int(lengths[r]) for r in ckpt["loop"]["episode_rows"]))
    seen: dict = {}

    def watch(source):
        sample = source.sample

        def first(k, b, offline_only=False):
            seen.setdefault("buffer", source.online.size)
            return sample(k, b, offline_only)
        source.sample = first
        return source

    cfg = from_dict(FinetuneConfig, load_yaml(out / "config.yaml"))
    summary = finetune(cfg, resume=True, progress=False, make_source=watch)
    ok = seen.get("buffer") == expected and summary["env_steps"] == steps and 2 * every <= ckpt["step"] < steps
    return float(ok), (f"killed after checkpoint at step {ckpt['step']} ({store.num_episodes} episodes in store, "
                       f"{len(ckpt['loop']['episode_rows'])} checkpointed); resumed buffer {seen.get('buffer')} "
                       f"transitions (expected {expected}); finished at {summary['env_steps']}/{steps}")


def task_rows(task: str, s: dict, data_mean: float, pre: dict, runs: dict, auto_seeds, seeds) -> list[dict]:
    """The bars of one task from the saved runs (a group counts once all its seeds are in)."""
    def group(prefix: str, which) -> list[dict] | None:
        got = [runs.get(f"{prefix}-{seed}") for seed in which]
        return got if all(got) else None

    def start(r: dict) -> float:  # the offline start of a run: its init's 50-episode score, saved with the run
        return r["offline_start"]

    rows = []
    auto = group("auto", auto_seeds)
    base = {b: group(b, seeds) for b in BASELINES}
    if auto:
        finals, starts = [final(r) for r in auto], [start(r) for r in auto]
        branches = [f"seed {r['seed']}: {r['init_algo']} start {start(r):.1f} -> {r['decision']['branch']} ({r['ran']})"
                    for r in auto]
        if task == "push":
            rows += [
                row("auto_final_minus_data", iqm_ci([f - data_mean for f in finals])[0], "points", ">= 10",
                    f"auto final {ci(finals)}; dataset mean {data_mean:.1f}; decisions: {'; '.join(branches)}"),
                row("auto_final_minus_offline_start", iqm_ci([f - s0 for f, s0 in zip(finals, starts)])[0], "points", ">= 10",
                    f"offline start {ci(starts)} (50 episodes each)"),
                row("auto_dip_first_20pct", min(dip(r, start(r)) for r in auto), "points", ">= -10",
                    "worst seed's lowest evaluation in the first 20% of online steps minus its offline start"),
                row("push_reaches_80", iqm_ci(finals)[0], "score", ">= 80", "stretch, reported whether met or not"),
            ]
            done = {b: iqm_ci([final(r) for r in g])[0] for b, g in base.items() if g}
            if len(done) == len(BASELINES):
                best = max(done, key=done.get)
                rows.append(row("auto_minus_best_baseline", iqm_ci(finals)[0] - done[best], "points", ">= -2",
                                f"IQM finals at {s['online_steps']} steps: "
                                + ", ".join(f"{b} {ci([final(r) for r in base[b]])}" for b in BASELINES)))
        elif task == "reach":
            rows += [
                row("reach_auto_drops_data", float(np.mean([r["decision"]["branch"] == "drop" for r in auto])), "share", "== 1",
                    "; ".join(branches)),
                row("reach_auto_final", iqm_ci(finals)[0], "score", ">= 95", f"auto final {ci(finals)}"),
                row("reach_auto_dip", min(min(v for st, v in zip(r["steps"], r["values"]) if st > 0) - start(r) for r in auto),
                    "points", ">= -10", "worst seed's lowest evaluation minus its offline start"),
            ]
    ro2o = group("ro2o", seeds)
    if ro2o and task == "push":
        bc = [pre[f"pretrain-bc-{seed}"]["offline_start"] for seed in seeds if f"pretrain-bc-{seed}" in pre]
        starts = [r["values"][0] for r in ro2o]
        rows += [
            row("ro2o_offline_start_minus_bc", iqm_ci(starts)[0] - iqm_ci(bc)[0] if bc else None, "points", ">= -2",
                f"RO2O after {s['ro2o_offline_steps']} offline updates {ci(starts)}; BC {ci(bc) if bc else 'not run'}"),
            row("ro2o_final_minus_offline_start", iqm_ci([final(r) - s0 for r, s0 in zip(ro2o, starts)])[0], "points", ">= 10",
                f"RO2O final {ci([final(r) for r in ro2o])}"),
            row("ro2o_dip_first_20pct", min(dip(r, r["values"][0]) for r in ro2o), "points", ">= -10", "worst seed"),
        ]
    return rows


def plateau_table(p: dict) -> str:
    f = p["filtered_bc"]
    lines = ["", f"BC on the expert's rows only ({f['rows']} of {f['of']}; an oracle filter): "
             + ", ".join(f"{st // 1000}k {v:.1f}" for st, v in zip(f["curve_steps"], f["curve"]))
             + f"; final {f['final']:.1f} over {f['final_episodes']} episodes", "",
             "| IQL start | A on expert rows | A on random rows | Q(s, a_expert) - Q(s, a_random) | policy-expert error | cosine |",
             "|---|---|---|---|---|---|"]
    for key, c in sorted(p["critics"].items()):
        lines.append(f"| {key} | {c['adv_expert_rows']:.3f} | {c['adv_random_rows']:.3f} | {c['q_expert_minus_random']:.3f} | "
                     f"{c['policy_abs_error']:.3f} ({c['expert_share']:.2f} x expert: {c['shrunk_expert_abs_error']:.3f}) | {c['policy_cosine']:.3f} |")
    return "\n".join(lines)


def table(task: str, data_mean: float, pre: dict, runs: dict) -> str:
    lines = [f"| {task} | seeds | offline start | final (IQM [95% CI]) | decisions |", "|---|---|---|---|---|",
             f"| dataset | - | - | {data_mean:.1f} (mean over episodes) | - |"]
    for prefix in ("auto", *BASELINES, "ro2o"):
        got = [r for k, r in sorted(runs.items()) if k.rsplit("-", 1)[0] == prefix]
        if not got:
            continue
        starts = [r["offline_start"] if r.get("offline_start") is not None else r["values"][0] for r in got]
        decisions = ", ".join(f"{r['decision']['branch']}->{r['ran']}" for r in got if r.get("decision")) or "-"
        lines.append(f"| {prefix} | {len(got)} | {ci(starts)} | {ci([final(r) for r in got])} | {decisions} |")
    return "\n".join(lines)


def plot(path: Path, title: str, data_mean: float, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, prefix in enumerate(("auto", *BASELINES, "ro2o")):
        got = [r for k, r in runs.items() if k.rsplit("-", 1)[0] == prefix]
        if not got:
            continue
        n = min(len(r["values"]) for r in got)
        values = np.array([r["values"][:n] for r in got])
        steps = got[0]["steps"][:n]
        iqm = [iqm_ci(values[:, j])[0] for j in range(n)] if len(got) > 2 else values.mean(0)
        ax.plot(steps, iqm, color=f"C{i}", label=f"{prefix} ({len(got)} seeds)", lw=2.2 if prefix == "auto" else 1.4)
        ax.fill_between(steps, values.min(0), values.max(0), color=f"C{i}", alpha=0.12)
    ax.axhline(data_mean, color="grey", ls="--", lw=1, label="dataset mean")
    ax.set_xlabel("online env steps")
    ax.set_ylabel("normalized score (20 episodes)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration(work: Path, s: dict, quick: bool) -> list[dict]:
    """The bootstrapped Q-calibration diagnostic against long rollouts on arm reach: a critic
    pretrained on the scripted expert's data, its policy run for the task's 50 steps (the
    diagnostic's view) and, from the same states, on for 500 more steps without a time limit
    (the truth: gamma^500 = 0.7% of the tail is left)."""
    import torch

    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml
    from agent.envs import make_env
    from agent.finetune.diagnostics import long_calibration, q_calibration
    from agent.policy import load_policy
    from agent.pretrain import PretrainConfig, pretrain

    torch.set_num_threads(1)
    env_id, episodes, extra = "sims/ArmReach-v0", (3 if quick else 20), 500
    data = work / "reach-expert.zarr"
    if not (data / "zarr.json").exists():
        recipe = {**load_yaml(ROOT / "datasets" / "arm-reach-expert.yaml"), "episodes": s["episodes"], "out": str(data)}
        collect(from_dict(CollectConfig, recipe), progress=False)
    run = work / "calibration-calql"
    if not (run / "checkpoints" / "latest.pt").exists():
        cfg = PretrainConfig(data=str(data), algo="calql", out=str(run), steps=s["pretrain_steps"] // 2, batch_size=s["batch"],
                             eval_episodes=0, checkpoint_every=s["pretrain_steps"] // 2, log_every=1000)
        cfg.calql.hidden_dims, cfg.calql.num_critics, cfg.calql.layer_norm = s["hidden"], 10, True
        cfg.calql.num_sampled_actions, cfg.calql.alpha_lr = s["sampled_actions"], s["alpha_lr"]
        pretrain(cfg, progress=False)
    env = make_env(env_id, time_limit=50 + extra)
    learner = load_policy(str(run), env_id, int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape)))
    gamma = learner.cfg.gamma
    seen, truth = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=20_000 + i)
        rec = {"obs": [], "action": [], "reward": []}
        rewards = []
        for t in range(50 + extra):
            action = np.asarray(learner.act(obs, deterministic=True), np.float32)
            if t < 50:
                rec["obs"].append(np.asarray(obs, np.float32))
                rec["action"].append(action)
            obs, reward, terminated, _, _ = env.step(action)
            rewards.append(float(reward))
            if t == 49:
                rec.update(final_obs=np.asarray(obs, np.float32), truncated=True)
            if terminated:
                break
        rec["reward"] = rewards[:50]
        seen.append({**rec, "obs": np.stack(rec["obs"]), "action": np.stack(rec["action"])})
        discounts = gamma ** np.arange(len(rewards))
        truth += [float(np.sum(np.asarray(rewards[t:]) * discounts[: len(rewards) - t])) for t in range(50)]
    env.close()
    diag = q_calibration(learner, seen)
    long = long_calibration(env_id, learner, {}, 50 + CALIBRATION_EXTRA, episodes, seed=20_000, limit=50)
    long_mean = float(np.mean(truth))
    error = abs(long["return_long_visited"] - long_mean) / abs(long_mean)
    boot_error = abs(diag["return_bootstrapped_visited"] - long_mean) / abs(long_mean)
    truncated_only = float(np.mean([np.sum(np.asarray(e["reward"][t:]) * gamma ** np.arange(50 - t))
                                    for e in seen for t in range(50)]))
    return [row("q_calibration_error_vs_long_rollouts", 100 * error, "% of return", "< 10",
                f"{env_id}, Cal-QL ({s['pretrain_steps'] // 2} updates) on {s['episodes']} scripted-expert episodes, its "
                f"deterministic policy, {episodes} episodes; reference: the {50 + extra}-step return from each of the first 50 "
                f"states, {long_mean:.2f}. q_calibration_gap_long's return (rollouts of {50 + CALIBRATION_EXTRA} steps, "
                f"tail weight <= {long['calibration_tail_weight']:.3f}): {long['return_long_visited']:.2f}; the bootstrapped "
                f"return {diag['return_bootstrapped_visited']:.2f} is {100 * boot_error:.0f}% off, because it values the tail "
                f"with this critic, whose Q on the same states is {diag['q_visited']:.2f}; the truncated return (the old "
                f"diagnostic) was {truncated_only:.2f}")]


def speed(s: dict) -> list[dict]:
    """The loop's env steps/s against 1 / (env step + action + UTD update), each timed here."""
    import torch

    from agent.envs import make_env
    from agent.finetune import FinetuneConfig, finetune
    from agent.finetune.data import BatchSource, OnlineBuffer
    from agent.finetune.loop import _to_tensors
    from agent.learners import SACConfig, make_learner

    torch.set_num_threads(1)
    env_id, steps, utd, batch = "sims/ArmPush-v0", 3_000, s["utd"], s["batch"]
    env = make_env(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    sizes = {"hidden_dims": s["hidden"], "num_critics": 10, "layer_norm": True}  # WSRL's ensemble, from scratch
    learner = make_learner("sac", SACConfig(**sizes), obs_dim, act_dim)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    buffer = OnlineBuffer(obs_dim, act_dim)
    ep = {"obs": [], "action": [], "reward": [], "terminated": [], "truncated": []}
    t_env = t_act = 0.0
    for i in range(1_000):
        t0 = time.perf_counter()
        action = np.asarray(learner.act(obs, deterministic=False), np.float32)
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        t_env += time.perf_counter() - t1
        t_act += t1 - t0
        for k, v in zip(ep, (obs, action, reward, terminated, truncated)):
            ep[k].append(v)
        obs = next_obs
        if terminated or truncated:
            buffer.add_episode({**{k: np.asarray(v) for k, v in ep.items()}, "final_obs": obs})
            ep = {k: [] for k in ep}
            obs, _ = env.reset(seed=i)
    env.close()
    source = BatchSource(buffer, None, None, 0.0, rng)
    for _ in range(5):
        learner.update(_to_tensors(source.sample(utd, batch), learner.device))
    t0 = time.perf_counter()
    for _ in range(200):  # an update as the loop makes it: draw the [K, B] batch, move it, update
        learner.update(_to_tensors(source.sample(utd, batch), learner.device))
    t_update = (time.perf_counter() - t0) / 200
    out = WORK / "finetune-speed"
    shutil.rmtree(out, ignore_errors=True)
    cfg = FinetuneConfig(algo="sac", env=env_id, out=str(out), steps=steps, warmup_steps=0, utd=utd, batch_size=batch,
                         eval_episodes=0, checkpoint_every=steps, log_every=500, warmup_policy="policy")
    cfg.sac = SACConfig(**sizes)
    t0 = time.perf_counter()
    summary = finetune(cfg, progress=False)
    measured = steps / (time.perf_counter() - t0)
    # the parts' time for the same work: every step acts and steps the env, every update after the first episode updates
    predicted = steps / (steps * (t_env + t_act) / 1000 + summary["updates"] * t_update)
    return [row("loop_speed_vs_parts", measured / predicted, "ratio", ">= 0.85",
                f"loop {measured:.1f} env steps/s (SAC with WSRL's 10 LayerNorm critics {s['hidden']}, UTD {utd}, batch {batch}, "
                f"{steps} steps, {summary['updates']} updates, incl. set-up, store appends and a checkpoint); parts predict "
                f"{predicted:.1f}/s: env step {t_env:.2f} ms, action {t_act:.2f} ms (means over 1000 steps), update with "
                f"its batch draw {1e3 * t_update:.2f} ms; 2-vCPU VM, one torch thread")]


def main() -> None:
    parser = pool_parser(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="push", help="push (the bars), reach or pick")
    parser.add_argument("--only", default="", help=f"comma-separated groups to run now ({', '.join(GROUPS)}); default all")
    parser.add_argument("--speed", action="store_true", help="only the loop speed guard")
    args = parser.parse_args()
    s = QUICK if args.quick else {**CPU, **TASK_SETTINGS.get(args.task, {})}
    name = "finetune" + (f".{args.task}" if args.task != "push" else "") + (".quick" if args.quick else "")
    start = time.time()
    if args.speed:
        rows = speed(s)
        print_rows(rows)
        print(f"wrote {write_results(name, rows, merge=True)}")
        return
    env_id = TASKS[args.task][0]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    groups = [g for g in args.only.split(",") if g] or [g for g in GROUPS if args.task == "push" or g not in PUSH_ONLY]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only expects groups from {', '.join(GROUPS)}; got {', '.join(unknown)}")
    workers = args.workers or s["workers"]
    data = collect_data(work, s, args.task)
    data_mean = float(np.mean(data_scores(data)))
    auto_seeds, seeds = range(s["auto_seeds"]), range(s["seeds"])
    base = {"settings": s, "data": data, "task": args.task}
    ft_jobs = []
    for seed in auto_seeds:
        ft_jobs.append({**base, "seed": seed, "algo": "auto"})
    for seed in seeds:
        ft_jobs += [{**base, "seed": seed, "algo": "iql", "init_algo": "iql"}, {**base, "seed": seed, "algo": "wsrl", "init_algo": "calql"},
                    {**base, "seed": seed, "algo": "calql", "init_algo": "calql"}, {**base, "seed": seed, "algo": "rlpd"},
                    {**base, "seed": seed, "algo": "ro2o"}]
    for job in ft_jobs:
        job["key"] = f"{job['algo']}-{job['seed']}"
        job["out"] = str(work / job["key"])
    ft_jobs = [j for j in ft_jobs if j["algo"] in groups]
    # pretraining each unfinished run still needs; results (offline starts, curves) are kept for the table
    need = {(algo, j["seed"]) for j in ft_jobs if saved(name, j["key"]) is None
            for algo in (("calql", "iql") if j["algo"] == "auto" else (j.get("init_algo"),)) if algo}
    need |= {("bc", seed) for seed in seeds if "ro2o" in groups and args.task == "push"}
    pre_jobs = [{**base, "seed": seed, "algo": algo, "key": f"pretrain-{algo}-{seed}", "out": str(work / f"pretrain-{algo}-{seed}")}
                for algo, seed in sorted(need)]
    for job in pre_jobs:  # a saved result whose checkpoint is gone (another machine) is pretrained again
        if saved(name, job["key"]) is not None and not (Path(job["out"]) / "checkpoints" / "latest.pt").exists():
            (runs_dir(name) / f"{job['key']}.json").unlink()
    bc_jobs = [j for j in pre_jobs if j["algo"] == "bc"]
    pre = in_pool(name, pretrain_job, [j for j in pre_jobs if j["algo"] != "bc"], workers)
    if bc_jobs:
        pre.update(in_pool(name, pretrain_job, bc_jobs, workers))
    for job in ft_jobs:
        if job["algo"] == "auto":
            options = {a: pre.get(f"pretrain-{a}-{job['seed']}") or saved(name, f"pretrain-{a}-{job['seed']}") for a in ("calql", "iql")}
            if all(options.values()):
                # a Cal-QL start clearly above its data goes first: auto will drop the data, and its drop branch,
                # WSRL, needs Cal-QL's critic (from IQL starts on reach, IQL on online data only fell 8-81 points);
                # otherwise the better of the seed's two pretrained runs
                if options["calql"]["offline_start"] >= data_mean + CLEARLY:
                    job["init_algo"] = "calql"
                else:
                    job["init_algo"] = max(options, key=lambda a: options[a]["offline_start"])
        if job.get("init_algo"):
            job["init"] = str(work / f"pretrain-{job['init_algo']}-{job['seed']}")
    in_pool(name, finetune_job, [j for j in ft_jobs if j["algo"] == "auto"], workers)
    for job in ft_jobs:  # an auto run that kept the data from its IQL start is the IQL baseline's run, bit for bit
        auto = saved(name, f"auto-{job['seed']}")
        if job["algo"] == "iql" and saved(name, job["key"]) is None and auto and (auto["ran"], auto["init_algo"]) == ("iql", "iql"):
            save(name, job["key"], {**auto, "algo": "iql", "decision": None, "reused_from": f"auto-{job['seed']}"})
    in_pool(name, finetune_job, [j for j in ft_jobs if j["algo"] != "auto"], workers)
    if "plateau" in groups:  # after the pretraining: it reads every IQL start there is
        iql_runs = {seed: str(work / f"pretrain-iql-{seed}") for seed in auto_seeds
                    if (work / f"pretrain-iql-{seed}" / "checkpoints" / "latest.pt").exists()}
        in_pool(name, plateau_job, [{**base, "key": "plateau", "iql_runs": iql_runs}], 1)
    plateau = saved(name, "plateau") if args.task == "push" else None

    all_pre = {p.stem: json.loads(p.read_text()) for p in runs_dir(name).glob("pretrain-*.json")}
    runs = {p.stem: json.loads(p.read_text()) for p in runs_dir(name).glob("*.json") if not p.stem.startswith("pretrain-")}
    rows = task_rows(args.task, s, data_mean, all_pre, runs, auto_seeds, seeds)
    if "calibration" in groups:
        rows += calibration(work, s, args.quick)
    if "resume" in groups and "pretrain-calql-0" in all_pre and (work / "pretrain-calql-0" / "checkpoints" / "latest.pt").exists():
        value, detail = kill_and_resume(work, str(work / "pretrain-calql-0"), env_id)
        rows.append(row("resume_continues_with_buffer", value, "bool", "== 1", detail))
    curves = runs
    pretrain_note = "; ".join(f"{k.removeprefix('pretrain-')}: " + " ".join(f"{st // 1000}k {v:.0f}" for st, v in
                                                                            zip(r["curve_steps"], r["curve"]))
                              + f" -> start {r['offline_start']:.1f}" for k, r in sorted(all_pre.items()))
    for r in rows:
        if "sims/Arm" not in r["detail"]:
            r["detail"] += f"; {env_id}"
    if rows:
        rows[0]["detail"] += f"; pretraining curves (update: score) {pretrain_note}; settings {json.dumps(s)}"
    md = table(args.task, data_mean, all_pre, curves) + (plateau_table(plateau) if plateau else "")
    print(md)
    print_rows(rows)
    (RESULTS / f"{name}.md").write_text(md + "\n")
    if curves:
        plot(RESULTS / f"{name}.png", f"{env_id}, medium data ({'quick' if args.quick else 'CPU settings'})", data_mean, curves)
    out = write_results(name, rows, merge=True, extra={"plateau": plateau} if plateau else None)
    print(f"wrote {out} in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
