"""Online fine-tuning: one loop for ``auto`` (regime-aware), WSRL, RO2O, H2O, IQL and the Cal-QL, RLPD and SAC baselines.

* :mod:`agent.finetune.config` -- :class:`FinetuneConfig` and each algorithm's loop defaults.
* :mod:`agent.finetune.regime` -- ``--algo auto``: keep or drop the offline data, measured.
* :mod:`agent.finetune.data` -- the online buffer and the [K, B] batch source.
* :mod:`agent.finetune.loop` -- :func:`run` (the loop) and :func:`finetune` (set-up, resume).
* :mod:`agent.finetune.actor_learner` -- the same with actor and learner in separate
  processes (``actor_learner: true``; docs/ros2.md, "Timing").
* :mod:`agent.finetune.diagnostics` -- evaluation with Q calibration, held-out TD error.
* :mod:`agent.finetune.report` -- learning curves and a markdown table across runs.
"""
from agent.config import check_ranges
from agent.finetune import loop as _loop
from agent.finetune import regime
from agent.finetune.config import ALGO_DEFAULTS, FinetuneConfig
from agent.finetune.loop import LoopState, run


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True, make_source=None) -> dict:
    """Run ``agent finetune``: the single-process loop, or actor and learner in two
    processes when ``cfg.actor_learner`` is set. ``make_source`` lets tests wrap the batch source."""
    check_ranges(cfg)  # a config built in Python gets the same refusals as one from flags
    if cfg.algo == "auto":
        cfg, decision = regime.resolve(cfg, resume=resume, progress=progress)
    else:  # a resumed auto run continues from its config.yaml, which names the branch's algorithm
        decision = regime.saved_decision(cfg) if resume else None
    if cfg.actor_learner:
        from agent.finetune.actor_learner import finetune_actor_learner

        return finetune_actor_learner(cfg, resume=resume, progress=progress, make_source=make_source, decision=decision)
    return _loop.finetune(cfg, resume=resume, progress=progress, make_source=make_source, decision=decision)


__all__ = ["ALGO_DEFAULTS", "FinetuneConfig", "LoopState", "finetune", "run"]
