"""What every importer returns, and the one function that writes it into a store."""
from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from agent.store.zarr_store import EpisodeAttrs, Store


@dataclass
class ImportedEpisode:
    obs: np.ndarray            # (T, obs_dim)
    action: np.ndarray         # (T, act_dim)
    reward: np.ndarray         # (T,)
    final_obs: np.ndarray      # (obs_dim,): the observation after the last step
    terminated: bool           # the episode ended in a terminal state
    success: bool | None = None  # None: the format does not state it
    sim_state: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)   # quality, split, seed overrides

    def as_store_episode(self) -> dict[str, Any]:
        length = self.obs.shape[0]
        flags = np.zeros(length, bool)
        terminated, truncated = flags.copy(), flags.copy()
        (terminated if self.terminated else truncated)[-1] = True
        # a store's success is a bool: an unknown one is stored as False and named in the import notes
        return {"obs": np.asarray(self.obs, np.float32), "action": np.asarray(self.action, np.float32),
                "reward": np.asarray(self.reward, np.float32), "terminated": terminated, "truncated": truncated,
                "final_obs": np.asarray(self.final_obs, np.float32), "success": bool(self.success),
                **{f"sim_state/{k}": np.asarray(v, np.float64) for k, v in self.sim_state.items()}}


@dataclass
class ImportedDataset:
    env_id: str
    episodes: list[ImportedEpisode]
    obs_names: list[str] = field(default_factory=list)     # the keys concatenated into obs, in order
    action_low: np.ndarray | None = None                   # bounds when the format states them
    action_high: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)    # what the importer repaired or dropped
    env_kwargs: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it was not imported
    warnings: list[str] = field(default_factory=list)      # what the user must know about the result
    success_from: str = ""                                 # the field success was read from; "" when none


class Reader(Protocol):
    """One per format: read ``src`` into memory, or raise ValueError naming the problem."""

    def __call__(self, src: Path, **options: Any) -> ImportedDataset: ...


def check_new_store_path(out: str | Path) -> Path:
    """The path an import may create: local, and nothing there yet (an import never
    writes into an existing store or directory)."""
    if "://" in str(out) and not str(out).startswith("file://"):
        raise ValueError(f"cannot import into {str(out)!r}: stores are created on a local path.")
    path = Path(str(out).removeprefix("file://"))
    if path.exists() or path.is_symlink():
        raise ValueError(f"cannot import into {str(path)!r}: the path already exists; pass a new --out "
                         f"(an import never writes into an existing store or directory).")
    return path


