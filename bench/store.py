"""Bars of the demonstration store (docs/benchmarks.md): sampling speed against a plain numpy
gather, write amplification of one-at-a-time appends, open time and memory of a
1M-transition store, crash safety under SIGKILL, and Icechunk against our own commit
record.

    python bench/store.py            # the full bars (about 6-10 minutes on 2 cores)
    python bench/store.py --quick    # small sizes, a smoke test
    python bench/store.py --fresh    # ignore saved partial results

Measurements are saved under bench/results/_work/store*/ so an interrupted run resumes;
the stores themselves go to $AGENT_BENCH_SCRATCH (default: the temp directory).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import WORK, cached, print_rows, row, write_results  # noqa: E402

OBS_DIM, ACT_DIM = 39, 8


def _spaces():
    from gymnasium import spaces

    return (spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), spaces.Box(-1, 1, (ACT_DIM,), np.float32))


def _episode(rng, length: int, terminated: bool) -> dict:
    ep = {"obs": rng.normal(size=(length, OBS_DIM)).astype(np.float32),
          "action": rng.uniform(-1, 1, size=(length, ACT_DIM)).astype(np.float32),
          "reward": rng.normal(size=length).astype(np.float32),
          "terminated": np.zeros(length, bool), "truncated": np.zeros(length, bool),
          "final_obs": rng.normal(size=OBS_DIM).astype(np.float32)}
    ep["terminated" if terminated else "truncated"][-1] = True
    return ep


def _complete(path: Path, steps: int) -> bool:
    """A cached store from an earlier run is reused only if it opens and is whole."""
    from agent.store import Store

    try:
        return Store.open(path).num_steps == steps
    except ValueError:
        return False


def build_big_store(path: Path, steps: int, episode_len: int) -> Path:
    """A store of ``steps`` transitions, reused between runs when it is complete."""
    from agent.store import Store

    if path.exists():
        if _complete(path, steps):
            return path
        shutil.rmtree(path)
    obs_space, act_space = _spaces()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with Store.create(path, env_id="bench/none-v0", observation_space=obs_space, action_space=act_space) as store:
        for i in range(steps // episode_len):
            store.append_episode(_episode(rng, episode_len, i % 2 == 0))
    print(f"built {steps} transitions in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# -- sampling --------------------------------------------------------------------------


def sampling_ratio(path: Path, reps: int, batches: int, window: int | None) -> dict:
    """Our sampler against a plain numpy gather of the same fields, interleaved."""
    from agent.store import Sampler, Store, load_transitions

    cache = load_transitions(Store.open(path))
    sampler = Sampler(cache, seed=1)
    obs, action, reward = cache.obs, cache.action, cache.reward
    term, trunc = cache.terminated, cache.truncated
    n = cache.num_steps
    rng = np.random.default_rng(2)

    def plain() -> None:
        if window is None:
            idx = rng.integers(0, n - 1, size=256)
        else:
            idx = rng.integers(0, n - window - 1, size=256)[:, None] + np.arange(window)
        _ = (obs[idx], action[idx], reward[idx], obs[idx + 1], term[idx], trunc[idx])

    def ours() -> None:
        if window is None:
            sampler.transitions(256, rng)
        else:
            sampler.windows(256, window, pad_before=1, pad_after=window - 1, rng=rng)

    ratios, rates = [], []
    for _ in range(reps):
        timings = {}
        for name, fn in (("plain", plain), ("ours", ours)):
            t0 = time.perf_counter()
            for _ in range(batches):
                fn()
            timings[name] = time.perf_counter() - t0
        ratios.append(timings["plain"] / timings["ours"])
        rates.append((256 * batches / timings["ours"], 256 * batches / timings["plain"]))
    med = int(np.argsort(ratios)[len(ratios) // 2])
    return {"ratio": float(np.median(ratios)), "ours_per_s": rates[med][0], "plain_per_s": rates[med][1], "reps": reps}


# -- appends ---------------------------------------------------------------------------


def append_amplification(workdir: Path, episodes: int, episode_len: int) -> dict:
    from agent.store import Store

    path = workdir / "appends.zarr"
    shutil.rmtree(path, ignore_errors=True)
    obs_space, act_space = _spaces()
    rng = np.random.default_rng(3)
    eps = [_episode(rng, episode_len, i % 2 == 0) for i in range(episodes)]
    store = Store.create(path, env_id="bench/none-v0", observation_space=obs_space, action_space=act_space)
    counter = store.location.zarr_store
    counter.bytes_written = 0
    added, times = 0, []
    for ep in eps:
        added += sum(np.asarray(v).nbytes for v in ep.values())
        t0 = time.perf_counter()
        store.append_episode(ep)
        times.append(time.perf_counter() - t0)
    written_appends = counter.bytes_written
    store.close()
    written = counter.bytes_written
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path)
    return {"amplification": written / added, "amplification_before_close": written_appends / added,
            "bytes_added": added, "bytes_written": written, "bytes_on_disk": on_disk,
            "append_ms_median": 1000 * float(np.median(times)), "append_ms_p95": 1000 * float(np.percentile(times, 95)),
            "episodes": episodes, "episode_len": episode_len}


# -- open ------------------------------------------------------------------------------

_OPEN_PROBE = r"""
import json, sys, time
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from agent.store import Store, load_transitions
import numpy as np
before = status("VmRSS:")
t0 = time.perf_counter()
cache = load_transitions(Store.open(sys.argv[1]))
elapsed = time.perf_counter() - t0
raw = sum(a.nbytes for a in (cache.obs_table, cache.action, cache.reward, cache.terminated, cache.truncated))
print(json.dumps({"open_s": elapsed, "rss_added": status("VmRSS:") - before, "peak_added": status("VmHWM:") - before,
                  "raw_bytes": raw, "steps": cache.num_steps}))
