"""``agent pretrain``: offline training of a learner on a store's transitions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from agent.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from agent.config import check_ranges, option, save_yaml, section, to_dict
from agent.envs import is_registered
from agent.evaluate import env_sizes, evaluate
from agent.interrupts import give_back_sigint, take_sigint
from agent.label import require_actions
from agent.learners import make_learner
from agent.learners import BCConfig, CalQLConfig, CQLConfig, IQLConfig, PRDCConfig, RIQLConfig, SACNConfig, TD3BCConfig
from agent.logger import MetricsLogger
from agent.seeding import seed_everything
from agent.store import Store, TransitionCache, load_transitions
from agent.trajectory_weights import Sampling, cache_probabilities
from agent.perf import tune_cpu_allocator


@dataclass
class PretrainConfig:
    data: str = option("", "store to train on")
    algo: Literal["bc", "iql", "riql", "cql", "calql", "td3bc", "prdc", "sacn"] = option("bc", "offline algorithm")
    out: str = option("", "run directory (config, checkpoints, metrics, TensorBoard)")
    env: str = option("", "gymnasium env id to evaluate in, with the store's observation and action sizes; empty means the "
                          "store's env, and no evaluation when that is not a registered env (an imported dataset)")
    steps: int = option(20_000, "gradient updates in total", min=1)
    batch_size: int = option(256, "transitions per update", min=1)
    seed: int = option(0, "seed for networks and sampling", min=0)
    eval_every: int = option(0, "evaluate in the simulator every this many updates (0: only at the end)", min=0)
    eval_episodes: int = option(5, "episodes per periodic evaluation (0: no evaluation)", min=0)
    checkpoint_every: int = option(5_000, "save checkpoints/latest.pt and a step-numbered copy every this many updates", min=1)
    log_every: int = option(250, "write training metrics every this many updates", min=1)
    device: str = option("cpu", "torch device; auto picks cuda when torch sees one", pattern="device")
    compile: bool = option(False, "torch.compile the learner's update (first updates are slow while it compiles)")
    autocast: Literal["none", "bf16"] = option("none", "run forward and backward passes under bfloat16 autocast")
    sampling: Sampling = option("uniform", "how transitions are drawn: uniform, or weighted by their episode's return or advantage (agent/trajectory_weights.py)")
    sampling_temperature: float = option(0.1, "weighted sampling: episodes' scores (0 to 1) are divided by this before exp", gt=0)
    cuda_graph: bool = option(False, "capture the update as one CUDA graph on the first batch (CUDA only; see agent/learners/graphed.py)")
    bc: BCConfig = section(BCConfig, "behaviour cloning settings")
    iql: IQLConfig = section(IQLConfig, "IQL settings")
    riql: RIQLConfig = section(RIQLConfig, "RIQL settings")
    cql: CQLConfig = section(CQLConfig, "CQL settings")
    calql: CalQLConfig = section(CalQLConfig, "Cal-QL settings")
    td3bc: TD3BCConfig = section(TD3BCConfig, "TD3+BC settings")
    prdc: PRDCConfig = section(PRDCConfig, "PRDC settings")
    sacn: SACNConfig = section(SACNConfig, "SAC-N settings")


def algo_config(cfg: PretrainConfig):
    return getattr(cfg, cfg.algo)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but torch sees no CUDA device; use --device cpu.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was requested but torch sees {torch.cuda.device_count()} CUDA device(s); "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but torch sees no Apple GPU (MPS); use --device cpu.")
    return name


def to_tensors(batch: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


class BatchSource:
    """Uniform minibatches by index from the cache plus per-transition extras.

    On the CPU the indices come from the run's numpy generator (saved in checkpoints,
    so a resumed run draws the same batches). On an accelerator the cache is copied to
    device memory once and indices are drawn there by a device generator, so a batch
    never crosses the host bus; its state is saved as well."""

    def __init__(self, cache: TransitionCache, extras: dict[str, np.ndarray], device: str, rng: np.random.Generator,
                 on_device: bool | None = None, probs: np.ndarray | None = None):
        self.cache, self.extras, self.device, self.rng = cache, extras, device, rng
        self.on_device = torch.device(device).type != "cpu" if on_device is None else on_device
        # weighted sampling (agent.trajectory_weights): an index is where a uniform draw falls in the cumulative mass
        self.cdf = None if probs is None else np.cumsum(probs)
        if self.on_device:
            table = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
            self.tables = {"obs": table(cache.obs_table), "action": table(cache.action), "reward": table(cache.reward),
                           "terminated": table(cache.terminated), "truncated": table(cache.truncated),
                           **{k: table(v) for k, v in extras.items()}}
            self.next_index = table(cache.next_index)
            self.generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
            self.cdf_t = None if self.cdf is None else torch.as_tensor(self.cdf, device=device)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        last = self.cache.num_steps - 1
        if not self.on_device:
            if self.cdf is None:
                idx = self.rng.integers(0, self.cache.num_steps, size=batch_size)
            else:
                idx = np.minimum(np.searchsorted(self.cdf, self.rng.random(batch_size) * self.cdf[-1], side="right"), last)
            batch = {**self.cache.gather(idx), **{k: v[idx] for k, v in self.extras.items()}}
            return to_tensors(batch, self.device)
        if self.cdf_t is None:
            idx_t = torch.randint(0, self.cache.num_steps, (batch_size,), device=self.device, generator=self.generator)
        else:
            draw = torch.rand(batch_size, device=self.device, generator=self.generator, dtype=self.cdf_t.dtype) * self.cdf_t[-1]
            idx_t = torch.searchsorted(self.cdf_t, draw, right=True).clamp_(max=last)
        out = {k: t[idx_t] for k, t in self.tables.items()}
        out["next_obs"] = self.tables["obs"][self.next_index[idx_t]]
        return out

    def state(self) -> dict:
        return {"generator": self.generator.get_state()} if self.on_device else {}

    def load_state(self, state: dict) -> None:
        if self.on_device and "generator" in state:
            self.generator.set_state(state["generator"])


def make_update_fn(learner, cfg: PretrainConfig):
    """The learner's update, optionally compiled and under autocast."""
    device_type = torch.device(str(learner.device)).type
    if cfg.cuda_graph and (device_type != "cuda" or cfg.compile):
        raise ValueError(f"--cuda-graph captures the update on a CUDA device without --compile; got device "
                         f"{learner.device}{' with --compile' if cfg.compile else ''}.")
    update = torch.compile(learner.update) if cfg.compile else learner.update
    if cfg.autocast != "none":
        plain = update

        def update(batch):
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                return plain(batch)

    if cfg.cuda_graph:
        from agent.learners.graphed import GraphedUpdate

        return GraphedUpdate(update)
    return update


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the last whole step in the run's checkpoint."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"interrupted at step {step}, which {run_dir / 'checkpoints' / 'latest.pt'} holds")
        self.run_dir, self.step = run_dir, step


