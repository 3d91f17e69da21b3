"""``agent finetune --actor-learner``: the actor and the learner in separate processes
(docs/ros2.md, "Timing").

The **actor** (a child process: a fresh interpreter) owns the env. It acts with a CPU
copy of the policy on a tick schedule (``control_rate`` Hz, absolute deadlines, no
catching up after a late tick), streams every transition to the learner, and swaps in
new weights only between steps. As in the loop, a robot env's ``executed_action`` (what
was actually sent) is the stored action and its ``step_record`` values are stored with
the step. It also runs the evaluations, deterministic episodes on the same env at the eval
cadence (a robot has one arm), once the training episode in progress has ended. It
measures each tick: the period error against the nominal period (jitter, p50/p99) and
missed ticks (nominal slots that passed without a tick). A control rate of 0 leaves
pacing to the env: sims run unpaced, and an env that paces itself (``paces_itself`` or
``single_instance``, the ``robot/`` envs) is measured against its own rate.

The **learner** (the calling process) builds what the single-process loop builds, with
the loop's own functions, except the env: it never makes one (that would be a second
client of the arm); the actor describes its env in its first message. Per environment
step received it owes one update (K = ``utd`` critic updates, after the warm-up, as in
the loop), appends whole episodes to the store with the loop's lineage, logs and
checkpoints like the loop, and every ``weight_push_seconds`` sends new actor weights
once the actor has taken the previous ones. A learner that falls behind owes updates
and makes them late (or not at all: updates owed when the step budget is reached are
skipped and counted), never slowing the actor.

How they talk: two one-way pipes. actor -> learner: ``hello`` (the env's spaces),
``step`` (one transition with its episode, index in the episode, global step and the
weight version that chose it), ``abandon`` (an unfinished episode is dropped),
``eval``, ``timing``, ``budget`` (the step budget is reached: send final weights),
``done``, ``error``. The actor's control loop only offers messages to a bounded queue
that a thread sends; when the learner does not keep up the queue fills and messages are
dropped and counted; an episode with a dropped step is not stored. learner -> actor:
``start`` (the policy, weight version 0, where to start), ``weights`` and ``stop``,
read by a thread of the actor.

Shutdown: at the step budget (the unfinished episode is dropped, then the final
evaluation with the final weights), on SIGINT (either process; both stop, the learner
checkpoints at the last whole episode as the loop does on Ctrl-C, prints how many online
episodes it kept and the resume command, and the run ends as interrupted, as in the
loop), at ``max_minutes``, and when either process dies: the survivor notices the closed
pipe, prints one line and stops. A SIGINT that is ignored when the run starts (``cmd &``
in a script) or handled by the caller is left so, in both processes.

Resuming works as in the loop: a checkpoint (written at episode ends) holds the loop
state and the next training episode's index; the actor restarts there.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agent.collect import config_hash
from agent.config import save_yaml
from agent.finetune.config import FinetuneConfig, loop_setting
from agent.finetune.data import BatchSource
from agent.finetune.diagnostics import heldout_td_error, q_calibration
from agent.finetune.loop import (Checkpoints, LoopState, _to_tensors, build_run, interrupted_message, nothing_to_do,
                                  offline_phase, resolve_run)
from agent.finetune.regime import log_decision, summary_entry
from agent.interrupts import give_back_sigint, owns_sigint, take_sigint
from agent.logger import MetricsLogger
from agent.nets import act
from agent.store import EpisodeAttrs, Store

OUTBOX_CAPACITY = 10_000  # messages the actor holds for a slow learner (over 8 minutes at 20 Hz)
FINAL_WEIGHTS_TIMEOUT_S = 120.0  # how long the actor waits for the final weights at the step budget
ACTOR_STOP_TIMEOUT_S = 30.0  # how long the learner waits for a stopped actor before terminating it
EVAL_SEED = 10_000  # evaluation episode i resets with EVAL_SEED + i, as agent eval does


class ActorDied(ValueError):
    """The actor process died; a ValueError so that the CLI reports it in one line."""


class _LearnerGone(Exception):
    """The learner's end of a pipe closed."""


class _StoppedOffline(Exception):
    """SIGINT during the offline phase: the run ends before the actor starts acting."""


