"""``agent finetune``: one online loop for every fine-tuning algorithm.

The loop interleaves environment steps and updates. What differs between algorithms is
data, not code: where a batch comes from (:class:`agent.finetune.data.BatchSource`:
online only, offline + online, real + sim), the warm-up (steps and who acts), the
update-to-data ratio K (one [K, B] draw, one ``learner.update``), and an optional
offline phase (RO2O) ended by ``learner.start_online()``.

Resuming: checkpoints are written at episode ends, so that the online buffer is
exactly this run's first ``len(episode_rows)`` episodes in the store; a resumed run
reloads them, the networks, optimizers and both RNG states, and continues from the
checkpointed step. Episodes a killed run appended after its last checkpoint stay in
the store under the same run id but are left out of the buffer (they are redone).
Ctrl-C stops the loop between steps (a second Ctrl-C interrupts at once, a long
evaluation) and the run resumes from the last episode end: the unfinished episode is
dropped and redone. When the newest checkpoint already sits at that episode end, nothing
is written. Otherwise ``latest.pt`` alone is rewritten (no step-numbered copy, so that
none is replaced by another state): its step and online episodes are those of the last
episode end, its networks, optimizers, both RNG states and update count those of the
moment the loop stopped. In the offline phase it holds the updates made so far.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.checkpoint import check_shapes, load_checkpoint, restore_rng, rng_state, save_checkpoint
from agent.collect import config_hash
from agent.config import from_dict, save_yaml, to_dict
from agent.envs import make_env, reference_returns
from agent.finetune.config import HYBRID, FinetuneConfig, loop_setting, parse_env_kwargs, parse_gap
from agent.label import require_actions
from agent.trajectory_weights import cache_probabilities
from agent.finetune.data import BatchSource, OnlineBuffer, split_heldout
from agent.finetune.diagnostics import evaluate_with_diagnostics, heldout_td_error
from agent.finetune.regime import log_decision, summary_entry
from agent.interrupts import give_back_sigint, take_sigint
from agent.learners import LEARNERS, make_learner
from agent.logger import MetricsLogger
from agent.seeding import seed_everything
from agent.store import EpisodeAttrs, Store, load_transitions
from agent.perf import tune_cpu_allocator


@dataclass
class LoopState:
    """Counters a checkpoint saves; everything else is rebuilt from them."""

    run_id: str = ""
    env_steps: int = 0
    updates: int = 0
    offline_updates: int = 0
    episode_rows: list[int] = field(default_factory=list)  # this run's episodes in the online store
    first_update_step: int = -1


def _to_tensors(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


class Checkpoints:
    """Writes a run's checkpoints and remembers where the newest one on disk sits, so that
    a stop never replaces a checkpoint with another state. ``env_kwargs`` are the env's
    keyword arguments evaluation runs with (``--env-kwargs``, no dynamics gap); ``on_disk``
    is the checkpoint a resumed run was loaded from."""

    def __init__(self, cfg: FinetuneConfig, learner, logger: MetricsLogger, rng, state: LoopState, env_id: str,
                 env_kwargs: dict | None = None, on_disk: dict | None = None):
        self.cfg, self.learner, self.logger, self.rng, self.state, self.env_id = cfg, learner, logger, rng, state, env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.saved = None if on_disk is None else self._place(
            on_disk["loop"], {k: on_disk[k] for k in ("actor_learner",) if k in on_disk})

    @staticmethod
    def _place(loop: dict, extra: dict) -> tuple:
        return (int(loop.get("offline_updates", 0)), int(loop["env_steps"]), len(loop["episode_rows"]),
                json.dumps(extra, sort_keys=True))

    def save(self, extra: dict | None = None, stopped: bool = False) -> bool:
        """Write the current state (with the payload entries ``extra``); True when written.
        ``stopped``: a run stopped early, its step set back to the last episode end: a
        checkpoint already there is kept, and otherwise only ``latest.pt`` is rewritten."""
        state, learner, extra = self.state, self.learner, extra or {}
        place = self._place(vars(state), extra)
        if stopped and place == self.saved:
            return False
        save_checkpoint(self.logger.run_dir, state.env_steps, {
            "algo": self.cfg.algo, "algo_config": to_dict(learner.cfg), "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs), "obs_dim": learner.obs_dim, "act_dim": learner.act_dim,
            "learner": learner.state_dict(), "rng": rng_state(self.rng),
            "loop": {**vars(state), "episode_rows": list(state.episode_rows)}, **extra,
        }, keep_step_copy=not stopped)
        self.saved = place
        return True


class StopRequest:
    """SIGINT as a request that the loop honours between steps, so that it checkpoints a
    consistent state; a second Ctrl-C raises KeyboardInterrupt at once (a long evaluation)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._installed = False

    def _request(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> StopRequest:
        self._installed = take_sigint(self._request)
        return self

    def __exit__(self, *exc) -> None:
        give_back_sigint(self._installed)


def offline_phase(cfg: FinetuneConfig, learner, source: BatchSource, logger: MetricsLogger, rng, state: LoopState,
                  env_id: str, progress: bool = True, stop: threading.Event | None = None,
                  checkpoints: Checkpoints | None = None) -> dict:
    """``cfg.offline_steps`` updates on offline data only (RO2O pretraining itself); a set
    ``stop`` (or Ctrl-C) ends it early with a checkpoint."""
    checkpoints = checkpoints or Checkpoints(cfg, learner, logger, rng, state, env_id)
    metrics: dict = {}
    bar = tqdm(total=cfg.offline_steps, initial=state.offline_updates, desc=f"offline {cfg.algo}", disable=None if progress else True)
    try:
        while state.offline_updates < cfg.offline_steps:
            if stop is not None and stop.is_set():
                checkpoints.save(stopped=True)
                break
            metrics = learner.update(_to_tensors(source.sample(1, cfg.batch_size, offline_only=True), learner.device))
            state.offline_updates += 1
            if state.offline_updates % cfg.checkpoint_every == 0:
                checkpoints.save()
            bar.update(1)
    except KeyboardInterrupt:
        checkpoints.save(stopped=True)
        raise
    finally:
        bar.close()
    return {f"offline_{k}": float(v) for k, v in metrics.items()}


def run(cfg: FinetuneConfig, learner, env, store: Store, logger: MetricsLogger, *, source: BatchSource,
        rng: np.random.Generator, state: LoopState, eval_env_id: str, heldout: dict | None = None,
        fit_normalizer_on_warmup: bool = False, progress: bool = True, eval_env_kwargs: dict | None = None,
        stop: threading.Event | None = None, checkpoints: Checkpoints | None = None) -> dict:
    """Fine-tune ``learner`` online from ``state.env_steps`` to ``cfg.steps``; returns the last metrics.

    A set ``stop`` (or a KeyboardInterrupt) ends the run between steps: the unfinished
    episode is dropped and a resumed run continues at the last episode end, from the
    checkpoint written there or else from the state at the stop, written to ``latest.pt``
    only (:meth:`Checkpoints.save`; a KeyboardInterrupt is re-raised after it).

    An env with ``single_instance`` (a robot: there is one arm) is also the evaluation env;
    its evaluations wait for the end of the running episode. An env whose step ``info``
    holds ``executed_action`` (a robot: after the safety layer or an operator's takeover)
    has that action stored, and its ``step_record`` values go to the store's per-step
    ``sim_state/<name>`` arrays."""
    warmup, utd = loop_setting(cfg, "warmup_steps"), loop_setting(cfg, "utd")
    warmup_policy = loop_setting(cfg, "warmup_policy")
    checkpoints = checkpoints or Checkpoints(cfg, learner, logger, rng, state, eval_env_id, eval_env_kwargs)
    act_low, act_high = env.action_space.low, env.action_space.high
    sim_keys = store.sim_state_keys()
    gen_hash = config_hash(cfg)
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes > 0 else float("inf")
    metrics: dict[str, float] = {}
    last_update: dict = {}
    update_time, update_calls = 0.0, 0
    shared = bool(getattr(env.unwrapped, "single_instance", False))
    eval_due = -1  # shared env: the step of an evaluation waiting for the episode to end

    def evaluate(step: int) -> None:
        nonlocal metrics
        result = evaluate_with_diagnostics(eval_env_id, learner, cfg.eval_episodes, env=env if shared else None,
                                           env_kwargs=eval_env_kwargs, calibration_horizon=0 if shared else cfg.calibration_horizon,
                                           calibration_episodes=cfg.calibration_episodes)
        if heldout is not None:
            result["heldout_td_error"] = heldout_td_error(learner, heldout)
        logger.log(step, {k: v for k, v in result.items() if isinstance(v, float)}, prefix="eval/")
        metrics = {**metrics, **{f"eval_{k}": v for k, v in result.items() if isinstance(v, float)}}

    last_end = state.env_steps  # the step of the last stored episode's end: where an interrupted run checkpoints
    bar = tqdm(total=cfg.steps, initial=state.env_steps, desc=f"finetune {cfg.algo}", disable=None if progress else True)
    try:
        if state.env_steps == 0 and cfg.eval_episodes > 0:
            evaluate(0)  # the offline start
        episode = len(state.episode_rows)
        obs, info = env.reset(seed=cfg.seed * 1_000_003 + episode)
        steps: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "terminated", "truncated", *sim_keys)}
        next_checkpoint = (state.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        while state.env_steps < cfg.steps and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            if state.env_steps < warmup and warmup_policy == "random":
                action = rng.uniform(act_low, act_high).astype(np.float32)
            else:
                action = np.asarray(learner.act(obs, deterministic=False), np.float32)
            pre_step = info.get("sim_state", {})
            for k in sim_keys:
                if k in pre_step:
                    steps[k].append(np.asarray(pre_step[k], np.float64).ravel())
            next_obs, reward, terminated, truncated, info = env.step(action)
            for k, v in info.get("step_record", {}).items():
                if k in steps:
                    steps[k].append(np.asarray(v, np.float64).ravel())
            if "executed_action" in info:
                action = np.asarray(info["executed_action"], np.float32)
            for k, v in (("obs", obs), ("action", action), ("reward", reward), ("terminated", terminated), ("truncated", truncated)):
                steps[k].append(v)
            obs = next_obs
            state.env_steps += 1
            eval_step = cfg.eval_episodes > 0 and (state.env_steps % cfg.eval_every == 0 or state.env_steps == cfg.steps)
            if shared and eval_step:
                eval_due = state.env_steps
            if terminated or truncated:
                ep = {"obs": np.asarray(steps["obs"], np.float32), "action": np.asarray(steps["action"], np.float32),
                      "reward": np.asarray(steps["reward"], np.float32), "terminated": np.asarray(steps["terminated"], bool),
                      "truncated": np.asarray(steps["truncated"], bool), "final_obs": np.asarray(obs, np.float32),
                      "success": bool(info.get("success", False)),
                      **{f"sim_state/{k}": np.asarray(steps[k]) for k in sim_keys}}
                state.episode_rows.append(store.append_episode(ep, EpisodeAttrs(
                    source="online", checkpoint=f"{state.run_id}@{state.env_steps}", generator_hash=gen_hash,
                    quality=cfg.algo, seed=cfg.seed * 1_000_003 + episode)))
                last_end = state.env_steps
                source.online.add_episode(ep)
                logger.log(state.env_steps, {"return": float(ep["reward"].sum()), "success": float(ep["success"])},
                           prefix="train_episode/")
                episode += 1
                if eval_due >= 0:  # before the next reset: evaluation takes the one arm between episodes
                    evaluate(eval_due)
                    eval_due = -1
                obs, info = env.reset(seed=cfg.seed * 1_000_003 + episode)
                steps = {k: [] for k in steps}
            if state.env_steps > warmup and source.ready():
                if fit_normalizer_on_warmup and state.updates == 0:
                    data = source.online.arrays["obs"][: source.online.size]
                    learner.fit_normalizer(data.mean(0), data.var(0))  # from-scratch runs without offline data
                start = time.perf_counter()
                last_update = learner.update(_to_tensors(source.sample(utd, cfg.batch_size), learner.device))
                update_time += time.perf_counter() - start
                update_calls += 1
                state.updates += 1
                if state.first_update_step < 0:
                    state.first_update_step = state.env_steps
            if state.env_steps % cfg.log_every == 0 and last_update:
                metrics = {k: float(v) for k, v in last_update.items()}  # the host sync, once per log interval
                metrics["updates_per_s"] = utd * update_calls / update_time if update_time > 0 else 0.0
                metrics["online_transitions"] = float(source.online.size)
                logger.log(state.env_steps, metrics, prefix="train/")
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("q_mean", "alpha") if k in metrics})
                update_time, update_calls = 0.0, 0
            if eval_step and not shared:
                evaluate(state.env_steps)
            if not steps["obs"] and state.env_steps >= next_checkpoint:  # an episode just ended: the buffer is whole
                checkpoints.save()
                next_checkpoint = (state.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        state.env_steps = last_end  # the unfinished episode is dropped and its steps redone on resume
        checkpoints.save(stopped=True)
        raise
    bar.close()
    if stop is not None and stop.is_set():
        state.env_steps = last_end  # as for a KeyboardInterrupt; no final evaluation
        checkpoints.save(stopped=True)
        return metrics
    if eval_due >= 0:
        evaluate(eval_due)
    # the unfinished episode is dropped: a resumed run redoes it from its reset seed
    checkpoints.save()
    return metrics


def _flag_value(value) -> str:
    """A config value as it is written on the command line."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def algo_config(cfg: FinetuneConfig, init_ckpt: dict | None):
    """The algorithm's settings the learner is built with: the config's section, with what
    the ``--init`` checkpoint fixes taken from it (WSRL: the network sizes; a run of the same
    algorithm: all of it). A setting given that differs from the checkpoint's is refused:
    one equal to its default cannot be told from an unset one and is replaced silently."""
    asked = getattr(cfg, cfg.algo)
    algo_cfg = asked
    if cfg.algo == "wsrl":
        if init_ckpt is None:
            raise ValueError("WSRL fine-tunes a pretrained policy: pass --init RUN (a Cal-QL or CQL run).")
        from agent.learners.wsrl import matching_config

        algo_cfg = matching_config(asked, init_ckpt["algo"], init_ckpt["algo_config"])
    elif init_ckpt is not None and init_ckpt["algo"] == cfg.algo:
        algo_cfg = from_dict(LEARNERS[cfg.algo][1], init_ckpt["algo_config"])
    elif init_ckpt is not None:
        raise ValueError(f"--init holds a {init_ckpt['algo']!r} run; {cfg.algo} can start only from a {cfg.algo} run "
                         f"(or from scratch without --init).")
    if cfg.algo == "ro2o" and algo_cfg.ood_lambda_updates == 0:
        # lambda decays over the offline phase: a 100k-update decay cut short at 5k updates left lambda at 0.95,
        # and its drop to the online 0.1 at the switch made Q jump from 8 to 30 within 250 updates
        algo_cfg = replace(algo_cfg, ood_lambda_updates=max(cfg.offline_steps, 1))
    if init_ckpt is not None:
        default = type(asked)()
        for f in dataclasses.fields(asked):
            mine, taken = getattr(asked, f.name), getattr(algo_cfg, f.name)
            if mine != taken and mine != getattr(default, f.name):
                flag = f"--{cfg.algo}.{f.name.replace('_', '-')}"
                if init_ckpt["algo"] != cfg.algo and f.name not in init_ckpt["algo_config"]:  # WSRL: a CQL actor has no LayerNorm
                    raise ValueError(f"{flag} {_flag_value(mine)} cannot be used: {cfg.algo} fine-tuning of the "
                                     f"{init_ckpt['algo']} checkpoint {cfg.init!r} needs {_flag_value(taken)} for its "
                                     f"networks to load; drop {flag}.")
                raise ValueError(f"{flag} {_flag_value(mine)} differs from the {_flag_value(taken)} of the --init "
                                 f"checkpoint {cfg.init!r}, which fine-tuning takes from it; drop {flag} or pass an "
                                 f"--init run trained with {_flag_value(mine)}.")
    return algo_cfg


def _build_learner(cfg: FinetuneConfig, obs_dim: int, act_dim: int, device: str, init_ckpt: dict | None):
    learner = make_learner(cfg.algo, algo_config(cfg, init_ckpt), obs_dim, act_dim, device=device)
    if init_ckpt is not None:
        if hasattr(learner, "load_pretrained"):
            learner.load_pretrained(init_ckpt["learner"])
        else:
            learner.load_state_dict(init_ckpt["learner"])
    return learner


def open_online_store(path: Path, env_id: str, env, gap: dict) -> Store:
    if path.exists() and any(path.iterdir()):
        store = Store.open(path, mode="a")
        if store.env_id != env_id:
            raise ValueError(f"online store {str(path)!r} holds {store.env_id} episodes, not {env_id}; choose another --online-store.")
        return store
    _, info = env.reset(seed=0)
    sim_state = {**(info.get("sim_state") or {}), **info.get("step_record", {})}
    return Store.create(path, env_id=env_id, observation_space=env.observation_space, action_space=env.action_space,
                        control_rate=getattr(env.unwrapped, "control_rate", None), env_kwargs=gap or None,
                        reference_returns=reference_returns(env_id),
                        sim_state_dims={k: int(np.asarray(v).size) for k, v in sim_state.items()} if sim_state else None)


@dataclass
class RunPlan:
    """What a fine-tuning run is, resolved and checked from its config before anything is built."""

    run_dir: Path
    init_ckpt: dict | None
    env_id: str
    device: str
    gap: dict
    env_kwargs: dict
    resume_ckpt: dict | None = None  # the run's own latest checkpoint, when resuming


def resolve_run(cfg: FinetuneConfig, resume: bool) -> RunPlan:
    """The run directory, the ``--init`` checkpoint (or None), the env id, the device and
    the env's keyword arguments (dynamics gap apart), checked before anything is built
    or written: the step budget against the warm-up and, when resuming, against the
    checkpointed step, and the algorithm's settings against the ``--init`` checkpoint."""
    if not cfg.out:
        raise ValueError("finetune needs --out (the run directory).")
    run_dir = Path(cfg.out)
    if not resume and (run_dir / "checkpoints" / "latest.pt").exists():
        raise ValueError(f"run directory {str(run_dir)!r} already holds a checkpoint; pass --resume to continue it or choose another --out.")
    resume_ckpt = None
    if resume:
        resume_ckpt = load_checkpoint(run_dir)
        if resume_ckpt.get("algo") != cfg.algo:
            raise ValueError(f"cannot resume: {run_dir}'s checkpoint is for {resume_ckpt.get('algo')!r}, not {cfg.algo!r}.")
        done = int(resume_ckpt["loop"]["env_steps"])
        if cfg.steps < done:
            raise ValueError(f"--steps must be at least the run's current step {done} to resume it, found {cfg.steps}; "
                             f"pass --steps above {done} to continue it (or choose another --out to start over).")
    warmup = int(loop_setting(cfg, "warmup_steps"))
    if cfg.steps <= warmup:
        raise ValueError(f"--steps must be above the warm-up of {warmup} environment steps (no update happens before "
                         f"step {warmup + 1}), found {cfg.steps}; raise --steps or lower --warmup-steps.")
    init_ckpt = load_checkpoint(cfg.init) if cfg.init else None
    env_id = cfg.env or (init_ckpt or {}).get("env_id", "")
    if not env_id:
        raise ValueError("finetune needs --env (or --init RUN, whose env is used).")
    algo_config(cfg, init_ckpt)  # refuses settings the checkpoint overrides, before anything is written
    from agent.pretrain import resolve_device

    return RunPlan(run_dir, init_ckpt, env_id, resolve_device(cfg.device), parse_gap(cfg.sim_gap),
                   parse_env_kwargs(cfg.env_kwargs), resume_ckpt)


def nothing_to_do(cfg: FinetuneConfig, plan: RunPlan) -> dict | None:
    """For a resumed run already at ``cfg.steps`` (offline phase included): the result to
    report instead of running, with nothing on disk touched; None when there is work."""
    ckpt = plan.resume_ckpt
    if ckpt is None:
        return None
    loop = ckpt["loop"]
    if int(loop["env_steps"]) < cfg.steps or int(loop.get("offline_updates", 0)) < cfg.offline_steps:
        return None
    return {"run": str(plan.run_dir), "algo": cfg.algo, "env_steps": int(loop["env_steps"]), "updates": int(loop["updates"]),
            "online_episodes": len(loop["episode_rows"]), "resumed": True,
            "status": f"nothing to do: the run is already at step {cfg.steps}; pass --steps above {cfg.steps} to continue it"}


def used_config(cfg: FinetuneConfig, plan: RunPlan, learner) -> FinetuneConfig:
    """``cfg`` with what the run took from elsewhere filled in: the env and offline data of
    the ``--init`` run and the algorithm's settings the learner was built with."""
    data = cfg.data or ("" if cfg.real_data else _pretrained_data(cfg.init))
    return replace(cfg, env=plan.env_id, data=data, **{cfg.algo: learner.cfg})


def interrupted_message(run_dir: Path, online_store: Path, offline_steps: int = 0) -> str:
    """What an interrupted run left on disk, read back from its checkpoint, and how to go on;
    ``offline_steps``: the length of the offline phase."""
    try:
        ckpt = load_checkpoint(run_dir)
    except ValueError:
        return (f"agent finetune: stopped before the first checkpoint; nothing to resume: run the same command "
                f"again without --resume.")
    loop = ckpt.get("loop", {})
    offline = int(loop.get("offline_updates", 0))
    if offline < offline_steps:
        return (f"agent finetune: stopped in the offline phase and checkpointed after {offline} of {offline_steps} "
                f"offline updates; resume with: agent finetune --out {shlex.quote(str(run_dir))} --resume")
    return (f"agent finetune: stopped and checkpointed at step {ckpt['step']}; {len(loop.get('episode_rows', []))} "
            f"online episodes of this run are kept in {online_store} (an unfinished episode is dropped and redone); "
            f"resume with: agent finetune --out {shlex.quote(str(run_dir))} --resume")


@dataclass
class RunParts:
    """What :func:`build_run` makes for a loop: the learner, its batch source and held-out
    slice, the online store, the loop counters, the checkpoint a resumed run came from, and
    the config as used (what ``config.yaml`` holds)."""

    learner: object
    rng: np.random.Generator
    source: BatchSource
    heldout: dict | None
    from_scratch: bool  # no --init and no offline data: the normalizer is fitted on the warm-up
    state: LoopState
    store: Store
    ckpt: dict | None
    cfg: FinetuneConfig


def build_run(cfg: FinetuneConfig, plan: RunPlan, obs_dim: int, act_dim: int, env, resume: bool,
              make_source=None) -> RunParts:
    """Learner, data, online store and (when resuming) the restored checkpoint, the same
    for the in-process loop and the actor/learner split. ``env`` (or an env description
    with the same spaces) shapes a new online store."""
    run_dir, init_ckpt, env_id = plan.run_dir, plan.init_ckpt, plan.env_id
    if init_ckpt is not None:
        check_shapes(init_ckpt, obs_dim, act_dim, env_id, repr(cfg.init))
    rng = seed_everything(cfg.seed)
    learner = _build_learner(cfg, obs_dim, act_dim, plan.device, init_ckpt)
    data_path = cfg.real_data or cfg.data or _pretrained_data(cfg.init)
    if cfg.algo in HYBRID and not cfg.real_data and not cfg.data:
        raise ValueError(f"{cfg.algo.upper()} needs --real-data STORE (a dataset collected under the nominal, 'real' dynamics).")
    offline_store = Store.open(data_path) if data_path else None
    if offline_store is not None:
        require_actions(offline_store)
    offline = load_transitions(offline_store) if offline_store is not None else None
    train_steps = heldout = None
    if offline is not None:
        train_steps, heldout_steps = split_heldout(offline, cfg.heldout_fraction)
        if heldout_steps.size:
            pick = np.random.default_rng(12345).choice(heldout_steps, size=min(2048, heldout_steps.size), replace=False)
            heldout = _to_tensors(offline.gather(np.sort(pick)), learner.device)
        if init_ckpt is None:
            obs = offline.obs[train_steps]
            learner.fit_normalizer(obs.mean(0), obs.var(0))
    prepare = getattr(learner, "prepare", None)
    offline_probs = None if offline is None or train_steps is None else \
        cache_probabilities(offline, cfg.sampling, cfg.sampling_temperature, steps=train_steps.size)  # training episodes
    source = BatchSource(OnlineBuffer(obs_dim, act_dim, prepare=prepare), offline, train_steps,
                         float(loop_setting(cfg, "offline_ratio")), rng,
                         offline_extras=prepare(offline) if (prepare and offline is not None) else None,
                         mark_real=cfg.algo in HYBRID, offline_probs=offline_probs)
    if make_source is not None:
        source = make_source(source)
    if cfg.offline_steps and offline is None:
        raise ValueError("--offline-steps needs offline data: pass --data STORE.")

    state = LoopState(run_id=f"{run_dir.name}-{uuid.uuid4().hex[:8]}")
    store = open_online_store(Path(cfg.online_store) if cfg.online_store else run_dir / "online.zarr", env_id, env,
                              {**plan.env_kwargs, **plan.gap})
    ckpt = None
    if resume:
        ckpt = plan.resume_ckpt if plan.resume_ckpt is not None else load_checkpoint(run_dir)
        learner.load_state_dict(ckpt["learner"])
        restore_rng(ckpt["rng"], rng)
        state = LoopState(**ckpt["loop"])
        for row in state.episode_rows:
            source.online.add_episode(store.episode(row))
    return RunParts(learner, rng, source, heldout, init_ckpt is None and offline is None, state, store, ckpt,
                    used_config(cfg, plan, learner))


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True, make_source=None,
             decision: dict | None = None) -> dict:
    """Build env, learner, data and store from ``cfg``, restore a checkpoint when
    resuming, and run the loop. ``make_source`` lets tests wrap the batch source; ``decision``
    is an ``auto`` run's (:mod:`agent.finetune.regime`), logged and kept in the summary.
    Interrupted (Ctrl-C), the run checkpoints, prints what it kept and the command that
    resumes it on stderr, and re-raises KeyboardInterrupt."""
    plan = resolve_run(cfg, resume)
    idle = nothing_to_do(cfg, plan)
    if idle is not None:
        return idle
    tune_cpu_allocator()
    run_dir, env_id, env_kwargs = plan.run_dir, plan.env_id, plan.env_kwargs
    env = make_env(env_id, **env_kwargs, **plan.gap)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    try:
        parts = build_run(cfg, plan, obs_dim, act_dim, env, resume, make_source)
    except BaseException:
        env.close()
        raise
    learner, source, state, store, cfg = parts.learner, parts.source, parts.state, parts.store, parts.cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, resume_step=state.env_steps if resume else None)
    log_decision(logger, decision, resume)
    checkpoints = Checkpoints(cfg, learner, logger, parts.rng, state, env_id, env_kwargs, on_disk=parts.ckpt)
    interrupted = False
    try:
        summary: dict = {}
        with StopRequest() as stop:
            try:
                if state.offline_updates < cfg.offline_steps:
                    summary.update(offline_phase(cfg, learner, source, logger, parts.rng, state, env_id, progress, stop.event,
                                                 checkpoints))
                if not stop.event.is_set():
                    if hasattr(learner, "start_online"):
                        learner.start_online()
                    summary.update(run(cfg, learner, env, store, logger, source=source, rng=parts.rng, state=state,
                                       eval_env_id=env_id, heldout=parts.heldout, fit_normalizer_on_warmup=parts.from_scratch,
                                       eval_env_kwargs=env_kwargs, progress=progress, stop=stop.event,
                                       checkpoints=checkpoints))
            except KeyboardInterrupt:
                interrupted = True
            interrupted = interrupted or stop.event.is_set()
    finally:
        logger.close()
        store.close()
        env.close()
    summary = {"run": str(run_dir), "algo": cfg.algo, "env_steps": state.env_steps, "updates": state.updates,
               "offline_updates": state.offline_updates, "online_episodes": len(state.episode_rows),
               "offline_draws": source.offline_draws,
               "first_update_step": state.first_update_step, "resumed": resume, **summary_entry(decision), **summary}
    if interrupted:
        summary["interrupted"] = True
    (run_dir / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
    if interrupted:
        print(interrupted_message(run_dir, Path(cfg.online_store) if cfg.online_store else run_dir / "online.zarr",
                                  cfg.offline_steps), file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    return summary


def _pretrained_data(init: str) -> str:
    """The store a pretrained run was trained on, from its config.yaml."""
    if not init:
        return ""
    import yaml

    run_dir = Path(init) if Path(init).is_dir() else Path(init).parent.parent
    saved = run_dir / "config.yaml"
    return str(yaml.safe_load(saved.read_text()).get("data", "")) if saved.is_file() else ""
