"""Guided data augmentation bars (docs/benchmarks.md).

    python bench/augment.py                   # all rows: 5 seeds of the learning comparison
    python bench/augment.py --quick           # 2 seeds, shorter training (writes augment.quick.json)
    python bench/augment.py --skip-learning   # validity and throughput rows only

Rows:
* validity_accepts_true / validity_rejects_corrupted -- the sim-replay filter on expert
  transitions of ArmReach, ArmPush, ArmPickPlace and reacher, and on the same transitions
  deliberately corrupted four ways (next-observation noise, a random action in place of
  the one taken, a reward offset, next observations of another episode).
* augment_guide_learned_filter_throughput -- transitions/s through augmentation
  (rotate, reflect, translate_goal, relabel_goal), the reach guide and the dynamics-
  ensemble filter on one CPU thread, 10-step segments of ArmReach demos. An absolute
  rate, as its bar is stated; the machine is named in the results file.
* sim_replay_throughput -- the simulator replay filter alone, reported separately.
* <algo>_guided_vs_raw, <algo>_guided_vs_random (bc, iql) -- from 5 expert demos
  of ArmReach (the scripted expert with action noise 0.1, as in the project's expert
  recipe; noiseless demos leave no recovery states and every learner fails): IQM
  normalized score of policies trained on the demos plus guided
  augmentation, minus the IQM of the same learner on the demos alone and on the demos
  plus random augmentation (Gaussian noise, amplitude scaling); augmented data is capped
  at half of every batch. IQM and 95% bootstrap CI over seeds in detail; plot
  augment_learning.png. Each (algo, data, seed) is cached in bench/results/_work/augment/.

Settings of the learning rows, and why:
* Guided augmentation = ``rotate`` (turns about the base, up to 90 degrees), the reach
  guide, and a user guide that keeps the goal inside the task's goal region
  (sims.arm.reach GOAL_LOW..GOAL_HIGH: the evaluation's goals), then sim_replay. Rotation
  turns a demo toward goal g into a demo toward Rz(g) with the expert's own actions
  (the expert is rotation-equivariant), so it multiplies goal coverage with expert
  labels. Measured on 5 demos (E[a.e]/E[e.e], recorded action a against the expert's
  action e on the augmented observation, joints only; 1.0 = expert labels): rotate
  1.00 far from the goal / 0.95 within 3 cm, as the raw demos (1.00 / 0.95);
  translate_goal 0.30 / 0.16 (the arm still heads for the old goal, and the guide's
  45-degree cone admits it); relabel_goal 1.02 / 0.64 (near the goal the recorded
  correction aims at the old goal). Those two keep the dynamics valid but are not expert
  behaviour; trained in, they lower BC below the raw demos (2 seeds, 3,000 updates: all
  four exact augmentations 23, relabel_goal alone 27, raw 55), so they are left out.
  ``reflect`` is refused on these demos (the noisy gripper command keeps the gripper
  from resting wide open). Without the goal-region guide half of the rotated goals lie
  outside the region the policy is evaluated on.
* Offline RL = IQL (expectile 0.7, beta 3, the defaults). TD3+BC does not learn this
  task from demos at all: 3 to 34 normalized from 50 raw demos (10x the data) at 3,000
  updates, so it cannot show an effect of augmentation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/sims.py must not shadow the sims package

from common import RESULTS, cached, iqm_ci, print_rows, row, write_results  # noqa: E402

from agent.augment import AugmentConfig, Augmenter, SimReplayFilter, cut_segments  # noqa: E402
from agent.augment.filters import CORRUPTIONS, corrupt  # noqa: E402
from agent.augment.guides import all_of, goal, stays_inside  # noqa: E402
from agent.augment.registry import GUIDES, register_guide  # noqa: E402
from agent.augment.segment import Segment  # noqa: E402
from agent.collect import rollout_episode  # noqa: E402
from agent.envs import make_env  # noqa: E402
from agent.evaluate import evaluate  # noqa: E402
from agent.learners import BCConfig, IQLConfig, make_learner  # noqa: E402
from sims.arm.reach import GOAL_HIGH, GOAL_LOW  # noqa: E402
from sims.experts import NoisyPolicy, make_expert  # noqa: E402

LEARN_ENV = "sims/ArmReach-v0"
DEMOS = 5
DEMO_NOISE = 0.1  # the expert with the action noise of datasets/arm-reach-expert.yaml: a demonstrator that is good, not perfect
SEGMENT = 10
AUGMENTED_SHARE = 0.5  # the cap on augmented data in every batch
EXACT = ["rotate", "reflect", "translate_goal", "relabel_goal"]  # the throughput row's pipeline
GUIDED = ["rotate"]  # the learning rows' guided augmentation (see the module docstring)
GUIDE = "reach_task_goals"
RANDOM = ["gaussian_noise", "amplitude_scale"]
ALGOS = ("bc", "iql")

if GUIDE not in GUIDES:  # a user's guide: the reach example, with the goal inside the task's goal region
    register_guide(GUIDE)(all_of(stays_inside(goal, GOAL_LOW, GOAL_HIGH, label="goal_outside_task"), GUIDES["reach"]))


def expert_segments(env_id: str, seeds: list[int], length: int = SEGMENT, noise: float = 0.0) -> tuple[object, list[Segment]]:
    """The scripted expert's episodes (with Gaussian action noise of std ``noise``) cut into segments."""
    env = make_env(env_id)
    _, info = env.reset(seed=seeds[0])
    keys = sorted(info["sim_state"])
    expert = make_expert(env_id, env)
    act_dim = int(np.prod(env.action_space.shape))
    episodes = [rollout_episode(env, NoisyPolicy(expert, act_dim, noise=noise, epsilon=0.0, seed=s) if noise else expert, s, keys)
                for s in seeds]
    return env, [seg for i, e in enumerate(episodes) for seg in cut_segments(e, i, length)]