# -- the actor's clock --------------------------------------------------------------------
class TickClock:
    """Absolute-deadline ticks at ``period`` seconds (``pace``: sleep to each deadline;
    otherwise the env sets the pace and the period is only the reference). A tick that
    comes late is not made up for: the schedule continues from the slot it fell into and
    the slots skipped count as missed. ``restart()`` at every episode start (resets are
    not control ticks)."""

    def __init__(self, period: float | None, pace: bool):
        if pace and not period:
            raise ValueError("a paced clock needs a period.")
        self.period, self.pace = period, pace
        self.periods = array("d")  # seconds between consecutive ticks of an episode
        self.lateness = array("d")  # tick start minus its slot's time (with a reference period)
        self.ticks = self.missed = 0
        self._t0: float | None = None
        self._last = 0.0
        self._slot = 0
        self._marks = (0, 0, 0, 0)  # sizes at the last window report

    def restart(self) -> None:
        self._t0 = None

    def wait(self) -> None:
        """Block until this tick's slot (when pacing) and record the tick."""
        now = time.perf_counter()
        self.ticks += 1
        if self._t0 is None:
            self._t0, self._last, self._slot = now, now, 0
            return
        if self.period is not None:
            if self.pace:
                deadline = self._t0 + (self._slot + 1) * self.period
                if now < deadline:
                    time.sleep(deadline - now)
                    now = time.perf_counter()
            slot = max(self._slot + 1, int((now - self._t0) / self.period))
            self.missed += slot - self._slot - 1
            self.lateness.append(now - (self._t0 + slot * self.period))
            self._slot = slot
        self.periods.append(now - self._last)
        self._last = now

    def _stats(self, periods: np.ndarray, lateness: np.ndarray, ticks: int, missed: int) -> dict[str, float]:
        out = {"ticks": float(ticks), "missed_ticks": float(missed),
               "missed_fraction": missed / (ticks + missed) if ticks + missed else 0.0}
        if periods.size:
            out.update(period_mean_ms=1e3 * float(periods.mean()), period_p50_ms=1e3 * float(np.percentile(periods, 50)))
        if periods.size and self.period is not None:
            error = np.abs(periods - self.period)
            out.update(jitter_p50_ms=1e3 * float(np.percentile(error, 50)), jitter_p99_ms=1e3 * float(np.percentile(error, 99)),
                       jitter_max_ms=1e3 * float(error.max()), late_p99_ms=1e3 * float(np.percentile(lateness, 99)))
        return out

    def summary(self) -> dict[str, float]:
        """Statistics of the whole run."""
        return self._stats(np.frombuffer(self.periods), np.frombuffer(self.lateness), self.ticks, self.missed)

    def window(self) -> dict[str, float]:
        """Statistics since the previous call."""
        p, q, t, m = self._marks
        self._marks = (len(self.periods), len(self.lateness), self.ticks, self.missed)
        return self._stats(np.frombuffer(self.periods)[p:], np.frombuffer(self.lateness)[q:], self.ticks - t, self.missed - m)


