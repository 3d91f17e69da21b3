"""Online fine-tuning: one loop for WSRL, RO2O, H2O and the Cal-QL, RLPD and SAC baselines.

* :mod:`agent.finetune.config` -- :class:`FinetuneConfig` and each algorithm's loop defaults.
* :mod:`agent.finetune.data` -- the online buffer and the [K, B] batch source.
* :mod:`agent.finetune.loop` -- :func:`run` (the loop) and :func:`finetune` (set-up, resume).
* :mod:`agent.finetune.diagnostics` -- evaluation with Q calibration, held-out TD error.
* :mod:`agent.finetune.report` -- learning curves and a markdown table across runs.
"""
from agent.finetune.config import ALGO_DEFAULTS, FinetuneConfig
from agent.finetune.loop import LoopState, finetune, run

__all__ = ["ALGO_DEFAULTS", "FinetuneConfig", "LoopState", "finetune", "run"]