def real_transitions(segments: list[Segment]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([getattr(s, k) for s in segments]) for k in ("obs", "action", "next_obs")}


# -- validity ---------------------------------------------------------------------------------
def validity_rows(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    envs = ["sims/ArmReach-v0", "sims/ArmPush-v0", "sims/ArmPickPlace-v0", "dmc/reacher-easy-v0"]
    accepted, rejected = [], {k: [] for k in CORRUPTIONS}
    replay_time, replayed = 0.0, 0
    per_env = []
    for env_id in envs:
        _, segments = expert_segments(env_id, list(range(2 if quick else 4)))
        segments = segments[::max(1, len(segments) // 40)]  # reacher's 1000-step episodes would dominate
        parents = np.array([s.parent for s in segments])
        replay = SimReplayFilter(make_env(env_id))
        start = time.perf_counter()
        ok = np.concatenate([replay.transition_errors(s) for s in segments]) <= 1.0
        replay_time += time.perf_counter() - start
        replayed += ok.size
        accepted.append(ok)
        for kind in CORRUPTIONS:
            # other_next_obs takes next observations from another episode: a resting arm looks the same all episode
            others = [segments[int(rng.choice(np.flatnonzero(parents != s.parent)))] for s in segments]
            errors = np.concatenate([replay.transition_errors(corrupt(s, kind, rng, o)) for s, o in zip(segments, others)])
            rejected[kind].append(errors > 1.0)
        per_env.append(f"{env_id} {ok.mean():.1%} of {ok.size}")
    acc = np.concatenate(accepted)
    rej = {k: np.concatenate(v) for k, v in rejected.items()}
    all_rej = np.concatenate(list(rej.values()))
    return [
        row("validity_accepts_true", round(float(acc.mean()), 4), "fraction", ">= 0.99",
            f"{acc.size} expert transitions replayed: " + "; ".join(per_env)),
        row("validity_rejects_corrupted", round(float(all_rej.mean()), 4), "fraction", ">= 0.99",
            f"{all_rej.size} corrupted transitions: " + ", ".join(f"{k} {v.mean():.1%}" for k, v in rej.items())),
        row("sim_replay_throughput", round(replayed / replay_time), "transitions/s", ">= 0",
            "reported separately (no bar): restore state, step, compare; one CPU thread, shared 2-core machine"),
    ]


# -- throughput ---------------------------------------------------------------------------------
def throughput_row(quick: bool) -> dict:
    env, segments = expert_segments(LEARN_ENV, list(range(DEMOS)))
    cfg = AugmentConfig(augment=EXACT, guide="reach", filter=["dynamics_ensemble"], ensemble_steps=200 if quick else 500)
    aug = Augmenter(cfg, env, segments, real_transitions(segments))
    rng = np.random.default_rng(0)
    rates, accepted = [], 0
    for _ in range(3 if quick else 7):  # repetitions; the median resists the shared machine's noise
        start, transitions = time.perf_counter(), 0
        for _ in range(5):
            drawn = [aug.draw(rng) for _ in range(64)]
            results = aug.process_batch(drawn, rng)
            transitions += sum(len(s) for s in drawn)
            accepted += sum(out is not None for out, _, _ in results)
        rates.append(transitions / (time.perf_counter() - start))
    value = float(np.median(rates))
    return row("augment_guide_learned_filter_throughput", round(value), "transitions/s", ">= 10000",
               f"median of {len(rates)} runs (min {min(rates):.0f}, max {max(rates):.0f}); {SEGMENT}-step segments, "
               f"{', '.join(EXACT)} + reach guide + 5-model dynamics ensemble, 1 torch thread; "
               f"batches of 64 segments; {accepted / (320 * len(rates)):.0%} accepted")


# -- learning ---------------------------------------------------------------------------------
def transitions(segments: list[Segment]) -> dict[str, np.ndarray]:
    def cat(key: str, dtype=np.float32) -> np.ndarray:
        return np.concatenate([getattr(s, key) for s in segments]).astype(dtype)

    truncated = np.concatenate([np.arange(len(s)) == len(s) - 1 for s in segments])
    terminated = cat("terminated", bool)
    return {"obs": cat("obs"), "action": np.clip(cat("action"), -1, 1), "reward": cat("reward"), "next_obs": cat("next_obs"),
            "terminated": terminated, "truncated": truncated & ~terminated}


def build_data(seed: int, quick: bool) -> dict[str, tuple[dict, dict | None]]:
    """Per dataset: (demo transitions, augmented transitions or None)."""
    env, demos = expert_segments(LEARN_ENV, [1000 * (seed + 1) + i for i in range(DEMOS)], noise=DEMO_NOISE)
    rng = np.random.default_rng(seed)
    attempts = 600 if quick else 1500
    guided = Augmenter(AugmentConfig(augment=GUIDED, guide=GUIDE, filter=["sim_replay"]), env, demos, {})
    kept = [s for s in (guided.process(guided.draw(rng), rng)[0] for _ in range(attempts)) if s is not None]
    unguided = Augmenter(AugmentConfig(augment=RANDOM, guide="none"), env, demos, {})
    noisy = [s for s in (unguided.process(unguided.draw(rng), rng)[0] for _ in range(len(kept))) if s is not None]
    raw = transitions(demos)
    return {"raw": (raw, None), "guided": (raw, transitions(kept)), "random": (raw, transitions(noisy))}


def sample(data: tuple[dict, dict | None], batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    raw, aug = data
    parts = [(raw, batch_size)] if aug is None else [(raw, batch_size - int(batch_size * AUGMENTED_SHARE)),
                                                     (aug, int(batch_size * AUGMENTED_SHARE))]
    rows = [(src, rng.integers(0, len(src["obs"]), n)) for src, n in parts]  # one draw per transition: keys stay aligned
    return {key: torch.as_tensor(np.concatenate([src[key][idx] for src, idx in rows])) for key in raw}


def train_and_evaluate(algo: str, data: tuple[dict, dict | None], seed: int, steps: int, episodes: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    raw = data[0]
    cfg = BCConfig() if algo == "bc" else IQLConfig()
    learner = make_learner(algo, cfg, raw["obs"].shape[1], raw["action"].shape[1])
    obs = np.concatenate([raw["obs"]] + ([data[1]["obs"]] if data[1] is not None else []))
    learner.fit_normalizer(obs.mean(0), obs.var(0))
    for _ in range(steps):
        learner.update(sample(data, 256, rng))
    result = evaluate(LEARN_ENV, lambda env: (lambda o: learner.act(o, deterministic=True)), episodes, seed=10_000)
    return {"score": result["normalized_score"], "success_rate": result["success_rate"]}


def learning_rows(quick: bool) -> list[dict]:
    seeds = list(range(2 if quick else 5))
    steps = {"bc": 1000 if quick else 3000, "iql": 1500 if quick else 3000}
    episodes = 10 if quick else 20
    tag = f"{'quick' if quick else 'full'}-noise{DEMO_NOISE}-{'+'.join(GUIDED)}-{GUIDE}"
    scores: dict[tuple[str, str], list[float]] = {}
    for seed in seeds:
        data: dict | None = None
        for algo in ALGOS:
            for name in ("raw", "guided", "random"):
                def compute(algo=algo, name=name, seed=seed):
                    nonlocal data
                    if data is None:
                        data = build_data(seed, quick)
                    sizes = {k: len(v[1]["obs"]) if v[1] is not None else 0 for k, v in data.items()}
                    return {**train_and_evaluate(algo, data[name], seed, steps[algo], episodes), "augmented": sizes[name]}

                result = cached("augment", f"{tag}-{algo}-{name}-{seed}", compute)
                scores.setdefault((algo, name), []).append(result["score"])
                print(f"  {algo:>6} {name:>7} seed {seed}: score {result['score']:.1f}, "
                      f"success {result['success_rate']:.0%}, augmented transitions {result['augmented']}", flush=True)
    rows = []
    summary = {key: iqm_ci(v) for key, v in scores.items()}
    for algo in ALGOS:
        g = summary[(algo, "guided")]
        for other in ("raw", "random"):
            o = summary[(algo, other)]
            rows.append(row(f"{algo}_guided_vs_{other}", round(g[0] - o[0], 2), "score", "> 0",
                            f"IQM normalized score over {len(seeds)} seeds, guided {g[0]:.1f} [{g[1]:.1f}, {g[2]:.1f}] vs "
                            f"{other} {o[0]:.1f} [{o[1]:.1f}, {o[2]:.1f}] (95% bootstrap CI); {DEMOS} demos of {LEARN_ENV} "
                            f"(action noise {DEMO_NOISE}), {steps[algo]} updates, batch 256; guided: {'+'.join(GUIDED)}, "
                            f"guide {GUIDE}, sim_replay; random: {'+'.join(RANDOM)}; augmented share {AUGMENTED_SHARE}"))
    plot(summary, scores, RESULTS / f"augment_learning{'.quick' if quick else ''}.png", len(seeds))
    return rows


def plot(summary: dict, scores: dict, path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ("raw", "random", "guided")
    for k, algo in enumerate(ALGOS):
        for j, name in enumerate(names):
            point, lo, hi = summary[(algo, name)]
            x = k * 4 + j
            ax.bar(x, point, color=("#999999", "#d98c5f", "#4c8bc9")[j], label=name if k == 0 else None)
            ax.errorbar(x, point, yerr=[[point - lo], [hi - point]], color="black", capsize=3)
            ax.scatter([x] * len(scores[(algo, name)]), scores[(algo, name)], color="black", s=6, zorder=3)
    ax.set_xticks([1, 5], ["BC", "IQL"])
    ax.set_ylabel("normalized score (IQM, 95% CI)")
    ax.set_title(f"{LEARN_ENV}, {DEMOS} expert demos, {n_seeds} seeds")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, shorter training, fewer replayed episodes")
    parser.add_argument("--skip-learning", action="store_true", help="only the validity and throughput rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = validity_rows(args.quick)
    rows.append(throughput_row(args.quick))
    print_rows(rows)
    if not args.skip_learning:
        rows += learning_rows(args.quick)
    print_rows(rows)
    out = write_results("augment.quick" if args.quick else "augment", rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
