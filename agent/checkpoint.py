"""Checkpoints list their parts and load with ``torch.load(weights_only=True)``.

A checkpoint is a dict: ``format``, ``version``, ``algo``, ``step``, ``obs_dim``,
``act_dim``, ``env_id``, ``env_kwargs`` (the env's keyword arguments evaluation uses),
``learner`` (the learner's ``state_dict()``: networks, optimizers, normalizer) and ``rng``
(torch's RNG state and the sampler's numpy generator state as JSON text, since it holds
128-bit integers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "agent-checkpoint"
VERSION = 1


def rng_state(sampler_rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(sampler_rng.bit_generator.state)}


def restore_rng(state: dict, sampler_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    sampler_rng.bit_generator.state = json.loads(state["numpy"])


def save_checkpoint(run_dir: str | Path, step: int, payload: dict, keep_step_copy: bool = True) -> Path:
    """Write ``checkpoints/latest.pt`` atomically (and, with ``keep_step_copy``, a step-numbered copy)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "step": int(step), **payload}
    tmp = ckpt_dir / f".latest.{os.getpid()}.tmp"
    torch.save(data, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    if keep_step_copy:
        step_path = ckpt_dir / f"step_{step:08d}.pt"
        if step_path.exists():
            step_path.unlink()
        os.link(tmp, step_path)
    os.replace(tmp, ckpt_dir / "latest.pt")
    return ckpt_dir / "latest.pt"


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file, or ``checkpoints/latest.pt`` of a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt"
    if not path.is_file():
        raise ValueError(f"no checkpoint at {str(path)!r}: train a run first or pass an existing checkpoint file.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an agent checkpoint (no format={FORMAT!r} entry).")
    return data


def check_shapes(ckpt: dict, obs_dim: int, act_dim: int, env_id: str, source: str) -> None:
    if ckpt["obs_dim"] != obs_dim or ckpt["act_dim"] != act_dim:
        raise ValueError(
            f"checkpoint {source} was trained for observations of size {ckpt['obs_dim']} and actions of size "
            f"{ckpt['act_dim']} (env {ckpt.get('env_id')}), but {env_id} has observations of size {obs_dim} "
            f"and actions of size {act_dim}."
        )
