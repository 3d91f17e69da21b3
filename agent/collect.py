"""``agent collect``: roll out a policy and append its episodes to a store."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.config import option, to_dict
from agent.envs import make_env, reference_returns
from agent.store import EpisodeAttrs, Store


@dataclass
class CollectConfig:
    env: str = option("", "gymnasium id of the task, e.g. dmc/reacher-hard-v0")
    policy: str = option("scripted", "'scripted' (the task's expert), 'random', or a run directory / checkpoint file")
    episodes: int = option(10, "number of episodes to collect")
    noise: float = option(0.0, "std of Gaussian noise added to the policy's actions (actions in [-1, 1])")
    epsilon: float = option(0.0, "probability of replacing an action by a uniform random one")
    seed: int = option(0, "episode i is reset with seed + i; the noise generator is seeded from it too")
    quality: str = option("", "quality tag stored with each episode (random, medium, expert, ...)")
    save_sim_state: bool = option(True, "store info['sim_state'] at every step (exact physics restore)")
    out: str = option("", "store path; created if missing, appended to if it is a store of the same env")


def config_hash(cfg) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _make_policy(cfg: CollectConfig, env):
    from sims.experts import NoisyPolicy, RandomPolicy  # the policies live with the tasks

    act_dim = int(np.prod(env.action_space.shape))
    if cfg.policy == "random":
        base, source = RandomPolicy(act_dim, seed=cfg.seed), "random"
    elif cfg.policy == "scripted":
        from sims.experts import make_expert

        base, source = make_expert(cfg.env, env), "scripted"
    else:
        from agent.policy import load_policy

        learned = load_policy(cfg.policy, cfg.env, int(np.prod(env.observation_space.shape)), act_dim)
        base, source = (lambda obs: learned.act(obs, deterministic=True)), "policy"
    return NoisyPolicy(base, act_dim, noise=cfg.noise, epsilon=cfg.epsilon, seed=cfg.seed + 7919), source


def open_or_create(path: str, env_id: str, env, sim_state: dict | None) -> Store:
    if Path(path).exists() and any(Path(path).iterdir()):
        store = Store.open(path, mode="a")
        if store.env_id != env_id:
            raise ValueError(f"store {path!r} holds {store.env_id} episodes; it cannot take episodes of {env_id}.")
        return store
    dims = {k: int(np.asarray(v).size) for k, v in sim_state.items()} if sim_state else None
    return Store.create(
        path, env_id=env_id, observation_space=env.observation_space, action_space=env.action_space,
        control_rate=getattr(env.unwrapped, "control_rate", None), reference_returns=reference_returns(env_id),
        sim_state_dims=dims,
    )


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    if not cfg.env:
        raise ValueError("collect needs --env (a gymnasium id such as dmc/reacher-hard-v0).")
    if not cfg.out:
        raise ValueError("collect needs --out (the store to write).")
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {cfg.episodes}.")
    env = make_env(cfg.env)
    try:
        policy, source = _make_policy(cfg, env)
        _, info = env.reset(seed=cfg.seed)
        store = open_or_create(cfg.out, cfg.env, env, info.get("sim_state") if cfg.save_sim_state else None)
        keep_sim = store.sim_state_keys()
        returns, successes = [], []
        for i in tqdm(range(cfg.episodes), desc=f"collect {cfg.env}", disable=None if progress else True):
            seed = cfg.seed + i
            obs, info = env.reset(seed=seed)
            steps: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "terminated", "truncated")}
            sim: dict[str, list] = {k: [] for k in keep_sim}
            done = False
            while not done:
                for k in keep_sim:
                    sim[k].append(np.asarray(info["sim_state"][k], np.float64).ravel())
                action = policy(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                for k, v in (("obs", obs), ("action", action), ("reward", reward),
                             ("terminated", terminated), ("truncated", truncated)):
                    steps[k].append(v)
                obs, done = next_obs, terminated or truncated
            episode = {
                "obs": np.asarray(steps["obs"], np.float32), "action": np.asarray(steps["action"], np.float32),
                "reward": np.asarray(steps["reward"], np.float32),
                "terminated": np.asarray(steps["terminated"], bool), "truncated": np.asarray(steps["truncated"], bool),
                "final_obs": np.asarray(obs, np.float32), "success": bool(info.get("success", False)),
                **{f"sim_state/{k}": np.asarray(v) for k, v in sim.items()},
            }
            store.append_episode(episode, EpisodeAttrs(
                source=source, generator_hash=config_hash(cfg), quality=cfg.quality, seed=seed,
                checkpoint=cfg.policy if source == "policy" else ""))
            returns.append(float(episode["reward"].sum()))
            successes.append(episode["success"])
    finally:
        env.close()
    return {"store": cfg.out, "episodes": store.num_episodes, "steps": store.num_steps,
            "collected": cfg.episodes, "return_mean": float(np.mean(returns)), "success_rate": float(np.mean(successes))}