class _HoldInterrupt:
    """Holds SIGINT while a step (update, log line, checkpoint) is in flight, so that the
    checkpoint written on interrupt is a whole step; outside a step it interrupts at once."""

    def __init__(self):
        self.pending, self.in_step, self._installed = False, False, False

    def __enter__(self):
        self._installed = take_sigint(self._handle)
        return self

    def _handle(self, signum, frame):
        self.pending = True
        if not self.in_step:
            raise KeyboardInterrupt

    def step_done(self) -> None:
        self.in_step = False
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        give_back_sigint(self._installed)
        return False


def run(cfg: PretrainConfig, learner, source: BatchSource, logger: MetricsLogger, rng: np.random.Generator,
        start_step: int = 0, env_id: str | None = None, progress: bool = True, eval_env: str | None = None,
        env_kwargs: dict | None = None) -> dict:
    """Train ``learner`` from ``start_step`` to ``cfg.steps``, evaluating in ``eval_env`` made with
    ``env_kwargs`` (no ``eval_env``: no evaluation); returns the last metrics. On Ctrl-C the last whole step is checkpointed and
    :class:`TrainingInterrupted` raised."""
    env_id = env_id or source.cache.env_id
    metrics: dict[str, float] = {}
    update = make_update_fn(learner, cfg)

    def checkpoint(step: int) -> None:
        save_checkpoint(logger.run_dir, step, {
            "algo": cfg.algo, "algo_config": to_dict(algo_config(cfg)), "env_id": env_id,
            "env_kwargs": dict(env_kwargs or {}),
            "obs_dim": learner.obs_dim, "act_dim": learner.act_dim,
            "learner": learner.state_dict(), "rng": {**rng_state(rng), "sampler": source.state()},
        })

    done, saved = start_step, start_step
    if start_step == cfg.steps:  # trained to the end but interrupted before the final evaluation and summary
        if eval_env and cfg.eval_episodes > 0:
            result = evaluate(eval_env, lambda env: (lambda obs: learner.act(obs, deterministic=True)), cfg.eval_episodes,
                              env_kwargs=env_kwargs)
            logger.log(start_step, {k: result[k] for k in ("return_mean", "normalized_score", "success_rate")
                                    if result[k] is not None}, prefix="eval/")
            metrics = {f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}
        return metrics
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.algo}", disable=None if progress else True)
    try:
        with _HoldInterrupt() as hold:
            for step in range(start_step + 1, cfg.steps + 1):
                hold.in_step = True
                last_update = update(source.sample(cfg.batch_size))
                done = step
                last = step == cfg.steps
                if step % cfg.log_every == 0 or last:
                    metrics = {k: float(v) for k, v in last_update.items()}  # the only host sync
                    logger.log(step, metrics, prefix="train/")
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()})
                hold.step_done()
                if eval_env and cfg.eval_episodes > 0 and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
                    result = evaluate(eval_env, lambda env: (lambda obs: learner.act(obs, deterministic=True)), cfg.eval_episodes,
                                      env_kwargs=env_kwargs)
                    hold.in_step = True
                    logger.log(step, {k: result[k] for k in ("return_mean", "normalized_score", "success_rate")
                                      if result[k] is not None}, prefix="eval/")
                    metrics = {**metrics, **{f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}}
                    hold.step_done()
                if step % cfg.checkpoint_every == 0 or last:
                    hold.in_step = True
                    checkpoint(step)
                    saved = step
                    hold.step_done()
                bar.update(1)
    except KeyboardInterrupt:
        if done == 0:
            raise  # nothing trained, nothing to resume
        if done != saved:
            checkpoint(done)
        raise TrainingInterrupted(logger.run_dir, done) from None
    finally:
        bar.close()
    return metrics


