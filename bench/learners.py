"""Learner speed bars (docs/benchmarks.md), ratios measured side by side in one run.

    python bench/learners.py           # full
    python bench/learners.py --quick   # fewer repetitions
    python bench/learners.py --only-speed   # the two speed-ratio rows

Rows:
* sacn_update_vs_matmul_flops -- a 10-critic SAC-N update (3x256, batch 256) on CPU
  reaches this fraction of the machine's matmul FLOP rate, measured with plain
  batched matmuls of the same total FLOPs in the same run.
* sacn_vectorized_vs_loop_small -- at an overhead-bound size (3x16, batch 4) our
  vectorized update runs this many times the updates/s of a straightforward
  per-critic Python loop computing the same math.
* iql_beats_bc_on_medium, calql_beats_bc_on_medium -- offline learning on the arm push
  medium dataset (datasets/arm-push-medium.yaml): normalized scores of BC, IQL and
  Cal-QL, 3 seeds each (IQM and 95% bootstrap CI), with a plot (learners_medium.png).
  Seeds are cached in bench/results/_work/learners/ as they finish.
* iql_updates_vs_d3rlpy, cql_updates_vs_d3rlpy (with --peer-python) -- updates/s against
  d3rlpy run from another environment on the same data, alternating runs.
Writes bench/results/learners.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import print_rows, row, write_results  # noqa: E402

from agent.learners import SACN, SACNConfig  # noqa: E402
from agent.learners.common import adam, not_done  # noqa: E402
from agent.nets import TanhGaussianActor, Temperature, mlp  # noqa: E402

OBS, ACT = 17, 6


def make_batch(batch_size: int) -> dict[str, torch.Tensor]:
    return {"obs": torch.randn(batch_size, OBS), "action": torch.rand(batch_size, ACT) * 2 - 1,
            "reward": torch.randn(batch_size), "next_obs": torch.randn(batch_size, OBS),
            "terminated": torch.zeros(batch_size, dtype=torch.bool), "truncated": torch.zeros(batch_size, dtype=torch.bool)}


def linear_params(in_dim: int, hidden: list[int], out_dim: int) -> int:
    dims = [in_dim, *hidden, out_dim]
    return sum(a * b for a, b in zip(dims, dims[1:]))


def sacn_update_flops(batch_size: int, hidden: list[int], critics: int) -> float:
    """Matmul FLOPs of one SAC-N update (2 per multiply-add; a backward pass costs two
    forwards when weights get gradients, one when only inputs do)."""
    pc = linear_params(OBS + ACT, hidden, 1)
    pa = linear_params(OBS, hidden, 2 * ACT)
    fwd_c, fwd_a = 2 * batch_size * critics * pc, 2 * batch_size * pa
    target = fwd_a + fwd_c                 # pi(s') and the target critics
    critic = 3 * fwd_c                     # forward + backward with weight gradients
    actor = 3 * fwd_a + 2 * fwd_c          # actor fwd+bwd, critic fwd + bwd to its input
    return float(target + critic + actor)


def plain_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """The textbook optimizer step (what ``agent.learners.common.step`` did before its
    lean Adam path): the loop baseline stays written the straightforward way."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()


