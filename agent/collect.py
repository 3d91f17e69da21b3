"""``agent collect``: roll out a policy and append its episodes to a store.

Episode i is reset with ``seed + i`` and its action noise comes from a generator
seeded by ``(seed, i)``, so a dataset does not depend on how many worker processes
collected it. With ``num_envs`` K > 1, K subprocesses roll out episodes i = k, k + K, ...
and send each finished episode back to this process, the store's one writer, which
appends them in episode order; with ``ray`` the same is done by ``actors`` Ray actors
(:mod:`agent.distributed.collect`).

Running a recipe again into the same store continues it: its episodes carry the
recipe's hash (:func:`recipe_hash`: the config less the episode count, output, worker
count and video), and the new run's indices i start after the largest seed the store's
episodes of that recipe used, so a second run adds new episodes, never copies.

Noise per episode: ``noise`` and ``epsilon`` are the values of episode 0; with a
``schedule`` other than constant they move to ``noise_end`` / ``epsilon_end`` by the
last episode (replay-like data from a controller that gets better over time);
``mix_epsilons`` cycles through several epsilons instead (a mixture of qualities). The
mixture cycles on over the recipe's episodes across runs; a schedule runs over the
episodes of each run (the episode count is not part of the recipe), so a continuation
starts it over, and says so.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import queue as queue_module
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import numpy as np
from tqdm import tqdm

from agent.config import check_ranges, from_dict, option, to_dict
from agent.envs import make_env, reference_returns
from agent.interrupts import give_back_sigint, take_sigint
from agent.store import EpisodeAttrs, Store

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class CollectConfig:
    env: str = option("", "gymnasium id of the task, e.g. dmc/reacher-hard-v0")
    policy: str = option("scripted", "'scripted' (the task's expert), 'random', or a run directory / checkpoint file")
    episodes: int = option(10, "number of episodes to collect", min=1)
    noise: float = option(0.0, "std of Gaussian noise added to the policy's actions (actions in [-1, 1]); episode 0's value under a schedule", min=0)
    epsilon: float = option(0.0, "probability of replacing an action by a uniform random one; episode 0's value under a schedule", min=0, max=1)
    schedule: Literal["constant", "linear", "exponential"] = option(
        "constant", "how noise and epsilon move from their values to noise_end / epsilon_end over the episodes")
    noise_end: float | None = option(None, "noise of the last episode under a schedule (empty: noise stays constant)", min=0)
    epsilon_end: float | None = option(None, "epsilon of the last episode under a schedule (empty: epsilon stays constant)", min=0, max=1)
    mix_epsilons: list[float] = option([], "the recipe's episode i (seed + i) uses epsilon mix_epsilons[i % n]: a mixture of quality levels in one dataset", min=0, max=1)
    seed: int = option(0, "episode i is reset with seed + i; its noise generator is seeded from (seed, i)", min=0)
    quality: str = option("", "quality tag stored with each episode (random, medium, expert, mixed, replay, ...)")
    save_sim_state: bool = option(True, "store info['sim_state'] at every step (exact physics restore)")
    num_envs: int = option(1, "episodes are rolled out in this many subprocesses; this process alone writes the store", min=1)
    ray: str = option("", "roll out on Ray actors instead: 'local' (a cluster started here), 'auto' (the cluster this machine is in) or the head's address; this process alone writes the store")
    actors: int = option(2, "with --ray: how many actors roll out episodes (each an env and the policy)", min=1)
    video: str = option("", "write the first video_episodes episodes to this .mp4 (rendered headless)")
    video_episodes: int = option(1, "how many episodes --video shows", min=1)
    out: str = option("", "store path; created if missing, appended to if it is a store of the same env")


def config_hash(cfg) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


# fields that say how many episodes a run makes, where and how fast, not which: runs differing in them continue one recipe
RUN_FIELDS = ("episodes", "num_envs", "ray", "actors", "video", "video_episodes", "out")


def recipe_hash(cfg: CollectConfig) -> str:
    """The generator hash of collected episodes: the config less :data:`RUN_FIELDS`."""
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in RUN_FIELDS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def first_index(store: Store, cfg: CollectConfig) -> int:
    """The episode index this run starts at: 0, or one past the largest seed that the
    store's episodes of the same recipe (or of this exact config, as written before
    recipes were hashed apart) were reset with."""
    if store.num_episodes == 0:
        return 0
    attrs = store.episode_attrs()
    same = np.isin(np.asarray(attrs["generator_hash"], str), [recipe_hash(cfg), config_hash(cfg)])
    seeds = np.asarray(attrs["seed"], np.int64)[same]
    return max(0, int(seeds.max()) + 1 - cfg.seed) if seeds.size else 0


def _scheduled(start: float, end: float | None, schedule: str, frac: float, name: str) -> float:
    if end is None or schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * frac
    if start <= 0 or end <= 0:
        raise ValueError(f"an exponential schedule needs {name} and {name}_end above 0, got {start} and {end}; use 'linear' to reach 0.")
    return float(start * (end / start) ** frac)


def episode_noise(cfg: CollectConfig, i: int, first: int = 0) -> tuple[float, float]:
    """(noise, epsilon) of the run's episode i, the recipe's episode ``first + i``: the
    schedule runs over the run's episodes, the mixture over the recipe's."""
    frac = i / (cfg.episodes - 1) if cfg.episodes > 1 else 0.0
    noise = _scheduled(cfg.noise, cfg.noise_end, cfg.schedule, frac, "noise")
    epsilon = _scheduled(cfg.epsilon, cfg.epsilon_end, cfg.schedule, frac, "epsilon")
    if cfg.mix_epsilons:
        epsilon = cfg.mix_epsilons[(first + i) % len(cfg.mix_epsilons)]
    return noise, epsilon


def schedule_restarts(cfg: CollectConfig) -> bool:
    """Whether noise or epsilon follow a schedule, which each run starts over."""
    return cfg.schedule != "constant" and (cfg.noise_end is not None or (cfg.epsilon_end is not None and not cfg.mix_epsilons))


def _schedule_note(cfg: CollectConfig, start_seed: int) -> str:
    return (f"the {cfg.schedule} noise schedule ran over this run's {cfg.episodes} episodes from its first value; it does "
            f"not continue the schedule of the recipe's episodes before seed {start_seed}")


def _check(cfg: CollectConfig) -> None:
    if not cfg.env:
        raise ValueError("collect needs --env (a gymnasium id such as dmc/reacher-hard-v0).")
    if not cfg.out:
        raise ValueError("collect needs --out (the store to write).")
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {cfg.episodes}.")
    if cfg.num_envs < 1:
        raise ValueError(f"--num-envs must be at least 1, got {cfg.num_envs}.")
    if cfg.ray and cfg.num_envs > 1:
        raise ValueError(f"--ray and --num-envs {cfg.num_envs} both choose who rolls out; give one (--actors N with --ray).")
    for value, end, name in ((cfg.noise, cfg.noise_end, "noise"), (cfg.epsilon, cfg.epsilon_end, "epsilon")):
        if value < 0 or (end is not None and end < 0):
            raise ValueError(f"{name} and {name}_end must be >= 0, got {value} and {end}.")
    if any(not 0.0 <= e <= 1.0 for e in [cfg.epsilon, cfg.epsilon_end or 0.0, *cfg.mix_epsilons]):
        raise ValueError(f"epsilons must lie in [0, 1], got epsilon={cfg.epsilon}, epsilon_end={cfg.epsilon_end}, mix_epsilons={cfg.mix_epsilons}.")
    if cfg.video and not cfg.video.endswith(".mp4"):
        raise ValueError(f"--video must name an .mp4 file, got {cfg.video!r}.")


class EpisodePolicies:
    """The base policy bound to one env, and each episode's noisy version of it."""

    def __init__(self, cfg: CollectConfig, env):
        self.cfg = cfg
        self.act_dim = int(np.prod(env.action_space.shape))
        self.base: PolicyFn | None = None
        if cfg.policy == "random":
            self.source = "random"
        elif cfg.policy == "scripted":
            from sims.experts import make_expert  # the policies live with the tasks

            self.base, self.source = make_expert(cfg.env, env), "scripted"
        else:
            from agent.policy import load_policy

            learned = load_policy(cfg.policy, cfg.env, int(np.prod(env.observation_space.shape)), self.act_dim)
            self.base, self.source = (lambda obs: learned.act(obs, deterministic=True)), "policy"

    def for_episode(self, i: int, first: int = 0) -> PolicyFn:
        """Episode ``first + i`` of the recipe, the i-th of this run (where its schedule is)."""
        from sims.experts import NoisyPolicy, RandomPolicy

        seed = self.cfg.seed * 1_000_003 + first + i
        base = self.base if self.base is not None else RandomPolicy(self.act_dim, seed=seed + 7919)
        noise, epsilon = episode_noise(self.cfg, i, first)
        return NoisyPolicy(base, self.act_dim, noise=noise, epsilon=epsilon, seed=seed)


