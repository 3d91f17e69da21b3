"""GPU rows of the learners bench (docs/benchmarks.md): the graph-captured K-update against our eager
update, and IQL / 10-critic SAC-N updates per second on the card.

    python bench/learners_gpu.py                  # merges its rows into bench/results/learners.json
    python bench/learners_gpu.py --rows FILE.json # also writes the rows alone to FILE.json

Needs only torch (and numpy, pyyaml): it builds the learners directly and feeds them
batches already on the GPU (what the device-side sampler hands them), so the numbers are
update throughput without sampling. Eager and graphed learners are separate instances
with the same config; their timings alternate within one process (3 rounds, median).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

import torch  # noqa: E402

from common import row, write_results  # noqa: E402

OBS, ACT, BATCH = 39, 7, 256  # the arm tasks' sizes


def batch(k: int, extra: dict | None = None) -> dict[str, torch.Tensor]:
    shape = (k, BATCH) if k > 1 else (BATCH,)
    out = {"obs": torch.randn(*shape, OBS, device="cuda"), "action": torch.rand(*shape, ACT, device="cuda") * 2 - 1,
           "reward": torch.rand(*shape, device="cuda"), "next_obs": torch.randn(*shape, OBS, device="cuda"),
           "terminated": torch.zeros(*shape, device="cuda"), "truncated": torch.zeros(*shape, device="cuda")}
    return {**out, **(extra or {})}


def learner(algo: str, **cfg):
    from agent.learners import LEARNERS, make_learner

    torch.manual_seed(0)
    return make_learner(algo, LEARNERS[algo][1](**cfg), OBS, ACT, device="cuda")


def rate(update, data: list[dict], calls: int) -> float:
    """Updates per second over ``calls`` calls cycling through ``data``."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(calls):
        update(data[i % len(data)])
    torch.cuda.synchronize()
    return calls / (time.perf_counter() - start)


def side_by_side(algo: str, k: int, calls: int, **cfg) -> dict:
    from agent.learners.graphed import GraphedUpdate

    data = [batch(k) for _ in range(8)]
    eager, graphed_learner = learner(algo, **cfg), learner(algo, **cfg)
    graphed = GraphedUpdate(graphed_learner.update)
    start = time.perf_counter()
    out = graphed(data[0])
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - start
    for _ in range(20):
        eager.update(data[0])
    finite = all(bool(torch.isfinite(v).all()) for v in out.values())
    eager_rates, graph_rates = [], []
    for _ in range(3):
        eager_rates.append(rate(eager.update, data, calls))
        graph_rates.append(rate(graphed, data, calls))
    after = {name: float(v) for name, v in graphed(data[1]).items() if v.numel() == 1}
    return {"eager": statistics.median(eager_rates), "graphed": statistics.median(graph_rates), "capture_s": capture_s,
            "finite": finite and all(v == v for v in after.values()), "k": k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="", help="also write the rows to this JSON file")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per round")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/learners_gpu.py needs a CUDA device; torch sees none.")
    card = torch.cuda.get_device_name(0)
    sacn = {"hidden_dims": [256, 256, 256], "num_critics": 10}
    iql = {"hidden_dims": [256, 256]}
    runs = {"sacn_k4": side_by_side("sacn", 4, args.calls, **sacn), "sacn_k1": side_by_side("sacn", 1, args.calls, **sacn),
            "iql_k1": side_by_side("iql", 1, args.calls, **iql)}
    for name, r in runs.items():
        print(name, json.dumps(r))

    def said(r: dict) -> str:
        return (f"eager {r['eager']:.0f} vs graphed {r['graphed']:.0f} updates/s (K={r['k']}, batch {BATCH} per minibatch, "
                f"capture + warm-up {r['capture_s']:.1f} s, metrics finite: {r['finite']})")

    k4 = runs["sacn_k4"]
    rows = [
        row("graph_k_update_vs_eager_gpu", k4["graphed"] / k4["eager"], "x", ">= 3",
            f"10-critic SAC-N, 3x256, {card}: {said(k4)}; medians of 3 alternating rounds of {args.calls} calls"),
        row("iql_updates_per_s_gpu", runs["iql_k1"]["graphed"], "updates/s", ">= 5000",
            f"IQL 2x256 (critics, value, actor), {card}: {said(runs['iql_k1'])}"),
        row("sacn_updates_per_s_gpu", runs["sacn_k1"]["graphed"], "updates/s", ">= 2000",
            f"10-critic SAC-N 3x256, one critic + actor + temperature update per call, {card}: {said(runs['sacn_k1'])}; "
            f"with K=4 {4 * k4['graphed']:.0f} critic updates/s"),
    ]
    if args.rows:
        Path(args.rows).write_text(json.dumps(rows, indent=2))
    out = write_results("learners", rows, merge=True, command="python bench/learners_gpu.py")
    print(f"wrote {out}")
    for r in rows:
        print(r["name"], f"{r['value']:.2f}", r["target"], r["holds"])


if __name__ == "__main__":
    main()
