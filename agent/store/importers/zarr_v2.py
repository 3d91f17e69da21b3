"""Replay buffers in the diffusion_policy layout: a zarr v2 group with ``data/<key>``
(all episodes concatenated along time) and ``meta/episode_ends``. Array metadata is
read as JSON and checked before zarr opens anything: object dtypes and pickling codecs
are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from agent.store.importers.common import ImportedDataset, drop_last_frame

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
    low_dim = [k for k, m in metas.items() if len(m.get("shape", [])) <= 2]
    keys = obs_keys or sorted(k for k in low_dim if k != action_key)
    for k in [*keys, action_key]:
        if k not in metas:
            raise ValueError(f"{where}: data/{k} is not in the buffer (has {sorted(metas)}).")
        _check_v2_array(metas[k], f"data/{k}", where)
    try:
        group = zarr.open_group(str(src), mode="r", zarr_format=2)
        ends = np.asarray(group["meta/episode_ends"][:], np.int64)
        n = int(ends[-1]) if ends.size else 0
        cols = [np.asarray(group[f"data/{k}"][:n]).reshape(n, -1).astype(np.float32) for k in keys]
        action = np.asarray(group[f"data/{action_key}"][:n]).reshape(n, -1).astype(np.float32)
        reward = (np.asarray(group["data/reward"][:n], np.float32).reshape(-1) if "reward" in metas and "reward" not in keys
                  else np.zeros(n, np.float32))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{where} cannot be read ({type(exc).__name__}: {exc}).") from None
    if np.any(np.diff(np.r_[0, ends]) <= 0):
        raise ValueError(f"{where}: meta/episode_ends must increase strictly, got {ends[:8].tolist()}...")
    obs = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0), np.float32)
    episodes, dropped, start = [], 0, 0
    for end in ends:
        ep = drop_last_frame(obs[start:end], action[start:end], reward[start:end])
        if ep is None:
            dropped += 1
        else:
            episodes.append(ep)
        start = int(end)
    return ImportedDataset(env_id=f"replay/{src.stem}", episodes=episodes, obs_names=keys,
                           notes={"dropped_episodes": dropped,
                                  "last_frame": "each episode's last frame became its final observation"})