def write_store(data: ImportedDataset, out: str | Path, *, fmt: str, src: str, quality: str = "",
                env_id: str | None = None) -> dict:
    """Write ``data`` as a new store at ``out``: built under a temporary name beside it and
    renamed into place when complete, so a failure leaves nothing at ``out``."""
    out = check_new_store_path(out)
    if not data.episodes:
        raise ValueError(f"{src!r} holds no complete episode to import.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.importing-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        result = _write_store(data, tmp, fmt=fmt, src=src, quality=quality, env_id=env_id)
        if out.exists() or out.is_symlink():  # created by someone else while we wrote
            raise ValueError(f"cannot import into {str(out)!r}: the path appeared while importing; "
                             f"pass a new --out (an import never writes into an existing store or directory).")
        os.rename(tmp, out)
    except ValueError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # the temporary store is gone: name the source instead, and say that nothing was written
        msg = str(exc).replace(f"store {str(tmp)!r}", repr(src)).replace(str(tmp), str(out)).rstrip(".")
        raise ValueError(f"{msg}; nothing was written to {str(out)!r}.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**result, "store": str(out)}


def _write_store(data: ImportedDataset, out: Path, *, fmt: str, src: str, quality: str, env_id: str | None) -> dict:
    obs_dim = data.episodes[0].obs.shape[1]
    act_dim = data.episodes[0].action.shape[1]
    actions = np.concatenate([e.action for e in data.episodes])
    low, high = data.action_low, data.action_high
    if low is None or high is None:
        # formats that do not state bounds: [-1, 1] when the data stays inside, else unbounded
        inside = actions.size == 0 or (actions.min() >= -1.0 and actions.max() <= 1.0)
        low = np.full(act_dim, -1.0 if inside else -np.inf)
        high = np.full(act_dim, 1.0 if inside else np.inf)
    sim_dims = {k: int(np.asarray(v).shape[1]) for k, v in data.episodes[0].sim_state.items()}
    notes = dict(data.notes)
    known = all(ep.success is not None for ep in data.episodes)
    notes["success"] = (f"read from {data.success_from}" if known and data.success_from else
                        "not recorded: the dataset does not state it, so every episode's success is stored as False")
    if data.skipped:
        notes["skipped_keys"] = dict(sorted(data.skipped.items()))
    if data.warnings:
        notes["warnings"] = list(data.warnings)
    notes = _jsonable(notes)
    store = Store.create(
        out, env_id=env_id or data.env_id,
        observation_space=spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32), (act_dim,), np.float32),
        env_kwargs=data.env_kwargs, sim_state_dims=sim_dims or None,
        extra_attrs={"imported_from": {"format": fmt, "path": str(src), "obs_names": data.obs_names,
                                       "success_recorded": known and bool(data.success_from), "notes": notes}},
    )
    try:
        for ep in data.episodes:
            attrs = EpisodeAttrs(source="imported", quality=str(ep.attrs.get("quality", quality)),
                                 split=str(ep.attrs.get("split", "train")), seed=int(ep.attrs.get("seed", -1)),
                                 generator_hash=f"{fmt}:{Path(str(src)).name}")
            store.append_episode(ep.as_store_episode(), attrs)
        return {"store": str(out), "format": fmt, "episodes": store.num_episodes, "steps": store.num_steps,
                "obs_dim": obs_dim, "action_dim": act_dim, "obs_keys": list(data.obs_names),
                "skipped_keys": notes.get("skipped_keys", {}), "warnings": notes.get("warnings", []),
                "notes": {k: v for k, v in notes.items() if k not in ("skipped_keys", "warnings")}}
    finally:
        store.close()


# what a key holds, judged by its name: only ROLE_OBSERVATION keys are concatenated into obs by default
ROLE_OBSERVATION, ROLE_REWARD, ROLE_TERMINAL, ROLE_TRUNCATION, ROLE_SUCCESS, ROLE_BOOKKEEPING = (
    "observation", "reward", "terminal", "truncation", "success", "bookkeeping")
_ROLE_NAMES = {
    ROLE_REWARD: {"reward", "rewards"},
    ROLE_TERMINAL: {"terminal", "terminals", "terminated", "terminations", "done", "dones", "is_terminal"},
    ROLE_TRUNCATION: {"truncated", "truncations", "timeout", "timeouts", "is_last", "is_first"},
    ROLE_SUCCESS: {"success", "successes", "is_success", "goal_achieved"},
    ROLE_BOOKKEEPING: {"time", "t", "step", "steps", "stage", "stages", "n_contacts", "index", "episode_index",
                       "frame_index", "task_index", "episode_id", "episode_ends", "discount", "discounts", "id",
                       "seed", "total_steps", "language_instruction"},
}
SKIP_REASONS = {
    ROLE_REWARD: "a reward, not an observation",
    ROLE_TERMINAL: "a termination flag, not an observation",
    ROLE_TRUNCATION: "a truncation or episode-start flag; episode ends come from the format's episode bounds",
    ROLE_SUCCESS: "a success flag, not an observation",
    ROLE_BOOKKEEPING: "bookkeeping (time, stage, counter or index), not an observation; pass --obs-keys to include it",
}


def key_role(name: str) -> str:
    """The role of a data key by its last name component (``data/timestamp``,
    ``next.reward`` and ``robot_timestamp`` are not observations; ``robot0_eef_pos`` is)."""
    leaf = name.lower().rsplit("/", 1)[-1].removeprefix("next.").removeprefix("observation.")
    for role, names in _ROLE_NAMES.items():
        if leaf in names:
            return role
    if leaf.endswith(("timestamp", "timestamps")) or leaf.startswith("timestamp"):
        return ROLE_BOOKKEEPING
    return ROLE_OBSERVATION


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def bounds_or_none(values) -> np.ndarray | None:
    arr = np.asarray([np.nan if v is None else v for v in values], np.float64)
    return None if np.isnan(arr).any() else arr


