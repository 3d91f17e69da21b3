"""Minari datasets (hdf5 or arrow): ``data/metadata.json`` (spaces, env spec, data
format) and per episode ``observations`` (T + 1 rows: they include the final one),
``actions``, ``rewards``, ``terminations``, ``truncations``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.optional import require
from agent.store.importers.common import ImportedDataset, ImportedEpisode, box_from_json, bounds_or_none, check_numeric


def read_minari(src: Path, **_) -> ImportedDataset:
    src = Path(src)
    data_dir = src / "data" if (src / "data" / "metadata.json").is_file() else src
    where = f"Minari dataset {str(src)!r}"
    meta_path = data_dir / "metadata.json"
    if not meta_path.is_file():
        raise ValueError(f"{where} has no data/metadata.json; pass the dataset's folder.")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise ValueError(f"{where}: data/metadata.json is not JSON.") from None
    obs_space = box_from_json(meta.get("observation_space"), "the observation space", where)
    act_space = box_from_json(meta.get("action_space"), "the action space", where)
    fmt = meta.get("data_format", "hdf5")
    reader = _FORMATS.get(fmt)
    if reader is None:
        raise ValueError(f"{where}: data_format {fmt!r} is not one of {sorted(_FORMATS)}.")
    skipped: dict[str, str] = {}
    episodes = [_episode(raw, f"{where}, episode {i}", skipped) for i, raw in reader(data_dir, where)]
    try:
        env_spec = json.loads(meta["env_spec"]) if isinstance(meta.get("env_spec"), str) else (meta.get("env_spec") or {})
    except ValueError:
        env_spec = {}
    env_kwargs = dict(env_spec.get("kwargs", {}) or {})
    notes, warnings = {}, []
    limit = env_spec.get("max_episode_steps")
    if limit is not None:
        # gymnasium.make takes the time limit as a keyword, so the env is re-made with it
        env_kwargs["max_episode_steps"] = int(limit)
        notes["time_limit"] = int(limit)
    else:
        warnings.append(f"{where} states no max_episode_steps in its env spec, so no time limit was recorded.")
    known = all(e.success is not None for e in episodes)
    if not known:
        for e in episodes:  # success is recorded for every episode or for none
            e.success = None
    return ImportedDataset(env_id=env_spec.get("id") or meta.get("dataset_id", src.name), episodes=episodes,
                           action_low=bounds_or_none(act_space.get("low", [None])),
                           action_high=bounds_or_none(act_space.get("high", [None])),
                           obs_names=[f"observation[{obs_space['shape'][0]}]"],
                           env_kwargs=env_kwargs, notes=notes, warnings=warnings, skipped=skipped,
                           success_from="infos/success" if known else "")


_STEP_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def _episode(raw: dict, ctx: str, skipped: dict[str, str]) -> ImportedEpisode:
    obs = check_numeric(np.asarray(raw["observations"]), "observations", ctx).astype(np.float32)
    action = check_numeric(np.asarray(raw["actions"]), "actions", ctx).astype(np.float32)
    t = action.shape[0]
    if obs.shape[0] != t + 1:
        raise ValueError(f"{ctx}: observations must have one row more than actions (the final observation), "
                         f"got {obs.shape[0]} and {t}.")
    reward = check_numeric(np.asarray(raw["rewards"]), "rewards", ctx)[:t].astype(np.float32)
    term = np.asarray(raw["terminations"], bool)[:t]
    # a termination is not a success (a fallen pendulum terminates): only a stated success counts
    success = raw.get("infos/success")
    for key in raw.get("other", []):
        skipped[key] = ("step info, not imported" if key.startswith("infos/")
                        else "not a Minari step array this importer reads")
    return ImportedEpisode(obs[:-1].reshape(t, -1), action.reshape(t, -1), reward, obs[-1].reshape(-1),
                           bool(term[-1]) if t else False,
                           success=None if success is None else bool(np.asarray(success, bool).any()))


def _hdf5_episodes(data_dir: Path, where: str):
    h5py = require("h5py", "reading a Minari hdf5 dataset")
    path = data_dir / "main_data.hdf5"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{where}: {path.name} cannot be opened as hdf5 ({exc}).") from None
    with f:
        names = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        for name in names:
            g = f[name]
            missing = [k for k in ("observations", "actions", "rewards", "terminations", "truncations") if k not in g]
            if missing:
                raise ValueError(f"{where}, {name}: missing {', '.join(missing)}.")
            if not all(hasattr(g[k], "shape") for k in ("observations", "actions")):
                raise ValueError(f"{where}, {name}: dict observations or actions are not imported (flat Box only).")
            raw = {k: g[k][()] for k in _STEP_KEYS}
            infos = g["infos"] if isinstance(g.get("infos"), h5py.Group) else None
            if infos is not None and isinstance(infos.get("success"), h5py.Dataset):
                raw["infos/success"] = infos["success"][()]
            raw["other"] = [k for k in g if k not in (*_STEP_KEYS, "infos")]
            if infos is not None:
                raw["other"] += [f"infos/{k}" for k in infos if k != "success"]
            yield int(name.split("_")[1]), raw


def _arrow_episodes(data_dir: Path, where: str):
    pads = require("pyarrow.dataset", "reading a Minari arrow dataset")

    ids = sorted(int(p.name) for p in data_dir.iterdir() if p.is_dir() and p.name.isdigit())
    for i in ids:
        files = sorted(str(p) for p in (data_dir / str(i)).glob("*.arrow"))
        if not files:
            raise ValueError(f"{where}, episode {i}: no .arrow file.")
        table = pads.dataset(files, format="arrow").to_table()
        t = int(json.loads((data_dir / str(i) / "metadata.json").read_text()).get("total_steps", table.num_rows - 1)) \
            if (data_dir / str(i) / "metadata.json").is_file() else table.num_rows - 1
        cols = {}
        for k in ("observations", "actions", "rewards", "terminations", "truncations"):
            if k not in table.column_names:
                raise ValueError(f"{where}, episode {i}: missing column {k}.")
            col = table.column(k).combine_chunks()
            if hasattr(col, "flatten") and hasattr(col.type, "list_size"):
                values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
            else:
                values = col.to_numpy(zero_copy_only=False)
            cols[k] = values if k == "observations" else values[:t]
        cols["other"] = [k for k in table.column_names if k not in (*_STEP_KEYS, "infos", "episode_id")]
        if "infos" in table.column_names:
            infos = table.column("infos").combine_chunks()
            names = [infos.type.field(j).name for j in range(infos.type.num_fields)]
            if "success" in names:
                flag = infos.field("success")
                flag = flag.flatten() if hasattr(flag.type, "list_size") else flag  # arrays are stored as lists
                cols["infos/success"] = flag.to_numpy(zero_copy_only=False)
            cols["other"] += [f"infos/{k}" for k in names if k != "success"]
        yield i, cols


_FORMATS = {"hdf5": _hdf5_episodes, "arrow": _arrow_episodes}
