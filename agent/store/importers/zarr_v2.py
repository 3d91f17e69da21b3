"""Replay buffers in the diffusion_policy layout: a zarr v2 group with ``data/<key>``
(all episodes concatenated along time) and ``meta/episode_ends``. Array metadata is
read as JSON and checked before zarr opens anything: object dtypes and pickling codecs
are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from agent.store.importers.common import (ROLE_OBSERVATION, ROLE_REWARD, ROLE_SUCCESS, ROLE_TERMINAL, SKIP_REASONS,
                                          ImportedDataset, check_numeric, drop_last_frame, key_role)

_SAFE_COMPRESSORS = {None, "blosc", "zstd", "lz4", "gzip", "zlib", "bz2", "lzma"}
_SAFE_FILTERS = {"delta", "fixedscaleoffset", "quantize", "shuffle", "bitround"}


def _check_v2_array(meta: dict, key: str, where: str) -> None:
    dtype = meta.get("dtype")
    if not isinstance(dtype, str) or dtype.lstrip("<>|=")[:1] not in ("f", "i", "u", "b"):
        raise ValueError(f"{where}: array {key} has dtype {dtype!r}; only numeric arrays are imported "
                         f"(object arrays would need unpickling).")
    comp = (meta.get("compressor") or {}).get("id") if isinstance(meta.get("compressor"), dict) else meta.get("compressor")
    filters = [f.get("id") for f in (meta.get("filters") or []) if isinstance(f, dict)]
    if comp not in _SAFE_COMPRESSORS or any(f not in _SAFE_FILTERS for f in filters):
        raise ValueError(f"{where}: array {key} uses codec {comp!r} and filters {filters}; "
                         f"allowed are {sorted(c for c in _SAFE_COMPRESSORS if c)} and {sorted(_SAFE_FILTERS)}.")


def read_zarr_v2(src: Path, obs_keys: list[str] | None = None, action_key: str = "action", **_) -> ImportedDataset:
    src = Path(src)
    where = f"zarr v2 replay buffer {str(src)!r}"
    if not (src / ".zgroup").is_file():
        raise ValueError(f"{where} has no .zgroup; expected a zarr v2 group with data/ and meta/episode_ends.")
    metas = {}
    for d in sorted((src / "data").iterdir()) if (src / "data").is_dir() else []:
        if (d / ".zarray").is_file():
            try:
                metas[d.name] = json.loads((d / ".zarray").read_text())
            except ValueError:
                raise ValueError(f"{where}: data/{d.name}/.zarray is not JSON.") from None
    ends_meta_path = src / "meta" / "episode_ends" / ".zarray"
    if not ends_meta_path.is_file() or action_key not in metas:
        raise ValueError(f"{where} needs meta/episode_ends and data/{action_key}.")
    _check_v2_array(json.loads(ends_meta_path.read_text()), "meta/episode_ends", where)
    if obs_keys and action_key in obs_keys:
        raise ValueError(f"{where}: data/{action_key} is the action; leave it out of --obs-keys.")
    for k in obs_keys or []:
        if k not in metas:
            raise ValueError(f"{where}: data/{k} is not in the buffer (has {sorted(metas)}).")
    skipped: dict[str, str] = {}
    roles: dict[str, str] = {}  # reward / terminal / success -> the key read as it
    keys = []
    for k, m in metas.items():
        role = key_role(k)
        if k == action_key:
            continue
        if role in (ROLE_REWARD, ROLE_TERMINAL, ROLE_SUCCESS) and role not in roles and len(m.get("shape", [])) <= 2:
            roles[role] = k  # read as what it is, even when --obs-keys also names it
        if obs_keys:
            if k in obs_keys:
                continue
            why = "not in --obs-keys"
        elif role != ROLE_OBSERVATION:
            why = SKIP_REASONS[role]
        elif len(m.get("shape", [])) > 2:
            why = f"shape {m.get('shape')}: images and other multi-dimensional arrays are not imported"
        elif not _numeric(m):
            why = f"dtype {m.get('dtype')!r} is not numeric"
        else:
            keys.append(k)
            continue
        if roles.get(role) != k:
            skipped[f"data/{k}"] = why
    keys = list(obs_keys) if obs_keys else sorted(keys)
    if not keys:
        why = "; ".join(f"{k}: {r}" for k, r in skipped.items() if k.startswith("data/"))
        raise ValueError(f"{where}: no data key holds numeric low-dimensional observations (skipped {why or 'none'}); "
                         f"name them with --obs-keys.")
    for k in [*keys, action_key, *roles.values()]:
        _check_v2_array(metas[k], f"data/{k}", where)
    meta_dir = src / "meta"
    for d in sorted(meta_dir.iterdir()) if meta_dir.is_dir() else []:
        if d.name != "episode_ends" and not d.name.startswith("."):
            skipped[f"meta/{d.name}"] = "not read: only meta/episode_ends bounds the episodes"
    try:
        group = zarr.open_group(str(src), mode="r", zarr_format=2)
        ends = np.asarray(group["meta/episode_ends"][:], np.int64)
        n = int(ends[-1]) if ends.size else 0
        short = [k for k in [*keys, action_key, *roles.values()] if int((metas[k].get("shape") or [0])[0]) < n]
        if short:
            raise ValueError(f"{where}: data/{short[0]} has {metas[short[0]]['shape'][0]} rows but "
                             f"meta/episode_ends reaches {n}.")

        def column(k):
            return check_numeric(np.asarray(group[f"data/{k}"][:n]), f"data/{k}", where).reshape(n, -1)

        cols = [column(k).astype(np.float32) for k in keys]
        action = column(action_key).astype(np.float32)
        reward = column(roles[ROLE_REWARD]).astype(np.float32) if ROLE_REWARD in roles else None
        terminal = column(roles[ROLE_TERMINAL]).astype(bool) if ROLE_TERMINAL in roles else None
        success = column(roles[ROLE_SUCCESS]).astype(bool) if ROLE_SUCCESS in roles else None
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{where} cannot be read ({type(exc).__name__}: {exc}).") from None
    for role, arr in ((ROLE_REWARD, reward), (ROLE_TERMINAL, terminal), (ROLE_SUCCESS, success)):
        if arr is not None and arr.shape[1] != 1:
            raise ValueError(f"{where}: data/{roles[role]} has {arr.shape[1]} values per step; a {role} is one.")
    if np.any(np.diff(np.r_[0, ends]) <= 0):
        raise ValueError(f"{where}: meta/episode_ends must increase strictly, got {ends[:8].tolist()}...")
    warnings = []
    if reward is None:
        warnings.append(f"{where} has no reward key (data/reward); every reward is stored as 0.")
        reward = np.zeros((n, 1), np.float32)
    obs = np.concatenate(cols, axis=1)
    episodes, dropped, inner_terminals, start = [], 0, 0, 0
    for end in ends:
        rows = slice(start, int(end))
        # a terminal flag on the last frame or on the last kept step ends the episode in a terminal state
        term = bool(terminal[rows][-2:].any()) if terminal is not None else False
        inner_terminals += int(terminal is not None and terminal[rows][:-2].any())
        ep = drop_last_frame(obs[rows], action[rows], reward[rows, 0], terminated=term,
                             success=bool(success[rows].any()) if success is not None else None)
        if ep is None:
            dropped += 1
        else:
            episodes.append(ep)
        start = int(end)
    notes = {"dropped_episodes": dropped, "last_frame": "each episode's last frame became its final observation",
             "read_as": {role: f"data/{k}" for role, k in sorted(roles.items())}}
    if inner_terminals:
        warnings.append(f"{where}: {inner_terminals} episode(s) have a terminal flag before their end; "
                        f"episode bounds come from meta/episode_ends, so those flags were ignored.")
    return ImportedDataset(env_id=f"replay/{src.stem}", episodes=episodes, obs_names=keys, notes=notes,
                           skipped=skipped, warnings=warnings,
                           success_from=f"data/{roles[ROLE_SUCCESS]}" if ROLE_SUCCESS in roles else "")


def _numeric(meta: dict) -> bool:
    dtype = meta.get("dtype")
    return isinstance(dtype, str) and dtype.lstrip("<>|=")[:1] in ("f", "i", "u", "b")