class LoopSACN:
    """The same SAC-N math written the straightforward way: a list of critics, a Python
    loop over them in the target, the critic loss and the actor loss. Its networks are
    plain ``nn.Sequential`` Linear/ReLU stacks and its steps textbook ``torch.optim``
    calls, as this baseline has always been (not the fused paths of ``agent.nets``)."""

    def __init__(self, cfg: SACNConfig):
        self.cfg = cfg
        self.actor = TanhGaussianActor(OBS, ACT, cfg.hidden_dims)
        self.actor.net = nn.Sequential(*self.actor.net)
        self.critics = nn.ModuleList(nn.Sequential(*mlp(OBS + ACT, cfg.hidden_dims, 1)) for _ in range(cfg.num_critics))
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.temperature = Temperature(1.0)
        dev = torch.device("cpu")
        self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, dev)
        self.critic_opt = adam(self.critics.parameters(), cfg.critic_lr, dev)
        self.alpha_opt = adam(self.temperature.parameters(), cfg.alpha_lr, dev)

    def update(self, b):
        with torch.no_grad():
            a2, lp2 = self.actor.sample(b["next_obs"])
            x2 = torch.cat([b["next_obs"], a2], -1)
            q2 = torch.stack([t(x2).squeeze(-1) for t in self.targets]).min(0).values
            y = b["reward"] + self.cfg.gamma * not_done(b) * (q2 - self.temperature() * lp2)
        x = torch.cat([b["obs"], b["action"]], -1)
        loss = sum(((c(x).squeeze(-1) - y) ** 2).mean() for c in self.critics)
        plain_step(self.critic_opt, loss, list(self.critics.parameters()))
        with torch.no_grad():
            for t, c in zip(self.targets, self.critics):
                for pt, pc in zip(t.parameters(), c.parameters()):
                    pt.mul_(1 - self.cfg.tau).add_(pc, alpha=self.cfg.tau)
        a, lp = self.actor.sample(b["obs"])
        xa = torch.cat([b["obs"], a], -1)
        q = torch.stack([c(xa).squeeze(-1) for c in self.critics]).min(0).values
        actor_loss = (self.temperature().detach() * lp - q).mean()
        plain_step(self.actor_opt, actor_loss, list(self.actor.parameters()))
        alpha_loss = self.temperature.loss(lp, -float(ACT))
        plain_step(self.alpha_opt, alpha_loss, [self.temperature.log_alpha])
        return {"critic_loss": loss.detach()}


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def interleaved(fns: dict, n: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, alternating between them."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            times[key].append(timed(fn, n))
    return {k: statistics.median(v) for k, v in times.items()}


def flop_bar(reps: int) -> dict:
    cfg = SACNConfig(hidden_dims=[256, 256, 256], num_critics=10)
    learner = SACN(cfg, OBS, ACT)
    batch = make_batch(256)
    flops = sacn_update_flops(256, cfg.hidden_dims, cfg.num_critics)
    # plain batched matmuls of the same FLOPs: [10, 256, 256] @ [10, 256, 256]
    a, b = torch.randn(10, 256, 256), torch.randn(10, 256, 256)
    per_bmm = 2 * 10 * 256 * 256 * 256
    count = max(1, round(flops / per_bmm))

    def matmuls():
        for _ in range(count):
            torch.bmm(a, b)

    for _ in range(3):
        learner.update(batch)
        matmuls()
    t = interleaved({"update": lambda: learner.update(batch), "matmul": matmuls}, n=5, reps=reps)
    ours = flops / t["update"]
    ref = count * per_bmm / t["matmul"]
    return {"ratio": ours / ref, "ours_gflops": ours / 1e9, "matmul_gflops": ref / 1e9,
            "updates_per_s": 1 / t["update"], "flops": flops}


def loop_bar(reps: int) -> dict:
    cfg = SACNConfig(hidden_dims=[16, 16, 16], num_critics=10)
    torch.manual_seed(0)
    ours, loop = SACN(cfg, OBS, ACT), LoopSACN(cfg)
    batch = make_batch(4)
    for _ in range(5):
        ours.update(batch)
        loop.update(batch)
    t = interleaved({"ours": lambda: ours.update(batch), "loop": lambda: loop.update(batch)}, n=50, reps=reps)
    return {"ratio": t["loop"] / t["ours"], "ours_per_s": 1 / t["ours"], "loop_per_s": 1 / t["loop"]}


ENV = "sims/ArmPush-v0"
LEARNING = {  # CPU-sized settings, stated in the results
    "bc": {},
    "iql": {"iql": {"expectile": 0.7, "beta": 3.0}},
    # 4 sampled actions per state for the logsumexp (the papers use 10): a CPU sizing
    # and a temperature learning 30x faster than the papers' (1.0 must fall to ~0.05 within
    # a few thousand updates, not a million; at 1e-4 the actor stays near uniform: 2.5 at 4k)
    "calql": {"calql": {"hidden_dims": [256, 256], "alpha_cql": 5.0, "num_sampled_actions": 4, "alpha_lr": 3e-3}},
}


def medium_store(work: Path) -> Path:
    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml

    out = work / "medium.zarr"
    if not (out / "zarr.json").exists():
        collect(from_dict(CollectConfig, {**load_yaml(ROOT / "datasets" / "arm-push-medium.yaml"), "out": str(out),
                                           "num_envs": 2}))
    return out


def learning_seed(store: Path, work: Path, algo: str, seed: int, steps: int) -> dict:
    import shutil

    from agent.config import from_dict
    from agent.evaluate import evaluate
    from agent.logger import read_metrics
    from agent.policy import policy_maker
    from agent.pretrain import PretrainConfig, pretrain

    run = work / f"{algo}-seed{seed}"
    if run.exists():
        shutil.rmtree(run)
    cfg = from_dict(PretrainConfig, {"data": str(store), "out": str(run), "algo": algo, "steps": steps, "seed": seed,
                                     "eval_every": steps // 5, "eval_episodes": 5, "checkpoint_every": steps,
                                     **LEARNING[algo]})
    started = time.time()
    pretrain(cfg)
    seconds = time.time() - started

    final = evaluate(ENV, policy_maker(str(run), ENV), 20, seed=30_000 + 100 * seed)
    curve = [(m["step"], m["eval/normalized_score"]) for m in read_metrics(run) if "eval/normalized_score" in m]
    return {"algo": algo, "seed": seed, "final_score": final["normalized_score"], "curve": curve, "seconds": seconds}


def _learning_job(job: tuple) -> None:
    from common import cached

    torch.set_num_threads(1)
    store, work, algo, seed, steps = job
    cached("learners", f"{algo}-s{steps}-seed{seed}", lambda: learning_seed(store, work, algo, seed, steps))


def learning_rows(seeds: int, steps: int, workers: int = 1, only: list[str] | None = None) -> list[dict]:
    import multiprocessing

    from common import WORK, cached, iqm_ci

    work = WORK / "learners"
    work.mkdir(parents=True, exist_ok=True)
    store = medium_store(work)
    algos = [a for a in LEARNING if a in (only or LEARNING)]
    todo = [(store, work, algo, s, steps) for algo in algos for s in range(seeds)
            if not (WORK / "learners" / f"{algo}-s{steps}-seed{s}.json").exists()]
    if workers > 1 and todo:  # each finished run is cached as it ends, so a killed bench resumes
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            list(pool.imap_unordered(_learning_job, todo))
    results = {algo: [cached("learners", f"{algo}-s{steps}-seed{s}", lambda a=algo, s=s: learning_seed(store, work, a, s, steps))
                      for s in range(seeds)] for algo in algos}
    plot_learning(results, ROOT / "bench" / "results" / "learners_medium.png")
    iqm, text = {}, {}
    for algo, runs in results.items():
        scores = [r["final_score"] for r in runs]
        iqm[algo], lo, hi = iqm_ci(scores)
        text[algo] = (f"{algo}: IQM {iqm[algo]:.1f} [95% CI {lo:.1f}, {hi:.1f}], seeds {[round(x, 1) for x in scores]}, "
                      f"{statistics.mean(r['seconds'] for r in runs):.0f} s/run, settings {LEARNING[algo]}")
    return [row(f"{algo}_beats_bc_on_medium", round(iqm[algo] - iqm["bc"], 2), "points", "> 0",
                f"normalized-score IQM difference over {seeds} seeds, {steps} updates, batch 256, on {ENV} medium data; "
                f"{text[algo]}; {text['bc']}") for algo in ("iql", "calql") if algo in results]


PEER_SETTINGS = {"iql": ("iql", {"expectile": 0.9, "beta": 3.0, "hidden_dims": [256, 256]}),
                 "cql": ("cql", {"alpha_cql": 5.0, "hidden_dims": [256, 256, 256]})}


def ours_updates_per_s(store: Path, algo: str, steps: int) -> float:
    import numpy as np

    from agent.config import from_dict
    from agent.learners import LEARNERS, make_learner
    from agent.pretrain import BatchSource
    from agent.store import Store, load_transitions

    cache = load_transitions(Store.open(store))
    cfg = from_dict(LEARNERS[algo][1], PEER_SETTINGS[algo][1])
    learner = make_learner(algo, cfg, cache.obs_table.shape[1], cache.action.shape[1])
    learner.fit_normalizer(cache.obs.mean(0), cache.obs.var(0))
    source = BatchSource(cache, {}, "cpu", np.random.default_rng(0))
    for _ in range(20):
        learner.update(source.sample(256))
    start = time.perf_counter()
    for _ in range(steps):
        learner.update(source.sample(256))
    return steps / (time.perf_counter() - start)


def flat_export(work: Path) -> Path:
    """The medium data as flat arrays for d3rlpy (it infers episodes from terminals/timeouts)."""
    import numpy as np

    from agent.store import Store, load_transitions

    work.mkdir(parents=True, exist_ok=True)
    cache = load_transitions(Store.open(medium_store(work)))
    npz = work / "medium.npz"
    np.savez(npz, obs=cache.obs, action=cache.action, reward=cache.reward,
             terminated=cache.terminated, truncated=cache.truncated | np.isin(np.arange(cache.num_steps), cache.episode_ends - 1))
    return npz


def peer_rows(peer_python: str, steps: int, reps: int) -> list[dict]:
    """Updates/s of our IQL and CQL against d3rlpy's on the same data, alternating runs."""
    import json as _json
    import subprocess

    from common import WORK

    work = WORK / "learners"
    store, npz = medium_store(work), flat_export(work)
    rows = []
    for algo in ("iql", "cql"):
        ours, peer, version = [], [], ""
        for _ in range(reps):
            ours.append(ours_updates_per_s(store, algo, steps))
            out = subprocess.run([peer_python, str(ROOT / "bench" / "peer_d3rlpy.py"), str(npz), algo, str(steps),
                                  str(torch.get_num_threads())], capture_output=True, text=True, check=True)
            result = _json.loads(out.stdout.strip().splitlines()[-1])
            peer.append(result["updates_per_s"])
            version = result["d3rlpy"]
        o, p = statistics.median(ours), statistics.median(peer)
        rows.append(row(f"{algo}_updates_vs_d3rlpy", round(o / p, 3), "ratio", ">= 1",
                        f"ours {o:.0f} vs d3rlpy {version} {p:.0f} updates/s (incl. sampling), batch 256, "
                        f"settings {PEER_SETTINGS[algo][1]}, medians of {reps} alternating runs of {steps} updates"))
    return rows


def peer_score_rows(peer_python: str, seeds: int, steps: int) -> list[dict]:
    """Normalized scores of d3rlpy's IQL trained on the same medium data with the same
    settings and update budget as our learning rows' IQL, both evaluated by our evaluator
    (20 episodes per seed, the same evaluation seeds)."""
    import subprocess

    from common import WORK, cached, iqm_ci
    from agent.evaluate import evaluate

    work = WORK / "learners"
    npz = flat_export(work)

    def peer_seed(seed: int) -> dict:
        policy_path = work / f"peer-iql-seed{seed}.pt"
        subprocess.run([peer_python, str(ROOT / "bench" / "peer_d3rlpy.py"), str(npz), "iql", str(steps), "1",
                        "--save", str(policy_path), "--seed", str(seed)], capture_output=True, text=True, check=True,
                       cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
        policy = torch.jit.load(str(policy_path)).eval()

        def make_policy(env):
            def act(obs):
                with torch.no_grad():
                    return policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            return act
        final = evaluate(ENV, make_policy, 20, seed=30_000 + 100 * seed)
        return {"seed": seed, "final_score": final["normalized_score"]}

    peer = [cached("learners", f"peer-iql-s{steps}-seed{s}", lambda s=s: peer_seed(s)) for s in range(seeds)]
    ours = [cached("learners", f"iql-s{steps}-seed{s}", lambda: None) for s in range(seeds)]
    if any(r is None for r in ours):
        raise SystemExit("peer score rows need our IQL learning runs first: run without --skip-learning")
    p, q = [r["final_score"] for r in peer], [r["final_score"] for r in ours]
    (pm, plo, phi), (om, olo, ohi) = iqm_ci(p), iqm_ci(q)
    return [row("iql_score_vs_d3rlpy", round(om - pm, 2), "points", ">= -5",
                f"ours IQM {om:.1f} [{olo:.1f}, {ohi:.1f}] vs d3rlpy IQM {pm:.1f} [{plo:.1f}, {phi:.1f}] over {seeds} seeds, "
                f"{steps} updates, batch 256, expectile 0.7, beta 3, 2x256, standardized observations, on {ENV} medium data; "
                f"20 evaluation episodes per seed with our evaluator; seeds ours {[round(x, 1) for x in q]}, "
                f"d3rlpy {[round(x, 1) for x in p]}")]


def plot_learning(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, runs in results.items():
        curves = [r["curve"] for r in runs if r["curve"]]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        scores = np.array([[v for _, v in c] for c in curves])
        ax.plot(steps, scores.mean(0), marker="o", label=f"{algo} (n={len(curves)})")
        ax.fill_between(steps, scores.min(0), scores.max(0), alpha=0.2)
    ax.set_xlabel("gradient updates")
    ax.set_ylabel("normalized score (5 eval episodes)")
    ax.set_title(f"Offline learning on {ENV} medium data")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-learning", action="store_true", help="leave out the learning rows")
    p.add_argument("--skip-speed", action="store_true", help="leave out the speed-ratio rows")
    p.add_argument("--only-speed", action="store_true", help="the two speed-ratio rows only (no learning, no peer rows)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--algos", default="", help="learning rows for these algorithms only (comma-separated: iql, calql; BC always runs)")
    p.add_argument("--workers", type=int, default=1, help="learning runs in parallel processes (one torch thread each)")
    p.add_argument("--peer-python", help="python of an environment with d3rlpy: adds the updates/s comparison rows")
    p.add_argument("--peer-steps", type=int, default=500, help="updates per timed peer run")
    p.add_argument("--skip-peer-speed", action="store_true", help="with --peer-python: leave out the updates/s rows")
    p.add_argument("--skip-peer-score", action="store_true", help="with --peer-python: leave out the score parity row")
    args = p.parse_args()
    if args.only_speed:
        args.skip_speed, args.skip_learning, args.peer_python = False, True, None
    reps = 3 if args.quick else 9
    threads = torch.get_num_threads()
    rows: list[dict] = []
    if not args.skip_speed:
        rows += speed_rows(reps, threads)
    if args.peer_python and not args.skip_peer_speed:
        rows += peer_rows(args.peer_python, 100 if args.quick else args.peer_steps, 3)
    if not args.skip_learning:
        rows += learning_rows(1 if args.quick else args.seeds, 2_000 if args.quick else args.steps, args.workers,
                             ["bc", *args.algos.split(",")] if args.algos else None)
    if args.peer_python and not args.skip_peer_score:
        rows += peer_score_rows(args.peer_python, 1 if args.quick else args.seeds, 2_000 if args.quick else args.steps)
    print_rows(rows)
    write_results("learners" + (".quick" if args.quick else ""), rows, merge=True)


def speed_rows(reps: int, threads: int) -> list[dict]:
    from agent.perf import tune_cpu_allocator

    tune_cpu_allocator()  # as `agent pretrain` / `agent finetune` run; the matmul reference shares the process
    f = flop_bar(reps)
    lp = loop_bar(reps)
    return [
        row("sacn_update_vs_matmul_flops", round(f["ratio"], 3), "ratio", ">= 0.7",
            f"10-critic SAC-N, 3x256, batch 256, CPU {threads} threads, eager update (not compiled): "
            f"{f['ours_gflops']:.1f} GFLOP/s ({f['updates_per_s']:.1f} updates/s, {f['flops'] / 1e9:.2f} GFLOP each) "
            f"vs bmm {f['matmul_gflops']:.1f} GFLOP/s"),
        row("sacn_vectorized_vs_loop_small", round(lp["ratio"], 2), "ratio", ">= 4.5",
            f"10 critics 3x16, batch 4, eager: {lp['ours_per_s']:.0f} vs {lp['loop_per_s']:.0f} updates/s "
            f"(loop: nn.Sequential per critic, textbook torch.optim steps)"),
    ]


if __name__ == "__main__":
    main()