"""


def open_cost(path: Path, reps: int) -> dict:
    runs = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", _OPEN_PROBE, str(path)], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["open_s"])
    mid = runs[len(runs) // 2]
    return {**mid, "open_s_all": [r["open_s"] for r in runs], "peak_added_max": max(r["peak_added"] for r in runs)}


# -- crash safety ----------------------------------------------------------------------


def crash_safety(workdir: Path, trials: int) -> dict:
    from agent.store.crashcheck import run_trials

    path = workdir / "crash.zarr"
    shutil.rmtree(path, ignore_errors=True)
    results = run_trials(path, trials, seed=11, max_delay_s=1.0)
    ok = [r["opens"] and r["identical"] and r["fsck_clean_after"] and not r["fsck_problems"] for r in results]
    shutil.rmtree(path, ignore_errors=True)
    return {"passed": int(sum(ok)), "trials": trials, "episodes_at_end": results[-1]["episodes"],
            "fsck_trimmed": int(sum(r["torn"] for r in results)),
            "failures": [r for r, good in zip(results, ok) if not good][:3]}


# -- icechunk --------------------------------------------------------------------------


def icechunk_vs_plain(workdir: Path, commits: int) -> dict:
    """The same (300, 39) float32 episode block committed ``commits`` times: once as our
    plain-zarr append (rows past the commit, fsync, atomic commit record), once as one
    Icechunk transaction per episode."""
    from agent.store.durable import DurableLocalStore, _durable_put, fsync_path
    import zarr

    block = np.random.default_rng(4).normal(size=(300, OBS_DIM)).astype(np.float32)
    out: dict = {"commits": commits}
    plain = workdir / "plain.zarr"
    shutil.rmtree(plain, ignore_errors=True)
    zstore = DurableLocalStore(plain)
    arr = zarr.create_array(zstore, name="obs", shape=(0, OBS_DIM), chunks=(512, OBS_DIM), dtype="float32")
    t0 = time.perf_counter()
    for i in range(commits):
        arr.resize((300 * (i + 1), OBS_DIM))
        arr[300 * i:] = block
        zstore.flush()
        _durable_put(plain / "commit.json", json.dumps({"steps": 300 * (i + 1)}).encode(), False)
        fsync_path(plain)
    out["plain_s"] = time.perf_counter() - t0
    out["plain_bytes"] = sum(p.stat().st_size for p in plain.rglob("*") if p.is_file())
    shutil.rmtree(plain)
    try:
        import icechunk
    except ImportError:
        out["icechunk_s"] = None
        return out
    repo_path = workdir / "icechunk"
    shutil.rmtree(repo_path, ignore_errors=True)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(repo_path)))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="obs", shape=(0, OBS_DIM), chunks=(512, OBS_DIM), dtype="float32")
    session.commit("create")
    t0 = time.perf_counter()
    for i in range(commits):
        session = repo.writable_session("main")
        a = zarr.open_array(session.store, path="obs")
        a.resize((300 * (i + 1), OBS_DIM))
        a[300 * i:] = block
        session.commit(f"episode {i}")
    out["icechunk_s"] = time.perf_counter() - t0
    out["icechunk_bytes"] = sum(p.stat().st_size for p in repo_path.rglob("*") if p.is_file())
    shutil.rmtree(repo_path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test, not the bars)")
    parser.add_argument("--fresh", action="store_true", help="discard saved partial results first")
    args = parser.parse_args()
    name = "store.quick" if args.quick else "store"
    steps, ep_len = (100_000, 1000) if args.quick else (1_000_000, 2000)
    appends, trials, reps = (50, 5, 5) if args.quick else (400, 50, 15)
    # stores live outside the repository (the 1M store is about 200 MB); results under WORK
    work = Path(os.environ.get("AGENT_BENCH_SCRATCH", tempfile.gettempdir())) / f"agent-bench-{name}"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(WORK / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=work))
    try:
        big = build_big_store(work / "big.zarr", steps, ep_len)
        trans = cached(name, "sample_transitions", lambda: sampling_ratio(big, reps, 200, None))
        wins = cached(name, "sample_windows", lambda: sampling_ratio(big, reps, 50, 16))
        opened = cached(name, "open", lambda: open_cost(big, 3))
        amp = cached(name, "appends", lambda: append_amplification(scratch, appends, 250))
        crash = cached(name, "crash", lambda: crash_safety(scratch, trials))
        ice = cached(name, "icechunk", lambda: icechunk_vs_plain(scratch, 50))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    mb = 2**20
    rows = [
        row("sample_transitions_vs_numpy", round(trans["ratio"], 3), "ratio", ">= 0.5",
            f"ours {trans['ours_per_s'] / 1e6:.2f}M/s, numpy {trans['plain_per_s'] / 1e6:.2f}M/s; batch 256 from "
            f"{steps} (39-d obs, 8-d action), median of {trans['reps']} interleaved reps"),
        row("sample_windows16_vs_numpy", round(wins["ratio"], 3), "ratio", ">= 0.5",
            f"ours {wins['ours_per_s'] / 1e3:.0f}k windows/s, numpy {wins['plain_per_s'] / 1e3:.0f}k/s; 256 windows of 16 "
            f"with pad 1 before, 15 after, pad mask, never crossing episodes"),
        row("append_write_amplification", round(amp["amplification"], 3), "x", "<= 3",
            f"{amp['episodes']} episodes of {amp['episode_len']} steps one at a time: {amp['bytes_written'] / mb:.1f} MiB "
            f"written for {amp['bytes_added'] / mb:.1f} MiB added ({amp['amplification_before_close']:.2f}x before the "
            f"closing trim); append {amp['append_ms_median']:.0f} ms median, {amp['append_ms_p95']:.0f} ms p95 with fsync"),
        row("append_ms_per_episode", round(amp["append_ms_median"], 1), "ms", "< 1000",
            f"median over {amp['episodes']} appends of {amp['episode_len']} steps, p95 {amp['append_ms_p95']:.0f} ms"),
        row("open_1M_transitions_s", round(opened["open_s"], 3), "s", "< 2",
            f"Store.open + load_transitions of {opened['steps']} transitions in a fresh process, warm page cache, "
            f"median of {len(opened['open_s_all'])}: {[round(x, 2) for x in opened['open_s_all']]}"),
        row("open_resident_memory_vs_raw", round(opened["peak_added_max"] / opened["raw_bytes"], 3), "ratio", "<= 1.5",
            f"peak resident growth {opened['peak_added_max'] / mb:.0f} MiB (after: {opened['rss_added'] / mb:.0f} MiB) for "
            f"{opened['raw_bytes'] / mb:.0f} MiB of decoded arrays"),
        row("crash_safety_sigkill", crash["passed"], "runs", f">= {crash['trials']}",
            f"{crash['passed']}/{crash['trials']} SIGKILLs at random moments: store opens, committed episodes bit-identical, "
            f"second fsck clean; {crash['fsck_trimmed']} needed a trim; {crash['episodes_at_end']} episodes at the end"),
    ]
    if ice.get("icechunk_s"):
        rows.append(row("icechunk_commit_time_vs_plain", round(ice["icechunk_s"] / ice["plain_s"], 3), "ratio", "> 0",
                        f"information, not a bar: {ice['commits']} one-episode commits of (300, 39) float32: plain zarr + "
                        f"fsynced commit record {ice['plain_s']:.2f} s ({ice['plain_bytes'] / 1e6:.1f} MB), Icechunk "
                        f"{ice['icechunk_s']:.2f} s ({ice['icechunk_bytes'] / 1e6:.1f} MB)"))
    print_rows(rows)
    out = write_results(name, rows, command="python bench/store.py" + (" --quick" if args.quick else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