def box_from_json(text_or_dict, what: str, where: str) -> dict:
    """A Box space in the JSON form Minari and our exporter write."""
    space = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(space, dict) or space.get("type") != "Box":
        kind = space.get("type") if isinstance(space, dict) else type(space).__name__
        raise ValueError(f"{where}: {what} is a {kind} space; only flat Box spaces are imported.")
    shape = space.get("shape") or []
    if len(shape) != 1:
        raise ValueError(f"{where}: {what} has shape {shape}; only flat (1-d) Box spaces are imported.")
    return space


def check_numeric(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise ValueError(f"{where}: {key} has dtype {arr.dtype}; only numeric arrays are imported.")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():  # found here, the row is the source's own, not an episode's step
            row = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
            raise ValueError(f"{where}: {key} holds a non-finite value (NaN or inf) at row {row}.")
    return arr


def episodes_from_flags(obs, action, reward, terminal, timeout, next_obs=None, sim_state=None) -> tuple[list[ImportedEpisode], dict]:
    """Cut flat D4RL-style arrays into episodes.

    An episode ends at a terminal, a timeout, or (when next observations are given) a
    step whose next observation is not the following step's observation: the mark of a
    misplaced or missing timeout. A step with both flags is terminal. Without next
    observations the last step of a truncated episode has no successor; it is dropped
    and its observation becomes the final one (the usual shift would borrow the next
    episode's first observation instead).
    """
    n = obs.shape[0]
    terminal = np.asarray(terminal, bool)
    both = int((np.asarray(timeout, bool) & terminal).sum())
    timeout = np.asarray(timeout, bool) & ~terminal
    notes = {"both_flags": both, "split_at_discontinuity": 0,
             "dropped_last_steps": 0, "dropped_episodes": 0}
    ends = terminal | timeout
    if next_obs is not None and n > 1:
        jump = ~np.all(np.isclose(next_obs[:-1], obs[1:], rtol=1e-5, atol=1e-6), axis=1) & ~ends[:-1]
        notes["split_at_discontinuity"] = int(jump.sum())
        timeout = timeout.copy()
        timeout[:-1] |= jump
        ends = terminal | timeout
    last = np.flatnonzero(ends).tolist()
    if not last or last[-1] != n - 1:
        last.append(n - 1)  # a trailing partial episode is truncated
    episodes = []
    start = 0
    for end in last:
        rows = slice(start, end + 1)
        term = bool(terminal[end])
        sim = {k: v[rows] for k, v in (sim_state or {}).items()}
        if next_obs is not None:
            episodes.append(ImportedEpisode(obs[rows], action[rows], reward[rows], next_obs[end], term, sim_state=sim))
        elif term:
            # the successor of a terminal step is never bootstrapped from; its own observation stands in
            episodes.append(ImportedEpisode(obs[rows], action[rows], reward[rows], obs[end], True, sim_state=sim))
        elif end - start >= 1:
            keep = slice(start, end)
            episodes.append(ImportedEpisode(obs[keep], action[keep], reward[keep], obs[end], False,
                                            sim_state={k: v[keep] for k, v in (sim_state or {}).items()}))
            notes["dropped_last_steps"] += 1
        else:
            notes["dropped_episodes"] += 1
        start = end + 1
    return episodes, notes


def drop_last_frame(obs, action, reward, success: bool | None = None, attrs: dict | None = None,
                    terminated: bool = False) -> ImportedEpisode | None:
    """Frame-based formats (LeRobot, diffusion_policy) hold T frames and no successor of
    the last: the episode becomes T-1 transitions ending in the last frame's observation,
    truncated unless the format marks a terminal end."""
    if obs.shape[0] < 2:
        return None
    return ImportedEpisode(obs[:-1], action[:-1], reward[:-1], obs[-1], terminated, success=success, attrs=attrs or {})
