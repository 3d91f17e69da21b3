"""ROS 2 bridge bars (docs/benchmarks.md): latency, control-loop timing, and learning parity.

    python bench/bridge.py                      # all rows: ~2 min of timing, then the parity runs (~1 h on 2 cores)
    python bench/bridge.py --only latency,ticks # the timing rows alone (~2 min)
    python bench/bridge.py --quick              # a few minutes: short timing runs, 2 seeds x 300 steps of parity

Rows (bench/results/bridge.json; --quick writes bridge.quick.json):

* ``command_latency_p99`` -- a forward position command's trip from the agent's publish
  (wall-clock stamp in the command's layout) to its arrival in the simulated driver's
  DDS reader, over Cyclone DDS on loopback, while ``robot/ArmReach-v0`` steps at 20 Hz
  in this process and the driver in another, under SCHED_FIFO (``--realtime-priority
  50``, as ros2_control runs on a real-time host). Target < 5 ms; p50, and the same
  run with the driver under normal scheduling, in the detail.
* ``missed_ticks_under_learner_load`` -- share of 20 Hz control ticks missed, by the
  driver's loop or the agent's (an observation more than one period late), while the
  agent acts with a SAC actor and a third process runs SAC updates back to back
  (batch 256, 256x256 networks, one thread). Target < 1 %.
* ``finetune_bridge_improves`` / ``finetune_parity_bridge_vs_sim`` -- RLPD fine-tuning
  on ArmReach with the arm-reach medium data (100 episodes of
  datasets/arm-reach-medium.yaml, 50/50 batches) through the bridge (sim driver, DDS,
  20 Hz real time) and in pure simulation, same seeds and budget (CPU sizes in FULL):
  the bridge run's final minus initial evaluation return (target > 0), and Welch's t of
  the final evaluation returns of the two sides (|difference of means| over its
  standard error; target < 2, the difference is within seed noise). Each run is cached
  under bench/results/_work/bridge[.quick]/ as it finishes, so a killed bench resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import WORK, cached, iqm_ci, print_rows, row, write_results  # noqa: E402

ROWS = ("latency", "ticks", "parity")
FULL = {"latency_steps": 1200, "ticks_steps": 1200, "seeds": 5, "steps": 4000, "warmup": 500, "eval_episodes": 10,
        "hidden": [128, 128], "batch": 128, "utd": 2, "data_episodes": 100}
QUICK = {"latency_steps": 200, "ticks_steps": 300, "seeds": 2, "steps": 300, "warmup": 100, "eval_episodes": 2,
         "hidden": [64, 64], "batch": 64, "utd": 1, "data_episodes": 10}
OBS_DIM, ACT_DIM = 28, 7  # ArmReach


def learner_load(seconds: float) -> None:
    """SAC updates back to back on random batches for ``seconds`` (the load process)."""
    import torch

    from agent.learners import make_learner
    from agent.learners.sac import SACConfig

    torch.set_num_threads(1)
    learner = make_learner("sac", SACConfig(), OBS_DIM, ACT_DIM, device="cpu")
    gen = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(1, 256, OBS_DIM, generator=gen), "action": torch.rand(1, 256, ACT_DIM, generator=gen) * 2 - 1,
             "reward": torch.randn(1, 256, generator=gen), "next_obs": torch.randn(1, 256, OBS_DIM, generator=gen),
             "terminated": torch.zeros(1, 256, dtype=torch.bool), "truncated": torch.zeros(1, 256, dtype=torch.bool)}
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    start = time.monotonic()
    deadline, updates = start + seconds, 0
    while time.monotonic() < deadline and not stop:
        learner.update(batch)
        updates += 1
    print(json.dumps({"updates": updates, "updates_per_s": updates / (time.monotonic() - start)}), flush=True)


def control_run(steps: int, with_load: bool, tmp: Path, realtime: bool = False) -> dict:
    """A driver process (under SCHED_FIFO when ``realtime``), ``robot/ArmReach-v0`` stepping
    here at 20 Hz with a SAC actor (and a SAC learner process when ``with_load``); the
    driver's and the env's statistics."""
    import gymnasium
    import torch

    import robot  # noqa: F401
    from agent.learners import make_learner
    from agent.learners.sac import SACConfig
    from robot.driver import DriverProcess

    torch.set_num_threads(1)
    domain = random.randint(100, 232)
    stats = tmp / f"driver-{domain}.json"
    flags = ["--realtime-priority", "50"] if realtime else []
    driver = DriverProcess(domain, "--stats-out", str(stats), *flags, log_path=tmp / f"driver-{domain}.log").start()
    load = None
    try:
        if with_load:
            load = subprocess.Popen([sys.executable, __file__, "--learner-load", str(steps / 20 + 30)], stdout=subprocess.PIPE,
                                    text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            time.sleep(3.0)  # torch imported, updates running
        actor = make_learner("sac", SACConfig(), OBS_DIM, ACT_DIM, device="cpu")
        env = gymnasium.make("robot/ArmReach-v0", transport="dds", domain_id=domain)
        obs, _ = env.reset(seed=0)
        start = time.monotonic()
        for t in range(steps):
            obs, _, _, truncated, _ = env.step(np.asarray(actor.act(obs, deterministic=False), np.float32))
            if truncated:
                obs, _ = env.reset(seed=t)
        elapsed = time.monotonic() - start
        timing = env.unwrapped.timing()
        env.close()
    finally:
        driver.stop()
        load_out = ""
        if load is not None:
            load.terminate()
            load_out = load.communicate(timeout=30)[0]
    result = json.loads(stats.read_text())
    return {"driver": result, "driver_log": driver.log(), "env": timing, "elapsed_s": elapsed,
            "load": json.loads(load_out.strip().splitlines()[-1]) if load_out.strip() else None}


def latency_row(s: dict, tmp: Path) -> dict:
    """The driver under SCHED_FIFO, as a ros2_control controller manager runs on a real-time
    host; the same measurement with normal scheduling goes in the detail."""
    rt_run = control_run(s["latency_steps"], with_load=False, tmp=tmp, realtime=True)
    rt = np.asarray(rt_run["driver"]["latency_ms"])
    normal = np.asarray(control_run(s["latency_steps"], with_load=False, tmp=tmp)["driver"]["latency_ms"])
    p50, p99 = float(np.percentile(rt, 50)), float(np.percentile(rt, 99))
    refused = "refused" in rt_run["driver_log"]
    return row("command_latency_p99", round(p99, 3), "ms", "< 5",
               f"p50 {p50:.3f} ms, max {rt.max():.2f} ms over {rt.size} commands at 20 Hz, sim driver at SCHED_FIFO 50"
               f"{' (REFUSED by the OS)' if refused else ''}, agent env in another process with normal scheduling, "
               f"Cyclone DDS on loopback; driver with normal scheduling: p50 {np.percentile(normal, 50):.3f} / "
               f"p99 {np.percentile(normal, 99):.2f} / max {normal.max():.2f} ms (load average "
               f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def ticks_row(s: dict, tmp: Path) -> dict:
    run = control_run(s["ticks_steps"], with_load=True, tmp=tmp)
    d, e = run["driver"], run["env"]
    driver_pct = 100.0 * d["missed_ticks"] / max(1, d["ticks"] + d["missed_ticks"])
    env_pct = 100.0 * e["missed_ticks"] / max(1, e["steps"] + e["missed_ticks"])
    load = run["load"] or {}
    lat = np.asarray(d["latency_ms"])
    return row("missed_ticks_under_learner_load", round(max(driver_pct, env_pct), 3), "%", "< 1",
               f"driver {d['missed_ticks']}/{d['ticks']} ticks, agent {e['missed_ticks']}/{e['steps']} steps missed; "
               f"period p99 {1e3 * e['period_p99_s']:.1f} ms, jitter std {1e3 * e['jitter_std_s']:.2f} ms; "
               f"learner process {load.get('updates_per_s', 0):.0f} SAC updates/s (batch 256, 256x256); "
               f"command latency under load p50 {np.percentile(lat, 50):.2f} / p99 {np.percentile(lat, 99):.2f} ms")


def medium_data(work: Path, episodes: int) -> Path:
    """The offline half of RLPD's batches: arm-reach medium data collected once."""
    from agent.collect import CollectConfig, collect
    from agent.config import from_dict, load_yaml

    path = work / f"arm-reach-medium-{episodes}.zarr"
    if not (path / "zarr.json").exists():
        collect(from_dict(CollectConfig, {**load_yaml(ROOT / "datasets" / "arm-reach-medium.yaml"), "episodes": episodes,
                                          "out": str(path)}), progress=False)
    return path


