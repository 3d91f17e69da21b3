"""Writing rendered episodes to .mp4 (headless: MUJOCO_GL=egl or osmesa)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(frames: list[np.ndarray], path: str, fps: float) -> str:
    """Encode RGB frames (H, W, 3 uint8) as H.264 at ``fps``; returns the path."""
    if not frames:
        raise ValueError(f"no frames to write to {path!r}.")
    import imageio.v2 as imageio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps any frame size; yuv420p plays in browsers and players
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv420p",
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, np.uint8))
    return path


def env_fps(env) -> float:
    return float(getattr(env.unwrapped, "control_rate", None) or env.metadata.get("render_fps", 20))


def replay_video(env, episodes: list[tuple[int, np.ndarray]], path: str) -> str:
    """Render episodes again from (reset seed, actions): the envs are deterministic, so the
    replay shows exactly what was collected."""
    frames = []
    for seed, actions in episodes:
        env.reset(seed=seed)
        frames.append(env.unwrapped.render())
        for action in actions:
            env.step(action)
            frames.append(env.unwrapped.render())
    return write_mp4(frames, path, env_fps(env))