def rollout_episode(env, policy: PolicyFn, seed: int, sim_keys: list[str]) -> dict:
    """One episode in the store's episode format."""
    obs, info = env.reset(seed=seed)
    steps: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "terminated", "truncated")}
    sim: dict[str, list] = {k: [] for k in sim_keys}
    done = False
    while not done:
        for k in sim_keys:
            sim[k].append(np.asarray(info["sim_state"][k], np.float64).ravel())
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        for k, v in (("obs", obs), ("action", action), ("reward", reward), ("terminated", terminated), ("truncated", truncated)):
            steps[k].append(v)
        obs, done = next_obs, terminated or truncated
    return {
        "obs": np.asarray(steps["obs"], np.float32), "action": np.asarray(steps["action"], np.float32),
        "reward": np.asarray(steps["reward"], np.float32),
        "terminated": np.asarray(steps["terminated"], bool), "truncated": np.asarray(steps["truncated"], bool),
        "final_obs": np.asarray(obs, np.float32), "success": bool(info.get("success", False)),
        **{f"sim_state/{k}": np.asarray(v) for k, v in sim.items()},
    }


def _worker(cfg_dict: dict, indices: list[int], first: int, sim_keys: list[str], results) -> None:
    """Subprocess: roll out episodes ``indices`` and send each one to the writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the writer, which stops the workers
    try:
        cfg = from_dict(CollectConfig, cfg_dict)
        env = make_env(cfg.env)
        policies = EpisodePolicies(cfg, env)
        for i in indices:
            results.put((i, rollout_episode(env, policies.for_episode(i, first), cfg.seed + first + i, sim_keys)))
        env.close()
    except Exception as exc:  # reported by the writer as one readable error
        results.put((-1, f"{type(exc).__name__}: {exc}"))


def _episodes_from_workers(cfg: CollectConfig, sim_keys: list[str], first: int = 0):
    """Yield (i, episode) in episode order from ``cfg.num_envs`` subprocesses."""
    ctx = multiprocessing.get_context("spawn")  # no forked copies of torch or GL state
    results = ctx.Queue(maxsize=4 * cfg.num_envs)
    procs = [ctx.Process(target=_worker, args=(to_dict(cfg), list(range(k, cfg.episodes, cfg.num_envs)), first, sim_keys,
                                               results), daemon=True) for k in range(cfg.num_envs)]
    for p in procs:
        p.start()
    pending: dict[int, dict] = {}
    finished = False
    try:
        for want in range(cfg.episodes):
            while want not in pending:
                try:
                    i, episode = results.get(timeout=5.0)
                except queue_module.Empty:
                    if not any(p.is_alive() for p in procs):
                        raise ValueError("all collection workers exited before sending every episode.") from None
                    continue
                if i < 0:
                    raise ValueError(f"a collection worker failed: {episode}")
                pending[i] = episode
            yield want, pending.pop(want)
        finished = True
    finally:
        for p in procs:
            if finished:  # otherwise (an error, Ctrl-C) the workers' episodes are not wanted
                p.join(timeout=10.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)


class _WholeAppends:
    """Ctrl-C during an append takes effect once the episode is appended, so that it is
    kept whole; elsewhere it interrupts at once, as usual."""

    def __init__(self) -> None:
        self.appending = self.pending = self._installed = False

    def _on_sigint(self, signum, frame) -> None:
        if not self.appending:
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self) -> "_WholeAppends":
        self._installed = take_sigint(self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        give_back_sigint(self._installed)

    @contextlib.contextmanager
    def append(self):
        self.appending = True
        try:
            yield
        finally:
            self.appending = False
        if self.pending:
            raise KeyboardInterrupt


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    """Roll out ``cfg.episodes`` episodes into ``cfg.out``, continuing the seeds of the
    recipe's earlier runs there. Ctrl-C keeps the episodes already appended, says how
    many and how to continue on stderr, and re-raises."""
    check_ranges(cfg)
    _check(cfg)
    env = make_env(cfg.env)
    store: Store | None = None
    before = first = 0
    episodes: Iterable[tuple[int, dict]] = ()
    closed = False
    try:
        policies = EpisodePolicies(cfg, env)
        _, info = env.reset(seed=cfg.seed)
        store = open_or_create(cfg.out, cfg.env, env, info.get("sim_state") if cfg.save_sim_state else None)
        before, first = store.num_episodes, first_index(store, cfg)
        sim_keys = store.sim_state_keys()
        if cfg.ray:
            from agent.distributed.collect import RayEpisodes

            episodes = RayEpisodes(cfg, sim_keys, first)
        elif cfg.num_envs > 1:
            episodes = _episodes_from_workers(cfg, sim_keys, first)
        else:
            episodes = ((i, rollout_episode(env, policies.for_episode(i, first), cfg.seed + first + i, sim_keys))
                        for i in range(cfg.episodes))
        returns, successes, shown = [], [], []
        digest = recipe_hash(cfg)
        with _WholeAppends() as guard:
            for i, episode in tqdm(episodes, total=cfg.episodes, desc=f"collect {cfg.env}", disable=None if progress else True):
                with guard.append():
                    store.append_episode(episode, EpisodeAttrs(
                        source=policies.source, generator_hash=digest, quality=cfg.quality, seed=cfg.seed + first + i,
                        checkpoint=cfg.policy if policies.source == "policy" else ""))
                returns.append(float(episode["reward"].sum()))
                successes.append(episode["success"])
                if cfg.video and i < cfg.video_episodes:
                    shown.append((cfg.seed + first + i, episode["action"]))
        if cfg.video:
            from agent.video import replay_video

            replay_video(env, shown, cfg.video)
    except KeyboardInterrupt:
        _close(episodes, env, store)
        closed = True
        if store is not None:
            kept = Store.open(cfg.out).num_episodes - before  # what the store committed, read back
            start = cfg.seed + first
            seeds = f"seeds {start}..{start + kept - 1}" if kept else "none"
            restart = (f" (its {cfg.schedule} noise schedule starts over from its first value, over those episodes)"
                       if schedule_restarts(cfg) else "")
            print(f"agent collect: interrupted; kept {kept} of {cfg.episodes} episodes in {cfg.out} ({seeds}); "
                  f"to continue, run the same command with --episodes {cfg.episodes - kept}: its seeds start at "
                  f"{start + kept}{restart}.", file=sys.stderr, flush=True)
        raise
    finally:
        if not closed:
            _close(episodes, env, store)
    return {"store": cfg.out, "episodes": store.num_episodes, "steps": store.num_steps,
            "collected": cfg.episodes, "kept": store.num_episodes - before, "first_seed": cfg.seed + first,
            "return_mean": float(np.mean(returns)), "success_rate": float(np.mean(successes)),
            **({"video": cfg.video} if cfg.video else {}),
            **({"schedule_note": _schedule_note(cfg, cfg.seed + first)} if first and schedule_restarts(cfg) else {})}


def _close(episodes, env, store: Store | None) -> None:
    """Stop the workers (a generator's ``close``), then close the env and the store."""
    close = getattr(episodes, "close", None)
    if close is not None:
        close()
    env.close()
    if store is not None:
        store.close()  # trims chunks grown ahead and releases the writer lock


def open_or_create(path: str, env_id: str, env, sim_state: dict | None) -> Store:
    if Store.holds_data(path):
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