# -- the actor's two pipe ends ---------------------------------------------------------------
class _Outbox:
    """Messages to the learner: ``offer`` never blocks (a full queue drops the message and
    counts it), a thread does the sending; ``broken`` once the learner's end closed."""

    def __init__(self, conn, capacity: int) -> None:
        self._conn = conn
        self._queue: queue.Queue = queue.Queue(capacity)
        self.dropped: dict[str, int] = {}
        self.broken = False
        self._thread = threading.Thread(target=self._send_all, name="actor-outbox", daemon=True)
        self._thread.start()

    def offer(self, msg: tuple) -> None:
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self.dropped[msg[0]] = self.dropped.get(msg[0], 0) + 1

    def put(self, msg: tuple, timeout: float) -> bool:
        """Blocking put, for messages after the control loop has ended."""
        try:
            self._queue.put(msg, timeout=timeout)
            return True
        except queue.Full:
            return False

    def _send_all(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            try:
                self._conn.send(msg)
            except (OSError, ValueError):
                self.broken = True
                return

    def flush_and_close(self, timeout: float) -> None:
        if self.put(None, timeout):  # type: ignore[arg-type]
            self._thread.join(timeout)
        self._conn.close()


class _Inbox:
    """Messages from the learner, read by a thread: the latest weights wait in a slot for
    the control loop to take between steps; ``stop_reason`` and ``gone`` are flags."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._weights: tuple | None = None
        self.stop_reason: str | None = None
        self.gone = False
        self._thread = threading.Thread(target=self._receive, name="actor-inbox", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self.gone = True
                return
            if msg[0] == "weights":
                with self._lock:
                    self._weights = msg
            elif msg[0] == "stop":
                self.stop_reason = msg[1]

    def take_weights(self) -> tuple | None:
        with self._lock:
            weights, self._weights = self._weights, None
        return weights


# -- the actor process -----------------------------------------------------------------------
@dataclass
class ActorSettings:
    """What the actor process needs from the config (picklable)."""

    env_id: str
    env_kwargs: dict  # --env-kwargs, for training and evaluation
    sim_gap: dict  # --sim-gap, for training only
    seed: int
    steps: int
    control_rate: float
    warmup_steps: int
    warmup_policy: str
    eval_every: int
    eval_episodes: int
    log_every: int
    handle_sigint: bool = True  # False: SIGINT stays ignored (the learner's was ignored or a caller's own)


@dataclass
class EnvDescription:
    """The actor's env as the learner needs it; stands in for the env in
    :func:`agent.finetune.loop.open_online_store`: spaces, rate, and in ``sim_state``
    the per-step values the store keeps (sim state, a robot's step record) at reset."""

    observation_space: Any
    action_space: Any
    control_rate: float | None
    sim_state: dict | None
    defines_success: bool

    @property
    def unwrapped(self) -> EnvDescription:
        return self

    def reset(self, seed: int | None = None) -> tuple[None, dict]:
        return None, ({"sim_state": self.sim_state} if self.sim_state else {})


def _paces_itself(env) -> bool:
    unwrapped = env.unwrapped
    return bool(getattr(unwrapped, "paces_itself", getattr(unwrapped, "single_instance", False)))


class _Actor:
    def __init__(self, settings: ActorSettings, env, eval_env, outbox: _Outbox, inbox: _Inbox, start: dict,
                 interrupted: threading.Event):
        self.s, self.env, self.eval_env = settings, env, eval_env
        self.outbox, self.inbox, self.interrupted = outbox, inbox, interrupted
        modules = pickle.loads(start["policy"])
        self.policy, self.normalizer = modules["actor"].eval(), modules["normalizer"].eval()
        self.version = 0
        self.versions_used: set[int] = set()
        self.env_steps, self.episode = int(start["env_steps"]), int(start["episode"])
        self.rng = np.random.default_rng([settings.seed, 1])
        env_rate = getattr(env.unwrapped, "control_rate", None)
        if _paces_itself(env):
            if settings.control_rate > 0 and env_rate and abs(settings.control_rate - env_rate) > 0.01 * env_rate:
                raise ValueError(f"{settings.env_id} keeps its own control rate of {env_rate:g} Hz; pass --control-rate "
                                 f"{env_rate:g} or 0, found {settings.control_rate:g}.")
            self.clock = TickClock(1.0 / env_rate if env_rate else None, pace=False)
        else:
            self.clock = TickClock(1.0 / settings.control_rate if settings.control_rate > 0 else None,
                                   pace=settings.control_rate > 0)

    def act(self, obs, deterministic: bool) -> np.ndarray:
        return np.asarray(act(self.policy, self.normalizer, obs, deterministic, torch.device("cpu")), np.float32)

    def swap_weights(self) -> bool:
        """Between steps only: load the newest weights the learner sent, if any; True
        when they were the final ones."""
        msg = self.inbox.take_weights()
        if msg is None:
            return False
        _, version, state, final = msg
        self.policy.load_state_dict({k: torch.from_numpy(v) for k, v in state["actor"].items()})
        self.normalizer.load_state_dict({k: torch.from_numpy(v) for k, v in state["normalizer"].items()})
        self.version = version
        return bool(final)

    def stop_reason(self) -> str | None:
        if self.inbox.gone or self.outbox.broken:
            raise _LearnerGone(f"the learner process is gone (its pipe closed); the actor stopped after {self.env_steps} "
                               f"environment steps, dropping the unfinished episode.")
        if self.interrupted.is_set():
            return "interrupted"
        return self.inbox.stop_reason

    def training_episode(self) -> str | None:
        """One episode (or until a stop or the budget); returns the stop reason, if any."""
        s, env = self.s, self.env
        low, high = env.action_space.low, env.action_space.high
        obs, info = env.reset(seed=s.seed * 1_000_003 + self.episode)
        self.clock.restart()
        t = 0
        while True:
            reason = self.stop_reason()
            if reason is not None or self.env_steps >= s.steps:
                if t:
                    self.outbox.offer(("abandon", {"episode": self.episode}))
                return reason
            self.clock.wait()
            if self.env_steps < s.warmup_steps and s.warmup_policy == "random":
                action = self.rng.uniform(low, high).astype(np.float32)
            else:
                action = self.act(obs, deterministic=False)
            record = {k: np.asarray(v, np.float64).ravel() for k, v in (info.get("sim_state") or {}).items()}
            next_obs, reward, terminated, truncated, info = env.step(action)
            # a robot env reports the action it actually sent (after the safety layer or an operator's
            # takeover) and per-step values (step_record): those are what is stored, as in the loop
            record.update({k: np.asarray(v, np.float64).ravel() for k, v in info.get("step_record", {}).items()})
            executed = np.asarray(info.get("executed_action", action), np.float32)
            self.env_steps += 1
            self.versions_used.add(self.version)
            step = {"env_steps": self.env_steps, "episode": self.episode, "t": t, "obs": np.asarray(obs, np.float32),
                    "action": executed, "reward": float(reward), "terminated": bool(terminated),
                    "truncated": bool(truncated), "record": record, "weight_version": self.version}
            ended = bool(terminated or truncated)
            if ended:
                step.update(final_obs=np.asarray(next_obs, np.float32), success=bool(info.get("success", False)))
            self.outbox.offer(("step", step))
            if self.env_steps % s.log_every == 0:
                self.outbox.offer(("timing", self.timing(window=True)))
            self.swap_weights()
            obs, t = next_obs, t + 1
            if ended:
                self.episode += 1
                return None

    def evaluate(self) -> None:
        """``eval_episodes`` deterministic episodes; no weight swap inside them."""
        episodes = []
        for i in range(self.s.eval_episodes):
            obs, info = self.eval_env.reset(seed=EVAL_SEED + i)
            self.clock.restart()
            seen, actions, rewards, done = [], [], [], False
            while not done:
                if self.stop_reason() is not None:
                    return
                self.clock.wait()
                action = self.act(obs, deterministic=True)
                seen.append(np.asarray(obs, np.float32))
                actions.append(action)
                obs, reward, terminated, truncated, info = self.eval_env.step(action)
                rewards.append(float(reward))
                done = bool(terminated or truncated)
            episodes.append({"return": float(np.sum(rewards)), "length": len(rewards), "success": bool(info.get("success", False)),
                             "obs": np.stack(seen), "action": np.stack(actions), "reward": np.asarray(rewards),
                             "final_obs": np.asarray(obs, np.float32), "truncated": bool(truncated and not terminated)})
        self.outbox.offer(("eval", {"env_steps": self.env_steps, "weight_version": self.version, "episodes": episodes}))

    def timing(self, window: bool) -> dict:
        stats = self.clock.window() if window else self.clock.summary()
        return {"env_steps": self.env_steps, "weight_version": float(self.version),
                "dropped_messages": float(sum(self.outbox.dropped.values())), **stats}

    def final_weights(self) -> None:
        """At the step budget: ask for the final weights and wait for them (the control
        loop is over, so waiting is allowed)."""
        self.outbox.put(("budget", {"env_steps": self.env_steps}), timeout=FINAL_WEIGHTS_TIMEOUT_S)
        waited = time.monotonic()
        while time.monotonic() - waited < FINAL_WEIGHTS_TIMEOUT_S:
            if self.stop_reason() is not None or self.swap_weights():
                return
            time.sleep(0.01)
        print(f"agent finetune (actor): no final weights from the learner within {FINAL_WEIGHTS_TIMEOUT_S:g} s; "
              f"the final evaluation uses weight version {self.version}.", file=sys.stderr, flush=True)

    def run(self, eval_first: bool) -> str:
        s = self.s
        if self.env_steps >= s.steps:  # a resumed run that had finished
            return "budget"
        pending_eval = eval_first and s.eval_episodes > 0
        reason: str | None = None
        while reason is None and self.env_steps < s.steps:
            if pending_eval:
                self.evaluate()
                pending_eval = False
            before = self.env_steps
            reason = self.training_episode()
            if s.eval_episodes > 0 and before // s.eval_every != self.env_steps // s.eval_every:
                pending_eval = True
            reason = reason or self.stop_reason()
        if reason is None:
            self.final_weights()
            if s.eval_episodes > 0 and self.stop_reason() is None:
                self.evaluate()  # the loop evaluates at the step budget too
            reason = self.stop_reason() or "budget"
        return reason


def actor_main(settings: ActorSettings, data_conn, control_conn) -> None:
    """Entry point of the actor process."""
    from agent.envs import make_env

    interrupted = threading.Event()
    if settings.handle_sigint:
        signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    torch.set_num_threads(1)  # one small policy: one thread keeps its latency steady
    outbox = _Outbox(data_conn, OUTBOX_CAPACITY)
    env = eval_env = None
    code = 0
    try:
        env = make_env(settings.env_id, **settings.env_kwargs, **settings.sim_gap)
        single = bool(getattr(env.unwrapped, "single_instance", False))
        # evaluation uses the nominal env, as in the loop, unless the env is the only one there is
        eval_env = env if single or not settings.sim_gap else make_env(settings.env_id, **settings.env_kwargs)
        _, info = env.reset(seed=0)
        record = {**(info.get("sim_state") or {}), **info.get("step_record", {})}
        outbox.offer(("hello", EnvDescription(env.observation_space, env.action_space,
                                              getattr(env.unwrapped, "control_rate", None),
                                              {k: np.asarray(v, np.float64).ravel() for k, v in record.items()} or None,
                                              bool(getattr(env.unwrapped, "defines_success", False)))))
        while not control_conn.poll(0.1):  # the offline phase (RO2O) may take a while
            if interrupted.is_set():
                raise KeyboardInterrupt
        try:
            start = control_conn.recv()
        except (EOFError, OSError):
            raise _LearnerGone("the learner process is gone before the actor started; the actor stopped.") from None
        if start[0] == "stop":
            raise KeyboardInterrupt
        actor = _Actor(settings, env, eval_env, outbox, _Inbox(control_conn), start[1], interrupted)
        reason = actor.run(eval_first=bool(start[1]["eval_first"]))
        outbox.put(("done", {"reason": reason, "versions_used": sorted(actor.versions_used),
                             "dropped": dict(outbox.dropped), **actor.timing(window=False)}), timeout=10.0)
    except _LearnerGone as exc:
        print(f"agent finetune (actor): {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except (ValueError, ConnectionError) as exc:  # bad settings, an unknown env, an arm that went away
        outbox.put(("error", f"{type(exc).__name__}: {exc}" if isinstance(exc, ConnectionError) else str(exc)), timeout=5.0)
        code = 1
    finally:
        for e in {id(x): x for x in (env, eval_env) if x is not None}.values():
            e.close()
        outbox.flush_and_close(timeout=10.0)
    sys.exit(code)


def actor_entry(argv: list[str]) -> None:
    """``python -c`` entry of the actor process: settings as JSON, then the file
    descriptors of its two pipe ends (inherited from the learner)."""
    settings = ActorSettings(**json.loads(argv[0]))
    data_conn = Connection(int(argv[1]), readable=False)
    control_conn = Connection(int(argv[2]), writable=False)
    actor_main(settings, data_conn, control_conn)


class _ActorProcess:
    """The actor as a child process: a fresh interpreter (no fork of a process that has
    started torch's threads, and unlike multiprocessing's spawn, no re-run of the
    caller's main script), given only its two pipe ends."""

    def __init__(self, settings: ActorSettings):
        self.data_recv, data_send = Pipe(duplex=False)
        control_recv, self.control_send = Pipe(duplex=False)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        fds = (data_send.fileno(), control_recv.fileno())
        self._popen = subprocess.Popen(
            # SIGINT is ignored until actor_main installs its handler: a Ctrl-C during the imports
            # would otherwise end the child with a traceback (the learner stops it in order instead)
            [sys.executable, "-c", ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                    "from agent.finetune.actor_learner import actor_entry; actor_entry(sys.argv[1:])"),
             json.dumps(dataclasses.asdict(settings)), *map(str, fds)], pass_fds=fds, env=env)
        data_send.close()  # the actor holds the only writing end now: its death closes the pipe
        control_recv.close()

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # like Process.join: returns, alive or not
            self._popen.wait(timeout)

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()


# -- the learner -------------------------------------------------------------------------------
@dataclass
class _Episode:
    index: int = -1
    start_step: int = 0  # env steps before its first step
    broken: bool = False
    steps: dict[str, list] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)


def _eval_metrics(env_id: str, learner, episodes: list[dict], defines_success: bool, heldout: dict | None) -> dict[str, float]:
    """The metrics of ``evaluate_with_diagnostics`` from episodes the actor ran."""
    from agent.evaluate import summarize

    result = summarize(env_id, episodes, defines_success)
    result.update(q_calibration(learner, episodes))
    if heldout is not None:
        result["heldout_td_error"] = heldout_td_error(learner, heldout)
    return {k: v for k, v in result.items() if isinstance(v, float)}


class _Learner:
    """The learner's side of the run: receive, update, push weights, store, log."""

    def __init__(self, cfg: FinetuneConfig, learner, store: Store, logger: MetricsLogger, source: BatchSource, rng,
                 state: LoopState, env_id: str, heldout: dict | None, fit_normalizer_on_warmup: bool,
                 description: EnvDescription, proc, data_recv, control_send, next_episode: int, progress: bool,
                 checkpoints: Checkpoints | None = None):
        self.cfg, self.learner, self.store, self.logger, self.source, self.rng = cfg, learner, store, logger, source, rng
        self.checkpoints = checkpoints or Checkpoints(cfg, learner, logger, rng, state, env_id)
        self.state, self.env_id, self.heldout, self.description = state, env_id, heldout, description
        self.fit_normalizer_on_warmup = fit_normalizer_on_warmup
        self.proc, self.data_recv, self.control_send = proc, data_recv, control_send
        self.warmup, self.utd = loop_setting(cfg, "warmup_steps"), loop_setting(cfg, "utd")
        self.sim_keys = store.sim_state_keys()
        self.gen_hash = config_hash(cfg)
        self.next_episode = next_episode
        self.episode = _Episode()
        self.unfinished: _Episode | None = None  # the episode the actor abandoned when it stopped
        self.owed = self.skipped_updates = self.dropped_episodes = 0
        self.steps_owing = 0  # env steps past the warm-up since this process started, each owing an update
        self.updates_at_start = state.updates  # a resumed run counts its own session
        self.pushed_version = self.actor_version = 0
        self.updates_at_push = state.updates
        self.last_push = time.monotonic()
        self.last_update: dict = {}
        self.update_time, self.update_calls = 0.0, 0
        self.metrics: dict[str, float] = {}
        self.next_checkpoint = (state.env_steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        self.stopping: str | None = None
        self.stop_sent_at = 0.0
        self.budget_reached = self.done = self.actor_gone = False
        self.actor_final: dict = {}
        self.bar = tqdm(total=cfg.steps, initial=state.env_steps, desc=f"finetune {cfg.algo} (actor-learner)",
                        disable=None if progress else True)

    # -- messages from the actor
    def receive(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if not self.data_recv.poll(0):
                return
            try:
                msg = self.data_recv.recv()
            except (EOFError, OSError):
                self.actor_gone = True
                return
            getattr(self, f"on_{msg[0]}")(msg[1])

    def on_step(self, m: dict) -> None:
        ep = self.episode
        if m["episode"] != ep.index:
            if ep.index >= 0 and ep.steps.get("obs"):  # the previous episode's end never arrived
                self.dropped_episodes += 1
            self.next_episode = max(self.next_episode, m["episode"])
            self.episode = ep = _Episode(m["episode"], m["env_steps"] - m["t"] - 1, broken=m["t"] != 0,
                                         steps={k: [] for k in ("obs", "action", "reward", "terminated", "truncated", *self.sim_keys)})
        elif m["t"] != len(ep.steps["obs"]):
            ep.broken = True  # a step in between was dropped
        for k in ("obs", "action", "reward", "terminated", "truncated"):
            ep.steps[k].append(m[k])
        for k in self.sim_keys:
            if k in m["record"]:
                ep.steps[k].append(m["record"][k])
        ep.versions.append(m["weight_version"])
        self.actor_version = m["weight_version"]
        self.state.env_steps = m["env_steps"]
        if self.state.env_steps > self.warmup and self.source.ready():
            self.owed += 1
            self.steps_owing += 1
        if "final_obs" in m:
            self.end_episode(m)
        if self.state.env_steps % self.cfg.log_every == 0 and self.last_update:
            self.log_train()
        if "final_obs" in m and self.state.env_steps >= self.next_checkpoint:
            self.checkpoint()
            self.next_checkpoint = (self.state.env_steps // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        self.bar.update(self.state.env_steps - self.bar.n)

    def end_episode(self, m: dict) -> None:
        ep, self.episode = self.episode, _Episode()
        self.next_episode = m["episode"] + 1
        if ep.broken:
            self.dropped_episodes += 1
            return
        s = ep.steps
        episode = {"obs": np.asarray(s["obs"], np.float32), "action": np.asarray(s["action"], np.float32),
                   "reward": np.asarray(s["reward"], np.float32), "terminated": np.asarray(s["terminated"], bool),
                   "truncated": np.asarray(s["truncated"], bool), "final_obs": np.asarray(m["final_obs"], np.float32),
                   "success": bool(m["success"]), **{f"sim_state/{k}": np.asarray(s[k]) for k in self.sim_keys}}
        self.state.episode_rows.append(self.store.append_episode(episode, EpisodeAttrs(
            source="online", checkpoint=f"{self.state.run_id}@{self.state.env_steps}", generator_hash=self.gen_hash,
            quality=self.cfg.algo, seed=self.cfg.seed * 1_000_003 + ep.index)))
        self.source.online.add_episode(episode)
        self.logger.log(self.state.env_steps, {"return": float(episode["reward"].sum()), "success": float(episode["success"]),
                                               "weight_version_first": float(ep.versions[0]),
                                               "weight_version_last": float(ep.versions[-1])}, prefix="train_episode/")

    def on_abandon(self, m: dict) -> None:
        if self.episode.index == m["episode"]:
            self.unfinished, self.episode = self.episode, _Episode()

    def on_eval(self, m: dict) -> None:
        metrics = _eval_metrics(self.env_id, self.learner, m["episodes"], self.description.defines_success, self.heldout)
        metrics["weight_version"] = float(m["weight_version"])
        self.logger.log(m["env_steps"], metrics, prefix="eval/")
        self.metrics.update({f"eval_{k}": v for k, v in metrics.items()})

    def on_timing(self, m: dict) -> None:
        self.logger.log(m["env_steps"], {k: v for k, v in m.items() if k != "env_steps"}, prefix="actor/")

    def on_budget(self, m: dict) -> None:
        self.budget_reached = True
        self.skipped_updates += self.owed
        self.owed = 0
        self.push(final=True)

    def on_done(self, m: dict) -> None:
        self.done = True
        self.actor_final = m

    def on_error(self, message: str) -> None:
        raise ValueError(f"the actor stopped: {message}")

    # -- learning
    def update(self) -> None:
        state, source, learner = self.state, self.source, self.learner
        if self.fit_normalizer_on_warmup and state.updates == 0:
            data = source.online.arrays["obs"][: source.online.size]
            learner.fit_normalizer(data.mean(0), data.var(0))  # from-scratch runs without offline data
        start = time.perf_counter()
        self.last_update = learner.update(_to_tensors(source.sample(self.utd, self.cfg.batch_size), learner.device))
        self.update_time += time.perf_counter() - start
        self.update_calls += 1
        state.updates += 1
        self.owed -= 1
        if state.first_update_step < 0:
            state.first_update_step = state.env_steps

    def log_train(self) -> None:
        metrics = {k: float(v) for k, v in self.last_update.items()}
        metrics["updates_per_s"] = self.utd * self.update_calls / self.update_time if self.update_time > 0 else 0.0
        metrics["online_transitions"] = float(self.source.online.size)
        metrics["updates_owed"] = float(self.owed)
        metrics["utd_delivered"] = self.delivered_utd()
        metrics["weight_version_pushed"] = float(self.pushed_version)
        self.logger.log(self.state.env_steps, metrics, prefix="train/")
        self.metrics.update(metrics)
        self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("q_mean", "alpha", "updates_owed") if k in metrics})
        self.update_time, self.update_calls = 0.0, 0

    def delivered_utd(self) -> float:
        """Critic updates made per env step past the warm-up (``utd`` when the learner keeps
        up, less when it falls behind): what the run actually trained at."""
        return self.utd * (self.state.updates - self.updates_at_start) / self.steps_owing if self.steps_owing else 0.0

    def push(self, final: bool = False) -> None:
        state = {name: {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
                 for name, module in (("actor", self.learner.actor), ("normalizer", self.learner.normalizer))}
        try:
            self.control_send.send(("weights", self.pushed_version + 1, state, final))
        except (OSError, ValueError):
            self.actor_gone = True
            return
        self.pushed_version += 1
        self.updates_at_push, self.last_push = self.state.updates, time.monotonic()

    def maybe_push(self) -> None:
        # one weights message in flight at most: the actor must have taken the last one
        if (not self.stopping and not self.budget_reached and self.state.updates > self.updates_at_push
                and self.actor_version == self.pushed_version
                and time.monotonic() - self.last_push >= self.cfg.weight_push_seconds):
            self.push()

    def request_stop(self, reason: str) -> None:
        if self.stopping is None:
            self.stopping, self.stop_sent_at = reason, time.monotonic()
            try:
                self.control_send.send(("stop", reason))
            except (OSError, ValueError):
                self.actor_gone = True

    def checkpoint(self, stopped: bool = False) -> None:
        """As the loop checkpoints (``stopped``: set back to the last whole episode, :meth:`Checkpoints.save`)."""
        self.checkpoints.save({"actor_learner": {"next_episode": self.next_episode}}, stopped=stopped)

    def run(self, interrupted: threading.Event) -> None:
        deadline = time.monotonic() + 60 * self.cfg.max_minutes if self.cfg.max_minutes > 0 else float("inf")
        while not self.done:
            self.receive()
            if self.done:
                break
            if self.actor_gone or (not self.proc.is_alive() and not self.data_recv.poll(0)):
                self.actor_gone = True
                break
            if interrupted.is_set():
                self.request_stop("interrupted")
            elif time.monotonic() > deadline:
                self.request_stop("the wall-clock budget (max_minutes) is spent")
            if self.stopping and time.monotonic() - self.stop_sent_at > ACTOR_STOP_TIMEOUT_S:
                break
            if self.owed > 0 and not self.stopping and not self.budget_reached:
                self.update()
            else:
                self.data_recv.poll(0.05)
            self.maybe_push()
        self.bar.close()
        unfinished = self.episode if self.episode.steps.get("obs") else self.unfinished
        if unfinished is not None:  # dropped, as in the loop: a resumed run redoes it from its reset seed
            self.next_episode = unfinished.index
            if not self.budget_reached:
                self.state.env_steps = unfinished.start_step
        self.checkpoint(stopped=not self.budget_reached)


def finetune_actor_learner(cfg: FinetuneConfig, resume: bool = False, progress: bool = True, make_source=None,
                           decision: dict | None = None) -> dict:
    """:func:`agent.finetune.loop.finetune` with the actor in its own process (``cfg.actor_learner``)."""
    if not np.isfinite(cfg.control_rate) or cfg.control_rate < 0:
        raise ValueError(f"--control-rate must be a rate in Hz >= 0 (0: the env sets the pace), found {cfg.control_rate}.")
    if not np.isfinite(cfg.weight_push_seconds) or cfg.weight_push_seconds <= 0:
        raise ValueError(f"--weight-push-seconds must be a positive number of seconds, found {cfg.weight_push_seconds}.")
    if cfg.calibration_horizon > 0:
        raise ValueError("--calibration-horizon runs extra evaluation episodes in a simulator the learner makes, which the "
                         "actor-learner split does not do; set --calibration-horizon 0 or drop --actor-learner.")
    if cfg.eval_episodes > 0 and cfg.eval_every <= 0:
        raise ValueError(f"--eval-every must be a positive number of steps when evaluating, found {cfg.eval_every}.")
    plan = resolve_run(cfg, resume)
    idle = nothing_to_do(cfg, plan)
    if idle is not None:
        return idle
    run_dir = plan.run_dir
    handle_sigint = owns_sigint()  # an ignored SIGINT (cmd &) or a caller's handler is left alone, in both processes
    settings = ActorSettings(env_id=plan.env_id, env_kwargs=plan.env_kwargs, sim_gap=plan.gap, seed=cfg.seed, steps=cfg.steps, control_rate=cfg.control_rate,
                             warmup_steps=int(loop_setting(cfg, "warmup_steps")),
                             warmup_policy=str(loop_setting(cfg, "warmup_policy")), eval_every=cfg.eval_every,
                             eval_episodes=cfg.eval_episodes, log_every=cfg.log_every, handle_sigint=handle_sigint)
    proc = _ActorProcess(settings)
    data_recv, control_send = proc.data_recv, proc.control_send
    interrupted = threading.Event()
    installed = False
    store: Store | None = None
    logger: MetricsLogger | None = None
    side: _Learner | None = None
    try:
        description = _wait_for_hello(proc, data_recv)
        obs_dim = int(np.prod(description.observation_space.shape))
        act_dim = int(np.prod(description.action_space.shape))
        parts = build_run(cfg, plan, obs_dim, act_dim, description, resume, make_source)
        learner, rng, source, state, store, cfg = parts.learner, parts.rng, parts.source, parts.state, parts.store, parts.cfg
        heldout = parts.heldout
        next_episode = 0
        if parts.ckpt is not None:
            next_episode = int(parts.ckpt.get("actor_learner", {}).get("next_episode", len(state.episode_rows)))
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        logger = MetricsLogger(run_dir, resume_step=state.env_steps if resume else None)
        log_decision(logger, decision, resume)
        checkpoints = Checkpoints(cfg, learner, logger, rng, state, plan.env_id, plan.env_kwargs, on_disk=parts.ckpt)
        summary: dict = {}
        if handle_sigint:
            # from here on SIGINT stops both processes in order instead of raising mid-update
            installed = take_sigint(lambda *_: interrupted.set())
        if state.offline_updates < cfg.offline_steps:
            summary.update(offline_phase(cfg, learner, source, logger, rng, state, plan.env_id, progress, interrupted,
                                         checkpoints))
        if interrupted.is_set():
            raise _StoppedOffline
        if hasattr(learner, "start_online"):
            learner.start_online()
        side = _Learner(cfg, learner, store, logger, source, rng, state, plan.env_id, heldout,
                        parts.from_scratch, description, proc, data_recv, control_send,
                        next_episode, progress, checkpoints)
        policy = pickle.dumps({"actor": copy.deepcopy(learner.actor).cpu(), "normalizer": copy.deepcopy(learner.normalizer).cpu()})
        control_send.send(("start", {"policy": policy, "env_steps": state.env_steps, "episode": next_episode,
                                     "eval_first": state.env_steps == 0}))
        side.run(interrupted)
        summary.update(side.metrics)
    except _StoppedOffline:
        pass  # interrupted in the offline phase, which has checkpointed; the actor never started
    finally:
        give_back_sigint(installed)
        _stop_actor(proc, control_send)
        for closable in (logger, store):
            if closable is not None:
                closable.close()
        data_recv.close()

    online_store = Path(cfg.online_store) if cfg.online_store else run_dir / "online.zarr"
    if side is None:  # interrupted in the offline phase
        summary = {"run": str(run_dir), "algo": cfg.algo, "env_steps": state.env_steps, "updates": state.updates,
                   "offline_updates": state.offline_updates, "online_episodes": len(state.episode_rows),
                   "offline_draws": source.offline_draws, "first_update_step": state.first_update_step,
                   "resumed": resume, "actor_learner": True, **summary, "interrupted": True}
        (run_dir / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
        print(interrupted_message(run_dir, online_store, cfg.offline_steps), file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    final = side.actor_final
    actor_summary = {k: final[k] for k in ("ticks", "missed_ticks", "missed_fraction", "period_mean_ms", "period_p50_ms",
                                           "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms", "late_p99_ms") if k in final}
    actor_summary.update(dropped=final.get("dropped", {}), versions_used=final.get("versions_used", []),
                         stop_reason=final.get("reason", "died" if side.actor_gone else "unknown"),
                         exit_code=proc.exitcode)
    summary = {"run": str(run_dir), "algo": cfg.algo, "env_steps": state.env_steps, "updates": state.updates,
               "offline_updates": state.offline_updates, "online_episodes": len(state.episode_rows),
               "offline_draws": source.offline_draws, "first_update_step": state.first_update_step, "resumed": resume,
               "actor_learner": True,
               "skipped_updates": side.skipped_updates + side.owed, "dropped_episodes": side.dropped_episodes,
               "utd_configured": float(side.utd), "utd_delivered": side.delivered_utd(),
               "weight_versions_pushed": side.pushed_version, "actor": actor_summary, **summary_entry(decision), **summary}
    interrupted_run = side.stopping == "interrupted" or final.get("reason") == "interrupted"
    if interrupted_run:
        summary["interrupted"] = True
    (run_dir / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
    if side.actor_gone and not side.done:
        raise ActorDied(f"the actor process died (exit code {proc.exitcode}) after {state.env_steps} environment steps; "
                        f"the learner checkpointed the run at its last whole episode and stopped (--resume continues it).")
    if interrupted_run:
        print(interrupted_message(run_dir, online_store, cfg.offline_steps), file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    return summary


def _wait_for_hello(proc, data_recv) -> EnvDescription:
    """The actor's first message: its env's description (or the error that stopped it)."""
    while not data_recv.poll(0.1):
        if not proc.is_alive():
            raise ActorDied(f"the actor process exited (code {proc.exitcode}) before describing its env; its error is above.")
    try:
        kind, body = data_recv.recv()
    except (EOFError, OSError):
        proc.join(5)
        raise ActorDied(f"the actor process exited (code {proc.exitcode}) before describing its env; "
                        f"its error is above.") from None
    if kind == "error":
        raise ValueError(f"the actor stopped: {body}")
    return body


def _stop_actor(proc, control_send) -> None:
    """Ask the actor to stop (a no-op when it already has), then make sure it has."""
    if proc.is_alive():
        with contextlib.suppress(OSError, ValueError):  # its end is closed: it is exiting
            control_send.send(("stop", "the learner stopped"))
        proc.join(10)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    control_send.close()
