"""``agent collect --ray ADDRESS --actors N``: N Ray actors roll out episodes; this process
is the store's one writer and appends them in episode order, so a store collected on Ray
holds the same episodes as one collected by ``--num-envs N`` or by one process.

Episode i goes to actor i mod N. An actor that dies is restarted by Ray and its episodes
are rolled out again (they are determined by their seeds, so nothing differs); an episode
that does not arrive within ``episode_timeout`` seconds stops the collection with an
error instead of a hang.
"""
from __future__ import annotations

import time
from typing import Iterator

from agent.config import from_dict, to_dict
from agent.distributed import connect

IN_FLIGHT_PER_ACTOR = 2  # queued episodes per actor: keeps each busy without holding many in memory


class Rollouts:
    """The actor: one env and the recipe's policies, rolling out episodes by index."""

    def __init__(self, cfg_dict: dict, first: int, sim_keys: list[str]):
        from agent.collect import CollectConfig, EpisodePolicies
        from agent.envs import make_env

        self.cfg = from_dict(CollectConfig, cfg_dict)
        self.env = make_env(self.cfg.env)
        self.policies = EpisodePolicies(self.cfg, self.env)
        self.first, self.sim_keys = first, sim_keys

    def rollout(self, i: int) -> dict:
        from agent.collect import rollout_episode

        return rollout_episode(self.env, self.policies.for_episode(i, self.first), self.cfg.seed + self.first + i,
                               self.sim_keys)

    def pid(self) -> int:
        import os

        return os.getpid()


class RayEpisodes:
    """Iterate (i, episode) in episode order from ``cfg.actors`` Ray actors; ``close()``
    stops them (and the cluster, when this started it)."""

    def __init__(self, cfg, sim_keys: list[str], first: int = 0, episode_timeout: float = 600.0):
        self.cfg, self.count = cfg, cfg.episodes
        self.episode_timeout = episode_timeout
        self.ray, self._started = connect(cfg.ray, cfg.actors)
        self.actors: list = []
        self._next = 0
        self._refs: dict = {}
        try:
            remote = self.ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(Rollouts)
            self.actors = [remote.remote(to_dict(cfg), first, sim_keys) for _ in range(cfg.actors)]
            for _ in range(IN_FLIGHT_PER_ACTOR * len(self.actors)):
                self._submit()
        except BaseException:
            self.close()  # the cluster this started must not outlive a failed start
            raise

    def _submit(self) -> None:
        if self._next < self.count:
            i = self._next
            self._refs[self.actors[i % len(self.actors)].rollout.remote(i)] = i
            self._next += 1

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        ready: dict[int, dict] = {}
        try:
            for want in range(self.count):
                deadline = time.monotonic() + self.episode_timeout
                while want not in ready:
                    done, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                    if not done:
                        raise ValueError(f"no episode from the Ray actors within {self.episode_timeout:.0f} s (waiting for "
                                         f"episode {want}); check the cluster (ray status) and rerun: the store keeps "
                                         f"the {want} episodes appended so far.")
                    i = self._refs.pop(done[0])
                    try:
                        ready[i] = self.ray.get(done[0])
                    except Exception as exc:  # the rollout itself failed (not a dead actor: Ray retries those)
                        raise ValueError(f"a Ray collection actor failed on episode {i}: {type(exc).__name__}: {exc}") from None
                    self._submit()
                yield want, ready.pop(want)
        finally:
            self.close()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started:
            self.ray.shutdown()
            self._started = False