def _evaluation_env(cfg: PretrainConfig, store: Store) -> tuple[str | None, str | None]:
    """The env evaluations run in (None: none) and, when there is none, a note saying why."""
    if cfg.env:
        sizes = env_sizes(cfg.env)  # refuses an unknown id with the known ones
        if sizes != (store.obs_dim, store.action_dim):
            raise ValueError(
                f"--env {cfg.env} has observations of size {sizes[0]} and actions of size {sizes[1]}, but store "
                f"{cfg.data!r} holds observations of size {store.obs_dim} and actions of size {store.action_dim}; "
                f"choose an env of the store's sizes.")
        return cfg.env, None
    if cfg.eval_episodes == 0:
        return None, None
    if not is_registered(store.env_id):
        return None, (f"not evaluated: the store's env id {store.env_id!r} is not a registered environment; "
                      f"pass --env ID to evaluate in one with observations of size {store.obs_dim} and actions of size "
                      f"{store.action_dim}")
    sizes = env_sizes(store.env_id, dict(store.attrs.get("env_kwargs") or {}))
    if sizes != (store.obs_dim, store.action_dim):
        raise ValueError(
            f"store {cfg.data!r} has observations of size {store.obs_dim} and actions of size {store.action_dim}, "
            f"but {store.env_id} has {sizes[0]} and {sizes[1]}.")
    return store.env_id, None


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Open the store, build the learner, restore a checkpoint when resuming, and train.

    Observation and action sizes come from the store, so an imported dataset trains
    without a simulator; evaluation runs in ``cfg.env`` or the store's env when that is
    a registered one, and is skipped (with a note in the result) otherwise."""
    tune_cpu_allocator()
    check_ranges(cfg)
    if not cfg.data:
        raise ValueError("pretrain needs --data (a store written by `agent collect` or `agent import`).")
    if not cfg.out:
        raise ValueError("pretrain needs --out (the run directory).")
    run_dir = Path(cfg.out)
    device = resolve_device(cfg.device)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir)
        if ckpt.get("algo") != cfg.algo:
            raise ValueError(f"cannot resume: {run_dir}'s checkpoint is for {ckpt.get('algo')!r}, not {cfg.algo!r}.")
        if cfg.steps < int(ckpt["step"]):
            raise ValueError(f"cannot resume: run {str(run_dir)!r} is already at step {ckpt['step']}, past --steps "
                             f"{cfg.steps}; pass --steps above {ckpt['step']} to train further (the run is unchanged).")
        if cfg.steps == int(ckpt["step"]) and (run_dir / "pretrain_summary.json").exists():
            return {"run": str(run_dir), "steps": cfg.steps, "resumed_from": cfg.steps,
                    "note": f"nothing to do: the run is already at step {cfg.steps}; pass a larger --steps to train further"}
    elif (run_dir / "checkpoints" / "latest.pt").exists():
        raise ValueError(f"run directory {str(run_dir)!r} already holds a checkpoint; pass --resume to continue it or choose another --out.")
    store = Store.open(cfg.data)
    obs_dim, act_dim = store.obs_dim, store.action_dim
    if ckpt is not None and (ckpt["obs_dim"], ckpt["act_dim"]) != (obs_dim, act_dim):
        raise ValueError(f"cannot resume: {run_dir}'s checkpoint has observations of size {ckpt['obs_dim']} and actions of "
                         f"size {ckpt['act_dim']}, but store {cfg.data!r} holds {obs_dim} and {act_dim}.")
    eval_env, note = _evaluation_env(cfg, store)
    # the store's env arguments (an imported dataset's time limit) belong to the store's env, not to --env
    env_kwargs = {} if cfg.env else dict(store.attrs.get("env_kwargs") or {})
    require_actions(store)
    cache = load_transitions(store)
    rng = seed_everything(cfg.seed)
    learner = make_learner(cfg.algo, algo_config(cfg), obs_dim, act_dim, device=device)
    obs = cache.obs
    learner.fit_normalizer(obs.mean(0), obs.var(0))
    probs = cache_probabilities(cache, cfg.sampling, cfg.sampling_temperature)
    source = BatchSource(cache, learner.prepare(cache) if hasattr(learner, "prepare") else {}, device, rng, probs=probs)
    start = 0
    if ckpt is not None:
        try:
            learner.load_state_dict(ckpt["learner"])
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"cannot resume: {run_dir}'s checkpoint does not match the {cfg.algo} networks of this "
                             f"config (were network settings changed?): {exc}") from None
        restore_rng(ckpt["rng"], rng)
        source.load_state(ckpt["rng"].get("sampler", {}))
        start = int(ckpt["step"])
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, resume_step=start if resume else None)
    try:
        metrics = run(cfg, learner, source, logger, rng, start_step=start, env_id=cfg.env or store.env_id,
                      progress=progress, eval_env=eval_env, env_kwargs=env_kwargs)
    finally:
        logger.close()
    summary = {"run": str(run_dir), "steps": cfg.steps, "resumed_from": start if resume else None, **metrics}
    if note:
        summary["note"] = note
    (run_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
