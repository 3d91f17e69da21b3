"""LeRobot v2.1 and v3 datasets, low-dimensional features: ``meta/info.json``
(codebase_version, fps, features) and parquet files under ``data/`` with one row per
frame (``episode_index``, ``frame_index``, ``observation.*``, ``action``, optional
``next.reward`` and ``next.done``). v2.1 keeps one file per episode, v3 many episodes
per file; both are read by grouping rows on ``episode_index``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.optional import require
from agent.store.importers.common import (ROLE_OBSERVATION, SKIP_REASONS, ImportedDataset, check_numeric,
                                          drop_last_frame, key_role)

_NUMERIC = {"float32", "float64", "int32", "int64", "bool", "uint8"}
_READ = ("next.reward", "next.success")  # features read as the reward and the episode's success
_DONE_REASON = ("LeRobot sets it on the last frame of every episode, so it cannot tell a termination from a "
                "time limit; episodes are stored as truncated")


def read_lerobot(src: Path, obs_keys: list[str] | None = None, **_) -> ImportedDataset:
    pq = require("pyarrow.parquet", "reading a LeRobot dataset")
    src = Path(src)
    where = f"LeRobot dataset {str(src)!r}"
    info_path = src / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"{where} has no meta/info.json.")
    try:
        info = json.loads(info_path.read_text())
    except ValueError:
        raise ValueError(f"{where}: meta/info.json is not JSON.") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2", "v3")):
        raise ValueError(f"{where}: codebase_version {version!r}; versions v2.x and v3.x are read.")
    features = info.get("features", {})
    if "action" not in features:
        raise ValueError(f"{where}: meta/info.json lists no 'action' feature.")
    missing = [k for k in obs_keys or [] if k not in features]
    if missing:
        raise ValueError(f"{where}: obs key(s) {missing} are not features in meta/info.json (has {sorted(features)}).")
    keys, skipped = [], {}
    for k, v in features.items():
        if k in ("action", "episode_index", "frame_index") or k in _READ:
            continue
        low_dim = v.get("dtype") in _NUMERIC and len(v.get("shape", [])) <= 1
        if obs_keys:
            why = "" if k in obs_keys else "not in --obs-keys"
        elif k == "next.done":
            why = _DONE_REASON
        elif not k.startswith("observation."):
            why = SKIP_REASONS.get(key_role(k), "not an observation.* feature")
        elif key_role(k) != ROLE_OBSERVATION:
            why = SKIP_REASONS[key_role(k)]
        elif not low_dim:
            why = f"dtype {v.get('dtype')!r}, shape {v.get('shape')}: video, image and other arrays are not imported"
        else:
            why = ""
        if why:
            skipped[k] = why
        else:
            keys.append(k)
    keys = list(obs_keys) if obs_keys else sorted(keys)
    if not keys:
        raise ValueError(f"{where}: no low-dimensional observation.* feature (video and image keys are not imported).")
    files = sorted((src / "data").rglob("*.parquet"))
    if not files:
        raise ValueError(f"{where}: no parquet files under data/.")
    wanted = ["episode_index", "frame_index", "action", *keys, *[k for k in _READ if k in features]]
    columns: dict[str, list] = {k: [] for k in wanted}
    for path in files:
        table = pq.read_table(path)
        missing = [k for k in wanted if k not in table.column_names]
        if missing:
            raise ValueError(f"{where}: {path.relative_to(src)} lacks column(s) {missing}.")
        for k in wanted:
            columns[k].append(_to_numpy(table.column(k)))
    arr = {k: check_numeric(np.concatenate(v), k, where) for k, v in columns.items()}
    order = np.lexsort((arr["frame_index"], arr["episode_index"]))
    arr = {k: v[order] for k, v in arr.items()}
    obs = np.concatenate([arr[k].reshape(len(order), -1).astype(np.float32) for k in keys], axis=1)
    action = arr["action"].reshape(len(order), -1).astype(np.float32)
    reward = arr["next.reward"].astype(np.float32).reshape(-1) if "next.reward" in arr else np.zeros(len(order), np.float32)
    episodes, dropped = [], 0
    ids, starts = np.unique(arr["episode_index"], return_index=True)
    bounds = list(starts) + [len(order)]
    for j, ep_id in enumerate(ids):
        rows = slice(bounds[j], bounds[j + 1])
        success = bool(arr["next.success"][rows].any()) if "next.success" in arr else None
        ep = drop_last_frame(obs[rows], action[rows], reward[rows], success=success, attrs={"seed": int(ep_id)})
        if ep is None:
            dropped += 1
        else:
            episodes.append(ep)
    warnings = [] if "next.reward" in arr else [f"{where} has no next.reward feature; every reward is stored as 0."]
    return ImportedDataset(env_id=f"lerobot/{info.get('robot_type') or src.name}", episodes=episodes, obs_names=keys,
                           notes={"codebase_version": version, "fps": info.get("fps"), "dropped_episodes": dropped,
                                  "last_frame": "each episode's last frame became its final observation"},
                           skipped=skipped, warnings=warnings, success_from="next.success" if "next.success" in arr else "")


def _to_numpy(col) -> np.ndarray:
    col = col.combine_chunks()
    if hasattr(col.type, "value_type"):  # list / fixed-size list per row
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)