def parity_run(side: str, seed: int, s: dict, work: Path) -> dict:
    """One RLPD run on ArmReach: ``side`` 'bridge' (sim driver over DDS) or 'sim'."""
    from agent.finetune import FinetuneConfig, finetune
    from agent.finetune.report import read_metrics
    from robot.driver import DriverProcess

    out = work / f"rlpd-{side}-seed{seed}"
    cfg = FinetuneConfig(algo="rlpd", env="sims/ArmReach-v0", out=str(out), steps=s["steps"], warmup_steps=s["warmup"],
                         batch_size=s["batch"], eval_every=s["steps"], eval_episodes=s["eval_episodes"], utd=s["utd"],
                         checkpoint_every=s["steps"], log_every=max(1, s["steps"] // 10), seed=seed,
                         data=str(medium_data(work, s["data_episodes"])))
    cfg.rlpd.hidden_dims = list(s["hidden"])
    driver = None
    if side == "bridge":
        domain = random.randint(100, 232)
        driver = DriverProcess(domain, "--seed", str(seed), log_path=work / f"driver-seed{seed}.log").start()
        cfg.env = "robot/ArmReach-v0"
        cfg.env_kwargs = ["transport=dds", f"domain_id={domain}"]
    start = time.monotonic()
    try:
        resume = (out / "checkpoints" / "latest.pt").exists()
        finetune(cfg, resume=resume, progress=False)
    finally:
        if driver is not None:
            driver.stop()
    evals = [r for r in read_metrics(out) if "eval/return_mean" in r]
    final = evals[-1]
    return {"return": float(final["eval/return_mean"]), "success": final.get("eval/success_rate"),
            "start_return": float(evals[0]["eval/return_mean"]), "wall_s": time.monotonic() - start}


def parity_rows(s: dict, work: Path, bench: str) -> list[dict]:
    results: dict[str, list[float]] = {"bridge": [], "sim": []}
    gains: dict[str, list[float]] = {"bridge": [], "sim": []}
    for seed in range(s["seeds"]):
        for side in ("sim", "bridge"):  # interleaved, so that a partial run still compares like with like
            key = f"rlpd-{side}-seed{seed}-steps{s['steps']}"
            res = cached(bench, key, lambda side=side, seed=seed: parity_run(side, seed, s, work))
            results[side].append(res["return"])
            gains[side].append(res["return"] - res["start_return"])
    b, m = np.asarray(results["bridge"]), np.asarray(results["sim"])
    se = float(np.sqrt(b.var(ddof=1) / b.size + m.var(ddof=1) / m.size)) if b.size > 1 else float("nan")
    t = abs(b.mean() - m.mean()) / se if se > 0 else (0.0 if b.mean() == m.mean() else float("inf"))
    (bi, bl, bh), (mi, ml, mh) = iqm_ci(list(b)), iqm_ci(list(m))
    (gi, gl, gh), (si, _, _) = iqm_ci(gains["bridge"]), iqm_ci(gains["sim"])
    improves = row("finetune_bridge_improves", round(gi, 2), "return", "> 0",
                   f"final minus initial evaluation return through the bridge, IQM [{gl:.2f}, {gh:.2f}] over {s['seeds']} "
                   f"seeds (pure simulation: {si:.2f}); parity alone would also hold if neither side learned")
    return [improves, row("finetune_parity_bridge_vs_sim", round(float(t), 3), "welch_t", "< 2",
               f"RLPD with arm-reach medium data on ArmReach, {s['seeds']} seeds x {s['steps']} steps (warm-up {s['warmup']}, "
               f"UTD {s['utd']}, {s['hidden']} nets, batch {s['batch']}), final eval "
               f"return over {s['eval_episodes']} episodes: bridge IQM {bi:.2f} [{bl:.2f}, {bh:.2f}], sim IQM {mi:.2f} "
               f"[{ml:.2f}, {mh:.2f}] (95% bootstrap CI); per seed bridge {np.round(b, 2).tolist()}, sim {np.round(m, 2).tolist()}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short timing runs and 2 x 300-step parity runs")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows to measure now ({', '.join(ROWS)}); "
                                                               f"rows of an earlier run are kept")
    parser.add_argument("--seeds", type=int, default=None, help="parity seeds (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="parity environment steps per run (default 4000, quick 300)")
    parser.add_argument("--learner-load", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.learner_load is not None:
        learner_load(args.learner_load)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    s = dict(QUICK if args.quick else FULL)
    if args.seeds:
        s["seeds"] = args.seeds
    if args.steps:
        s["steps"] = args.steps
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(only) - set(ROWS))
    if unknown:
        parser.error(f"--only takes rows among {', '.join(ROWS)}, found {', '.join(unknown)}")
    name = "bridge.quick" if args.quick else "bridge"
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if "latency" in only:
        rows.append(latency_row(s, work))
    if "ticks" in only:
        rows.append(ticks_row(s, work))
    if "parity" in only:
        rows += parity_rows(s, work, name)
    print_rows(rows)
    print(f"wrote {write_results(name, rows, merge=True)}")


if __name__ == "__main__":
    main()
