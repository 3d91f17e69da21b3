"""bench/h2o.py's rows read what their names say: seed-paired differences, the gap where naive
mixing hurts against the benign one, and the gates from the held-out weights."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_h2o", Path(__file__).resolve().parents[1] / "bench" / "h2o.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed, final, median_w=None, mean_log_w=None):
    out = {"seed": seed, "values": [0.0, final, final, final], "steps": [0, 1, 2, 3]}
    if median_w is not None:
        out["heldout"] = {"median_w": median_w, "mean_log_w": mean_log_w}
    return out


def rows_by_name(rows):
    return {r["name"]: r for r in rows}


def test_paired_differences_pair_seeds_not_positions(bench):
    a = [run(0, 10.0), run(1, 20.0), run(2, 30.0), run(3, 40.0)]
    b = [run(3, 39.0), run(0, 9.0), run(1, 19.0), run(2, 29.0)]  # same seeds, other order: every paired difference is 1
    value, _ = bench.paired_iqm(a, b)
    assert value == pytest.approx(1.0)


def test_a_gap_where_mixing_hurts_asks_h2o_to_beat_all_three_and_a_benign_one_only_mixing(bench):
    gaps = {g: {"gap": 0.1, "sim": {}} for g in ("zero", "moderate", "large")}
    seeds = range(3)
    runs = {("moderate", "h2o-conditional"): [run(s, 60.0) for s in seeds],
            ("moderate", "h2o-w1"): [run(s, 58.0) for s in seeds],  # above IQL: benign
            ("large", "h2o-conditional"): [run(s, 45.0) for s in seeds],
            ("large", "h2o-w1"): [run(s, 30.0) for s in seeds],  # below IQL: mixing hurts
            ("large", "sac-sim"): [run(s, 20.0) for s in seeds]}
    iql = [{"seed": s, "score": 40.0} for s in seeds]
    rows = rows_by_name(bench.task_rows({}, gaps, runs, iql, "conditional"))
    assert rows["h2o_minus_w1_benign_moderate"]["value"] == pytest.approx(2.0) and rows["h2o_minus_w1_benign_moderate"]["holds"]
    assert "h2o_minus_iql_real_moderate" not in rows
    assert rows["h2o_minus_w1_large"]["value"] == pytest.approx(15.0)
    assert rows["h2o_minus_iql_real_large"]["value"] == pytest.approx(5.0)
    assert rows["h2o_minus_sac_sim_large"]["value"] == pytest.approx(25.0)


def test_gates_read_the_held_out_weights_of_each_estimator(bench):
    gaps = {g: {"gap": 0.1, "sim": {}} for g in ("zero", "moderate")}
    runs = {("zero", "h2o-conditional"): [run(s, 50.0, 0.9, -0.1) for s in range(3)],
            ("moderate", "h2o-conditional"): [run(s, 50.0, 0.2, -1.6) for s in range(3)],
            ("zero", "h2o-classifier"): [run(s, 50.0, 0.02, -3.9) for s in range(3)],
            ("moderate", "h2o-classifier"): [run(s, 50.0, 0.02, -3.95) for s in range(3)],
            ("zero", "h2o-w1"): [run(s, 50.0 + s, 1.0, 0.0) for s in range(3)]}
    rows = rows_by_name(bench.task_rows({}, gaps, runs, [], "conditional"))
    assert rows["gate1_median_w_zero_gap"]["value"] == pytest.approx(0.9) and rows["gate1_median_w_zero_gap"]["holds"]
    assert rows["gate2_log_w_drop_moderate"]["value"] == pytest.approx(1.5) and rows["gate2_log_w_drop_moderate"]["holds"]
    assert not rows["gate1_median_w_zero_gap_classifier"]["holds"]
    assert rows["gate2_log_w_drop_moderate_classifier"]["value"] == pytest.approx(0.05)
    assert np.isfinite(rows["gate1_h2o_minus_w1_ci_low_zero_gap"]["value"])
