"""``agent fsck``: check a store and repair what a killed writer can leave behind.

A writer killed mid-append leaves rows past the commit record (invisible to readers)
and perhaps ``*.partial`` temporary files; fsck takes the writer lock, deletes the
temporary files, trims every array to its committed length, then reads every
committed chunk (checksums), and checks episode ends, flags, finiteness and the
normalization statistics against the data. Anything it cannot repair is reported.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from agent.store.durable import PARTIAL_SUFFIX, location_for
from agent.store.zarr_store import Store


def fsck(path: str | Path, repair: bool = True) -> dict:
    """Check (and with ``repair``, trim and tidy) the store at ``path``.

    Returns ``{"store", "episodes", "steps", "removed_partial_files", "trimmed",
    "stale_lock", "problems", "clean"}``; ``clean`` means nothing needed fixing and
    nothing is wrong.
    """
    location = location_for(path, writable=repair)
    report: dict = {"store": location.display, "episodes": None, "steps": None, "removed_partial_files": [],
                    "trimmed": {}, "stale_lock": None, "problems": []}
    root = location.root
    lock = None
    if repair and (root.is_dir() if root is not None else location.exists()):
        lock = location.writer_lock().acquire()  # refuses while a writer is active: its temp files are live
        report["stale_lock"] = lock.stale_holder
    try:
        if root is not None and root.is_dir():
            partials = sorted(str(p.relative_to(root)) for p in root.rglob(f"*{PARTIAL_SUFFIX}"))
            if repair:
                for rel in partials:
                    os.unlink(root / rel)
            report["removed_partial_files" if repair else "partial_files"] = partials
        try:
            store = Store.open(path, mode="a" if lock is not None else "r", lock=lock)
            lock = None  # the store releases it on close
        except ValueError as exc:
            report["problems"].append(str(exc))
            report["clean"] = False
            return report
        try:
            report["episodes"], report["steps"] = store.num_episodes, store.num_steps
            report["stale_lock"] = report["stale_lock"] or store.stale_lock
            if repair and store.writable:
                report["trimmed"] = store.trim_to_commit()
            else:
                report["tails"] = {k: int(store.group[k].shape[0] - store.committed_length(k))
                                   for k in store.array_specs if store.group[k].shape[0] > store.committed_length(k)}
            report["problems"].extend(_verify(store))
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()
    report["clean"] = not (report["problems"] or report["trimmed"] or report["removed_partial_files"]
                           or report.get("tails") or report.get("partial_files"))
    return report


def _verify(store: Store) -> list[str]:
    problems: list[str] = []
    arrays = {}
    for key in store.array_specs:
        if key.startswith(("data/images/", "final_obs/images/")):
            continue  # frames are checked by their checksums when read; reading all is slow
        try:
            arrays[key] = store.read(key)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    ends = arrays["meta/episode_ends"]
    steps = store.num_steps
    if ends.size and (ends[-1] != steps or np.any(np.diff(ends) <= 0) or ends[0] <= 0):
        problems.append("meta/episode_ends is not strictly increasing up to the committed step count.")
        return problems
    starts = np.concatenate([[0], ends[:-1]])
    if not np.array_equal(arrays["meta/episodes/length"], ends - starts):
        problems.append("meta/episodes/length does not match meta/episode_ends.")
    for flag in ("terminated", "truncated"):
        set_at = np.flatnonzero(arrays[f"data/{flag}"])
        inside = np.setdiff1d(set_at, ends - 1)
        if inside.size:
            problems.append(f"data/{flag} is set inside an episode (step {int(inside[0])}).")
    both = arrays["data/terminated"] & arrays["data/truncated"]
    if both.any():
        problems.append(f"terminated and truncated are both set at step {int(np.argmax(both))}.")
    for key, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems.append(f"{key} holds NaN or inf at row {int(np.argwhere(~np.isfinite(arr))[0][0])}.")
    if steps:
        stats = store.commit_record["stats"]
        for key in ("obs", "action"):
            x = arrays[f"data/{key}"].astype(np.float64)
            if stats["count"] != steps or not np.allclose(stats[f"{key}_sum"], x.sum(0), rtol=1e-6, atol=1e-6 * steps):
                problems.append(f"the normalization statistics of {key} in the commit record do not match the data.")
    return problems
