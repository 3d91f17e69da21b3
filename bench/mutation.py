"""Mutation bench: do the fast math-level tests notice a broken line of the learners' math?

    python bench/mutation.py              # every mutant of MUTATED (~10 min on 2 cores; resumable)
    python bench/mutation.py --quick      # agent/learners/common.py alone (~4 min); writes mutation.quick.json
    python bench/mutation.py --report     # no new runs: the rows from the outcomes saved so far
    python bench/mutation.py --fresh      # forget the saved outcomes first

mutmut (``pip install mutmut==3.8.1``) mutates every function of MUTATED one small change at
a time (an operator swapped, a number +1, an argument dropped or set to None, a condition
forced, a string changed, an assignment set to None, ...) and runs, for each mutant, the
fast tests that call the mutated function (FAST_TESTS, a selection that runs in seconds).
It works on a copy of the package and of those tests under
bench/results/_work/mutation[.quick]/ (git ignores it), never on the tree itself, so
other work on the tree goes on meanwhile; the test processes run under ``nice`` with one
thread. Each mutant's outcome is saved by mutmut as it finishes (``mutants/**/*.meta``)
and a rerun skips the finished ones; a function whose source changed gets its mutants
rerun, and the mutants that survived are checked again with the current tests at every
run. Progress goes to mutmut.log in the work folder.

What mutmut leaves alone, by design: module-level code and class bodies (the
``option(...)`` config lines with their help text), docstrings, and functions with a
decorator other than ``@staticmethod`` / ``@classmethod`` (``nets.soft_update``,
``nets.act``). ``soft_update`` -- the Polyak step -- is covered instead by a planted bug
and by tests/test_shared_math.py. This bench also skips the arguments of ``raise X(...)``
(DO_NOT_MUTATE): the text of an error message is not math, while the condition that
raises is still mutated.

Rows (bench/results/mutation.json; --quick writes mutation.quick.json):

* ``mutation_score`` -- killed / (mutants - equivalent), percent; a mutant counts as
  killed when a test fails or times out. Target >= 90. Per-module rows follow. The
  equivalent mutants (EQUIVALENT below, each with the reason no test can tell it from
  the original) are listed with their location and mutation under
  ``equivalent_mutants`` in the same file, the survivors under ``surviving_mutants``.
* ``planted_bugs_caught`` -- PLANTED, nine one-line bugs a review planted in the shared
  math that the suite of the time let through, applied one at a time as patches to a
  copy of the package: each must make the fast tests fail. Target >= 9.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the packages: bench/sims.py must not shadow sims

from common import RESULTS, WORK, print_rows, row, write_results  # noqa: E402

MUTATED = ("agent/learners/*.py", "agent/nets.py", "agent/finetune/data.py")
QUICK_MUTATED = ("agent/learners/common.py",)
FAST_TESTS = ("tests/test_shared_math.py", "tests/test_math_*.py", "tests/test_learners.py",
              "tests/test_finetune_losses.py", "tests/test_nets_fused.py", "tests/test_graphed.py")
TEST_SUPPORT = ("tests/conftest.py", "tests/helpers.py")
DO_NOT_MUTATE = (r"^\s*raise \w+\(",)  # error-message text
MODULES = {"learners": "agent/learners/", "nets": "agent/nets.py", "finetune_data": "agent/finetune/data.py"}
DETECTED = {"killed", "timeout", "segfault"}
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": "egl", "PYTHONDONTWRITEBYTECODE": "1"}

# Why the mutants in EQUIVALENT are equivalent.
WHY = {
    'actor_mean': ('the loss is a batch mean: mean_b(alpha log pi - mean_e Q) = mean_b(alpha log pi) - mean over all (e,'
        ' b) of Q, the same value and gradient'),
    'adam_dev': 'common.adam ignores its device argument: the fused Adam runs where the parameters are',
    'alpha_arg': 'the config has no initial_alpha field, so build_sac_parts falls back to the same 1.0',
    'alpha_default': ('every caller that leaves initial_alpha unset (SAC-N, SAC, RLPD, RO2O) has an initial_alpha field, so'
        ' the default is never read'),
    'alpha_or': ('the callers that pass initial_alpha (CQL, WSRL: 1.0) have configs without an initial_alpha field, '
        'where getattr gives the same 1.0'),
    'arange': 'np.arange of Python ints is int64 here (numpy 2, 64-bit Linux)',
    'at_zero': 'where diff = 0 the weight multiplies 0',
    'bool_none': 'bool(None) is False, like the default: a pretrained config without layer_norm still means none',
    'broadcast': ('broadcasting against [E, B, n] aligns trailing dims: [B, n] (or [B, 1]) and [1, B, n] (or [1, B, 1])'
        ' give the same result'),
    'cache': 'a cache read: the mutant recomputes the same parameter list on every call (speed only)',
    'capacity': 'the initial capacity only: the buffer grows as needed, so its contents and batches are the same',
    'clamp_zero': 'exp() is never negative: the lower clamp at 0 never acts',
    'copy_dtype': 'copy_ into the float32 buffer rounds the float64 values exactly as a float32 conversion would',
    'det_flag': 'DeterministicActor.forward ignores its deterministic argument',
    'dwd': ('torch.optim.Adam (2.13) always stores decoupled_weight_decay in its param group, so the default is '
        'never read'),
    'grad_scale': 'grad_scale and found_inf default to None in torch._fused_adam_',
    'graphed_init': 'capture() replaces both before any read (_check returns early until a graph is captured)',
    'heldout_one': 'with one episode, min(., episodes - 1) = 0 caps the held-out count anyway',
    'integers': 'Generator.integers(n, size=k) draws from [0, n) exactly like integers(0, n, size=k)',
    'keepdim': 'view(-1) flattens [1, out] and [out] alike',
    'layout': ("chooses between two operand layouts of the same product; on this machine's CPU kernels both give the"
        ' same bits (tests/test_math_nets.py checks the gradients bit for bit against the per-layer graph in '
        'both layouts), so only speed changes'),
    'ln_default': 'every config build_sac_parts gets has a layer_norm field, so the default is never read',
    'metrics': 'metrics is set by the first minibatch before it is read, and an update always has K >= 1 minibatches',
    'multiplier_or': ('critic_loss returns a multiplier loss exactly when it is given a multiplier: both are None or '
        'neither is'),
    'no_grad': ('with gradients disabled the one-node function records nothing and runs the same kernels: the same '
        'bits'),
    'randperm': ('a CPU index works on any device; on a CPU the draw is the same, on a GPU it comes from the CPU '
        "generator instead of the device's: an equally uniform subset"),
    'relu_inplace': ('the ensemble runs its own fused layers; its ReLU modules run only with LayerNorm, where in place or '
        'not gives the same values (in place saves a buffer)'),
    'rtg_default': "every value but 'exclude' bootstraps with the lower bound, so the default's spelling changes nothing",
    'rtg_empty': 'the tail value is only read in the loop over episodes, which an empty reward array does not enter',
    'rtg_ends': "episode ends are integer arrays (the store's int64 episode_ends), for which the cast is a no-op",
    'step_counters': ('fused Adam refuses complex parameters and keeps every step counter as a float32 tensor on its '
        "parameter's device (load_state_dict casts them there): the counters never differ in device or dtype"),
    'sum_of_means': ('the per-member terms are summed over the E members: E x (mean over all members and rows) = sum of '
        "the members' row means, the same loss, and the logged means are equal"),
    'temp_dtype': 'torch.tensor of a Python float is float32 under the default dtype',
    'two_d': 'the tensors here are [B, .] rows (one minibatch), where dim 1 is dim -1',
    'wanted_or': 'an input that needs no gradient has no node (None), so the extra operand changes nothing',
    'zero_grad': ('the old gradients are zeroed instead of dropped before a backward that writes them (0 + g = g): '
        'every step is the same'),
}
# Mutants no test can tell apart from the original, found by reading each survivor: (file,
# function as "Class.method" or "name", key into WHY, original line, the mutated lines),
# lines stripped as `describe` gives them. A survivor not listed here counts against the score.
EQUIVALENT: list[tuple[str, str, str, str, tuple[str, ...]]] = [
    ('agent/finetune/data.py', 'split_heldout', 'heldout_one',
     'held = min(max(int(round(fraction * episodes)), 1 if fraction > 0 and episodes > 1 else 0), episodes - 1)',
     ('held = min(max(int(round(fraction * episodes)), 1 if fraction > 0 and episodes >= 1 else 0), episodes - 1)',)),
    ('agent/finetune/data.py', 'split_heldout', 'arange',
     'return np.arange(boundary, dtype=np.int64), np.arange(boundary, cache.num_steps, dtype=np.int64)',
     ('return np.arange(boundary, dtype=None), np.arange(boundary, cache.num_steps, dtype=np.int64)',
      'return np.arange(boundary, ), np.arange(boundary, cache.num_steps, dtype=np.int64)',
      'return np.arange(boundary, dtype=np.int64), np.arange(boundary, cache.num_steps, dtype=None)',
      'return np.arange(boundary, dtype=np.int64), np.arange(boundary, cache.num_steps, )',)),
    ('agent/finetune/data.py', 'BatchSource.sample', 'integers',
     'idx = self.offline_steps[self.rng.integers(0, self.offline_steps.size, size=k * n_off)]',
     ('idx = self.offline_steps[self.rng.integers(self.offline_steps.size, size=k * n_off)]',)),
    ('agent/finetune/data.py', 'BatchSource.sample', 'integers',
     'idx = self.rng.integers(0, self.online.size, size=k * n_on)',
     ('idx = self.rng.integers(self.online.size, size=k * n_on)',)),
    ('agent/finetune/data.py', 'OnlineBuffer.__init__', 'capacity',
     'def __init__(self, obs_dim: int, act_dim: int, prepare=None, capacity: int = 4096):',
     ('def __init__(self, obs_dim: int, act_dim: int, prepare=None, capacity: int = 4097):',)),
    ('agent/learners/bc.py', 'BC.update', 'zero_grad',
     'self.optimizer.zero_grad(set_to_none=True)',
     ('self.optimizer.zero_grad(set_to_none=None)',
      'self.optimizer.zero_grad(set_to_none=False)',)),
    ('agent/learners/calql.py', 'returns_to_go', 'rtg_default',
     'truncated_tail: str = "lower_bound") -> np.ndarray:',
     ('truncated_tail: str = "XXlower_boundXX") -> np.ndarray:',
      'truncated_tail: str = "LOWER_BOUND") -> np.ndarray:',)),
    ('agent/learners/calql.py', 'returns_to_go', 'rtg_empty',
     'tail_value = float(reward.min()) / (1.0 - gamma) if reward.size else 0.0',
     ('tail_value = float(reward.min()) / (1.0 - gamma) if reward.size else 1.0',)),
    ('agent/learners/calql.py', 'returns_to_go', 'rtg_ends',
     'for end in np.asarray(episode_ends, np.int64):',
     ('for end in np.asarray(episode_ends, None):',
      'for end in np.asarray(episode_ends, ):',)),
    ('agent/learners/common.py', 'actor_temperature_step', 'zero_grad',
     'learner.actor_opt.zero_grad(set_to_none=True)',
     ('learner.actor_opt.zero_grad(set_to_none=None)',
      'learner.actor_opt.zero_grad(set_to_none=False)',)),
    ('agent/learners/common.py', 'actor_temperature_step', 'zero_grad',
     'learner.alpha_opt.zero_grad(set_to_none=True)',
     ('learner.alpha_opt.zero_grad(set_to_none=None)',
      'learner.alpha_opt.zero_grad(set_to_none=False)',)),
    ('agent/learners/common.py', 'build_sac_parts', 'ln_default',
     'getattr(cfg, "layer_norm", False)).to(dev)',
     ('getattr(cfg, "layer_norm", None)).to(dev)',
      'getattr(cfg, "layer_norm", )).to(dev)',
      'getattr(cfg, "layer_norm", True)).to(dev)',)),
    ('agent/learners/common.py', 'build_sac_parts', 'alpha_or',
     'alpha = getattr(cfg, "initial_alpha", 1.0) if initial_alpha is None else initial_alpha',
     ('alpha = getattr(cfg, "initial_alpha", 1.0) if (initial_alpha is None) or True else initial_alpha',)),
    ('agent/learners/common.py', 'build_sac_parts', 'alpha_default',
     'alpha = getattr(cfg, "initial_alpha", 1.0) if initial_alpha is None else initial_alpha',
     ('alpha = getattr(cfg, "initial_alpha", None) if initial_alpha is None else initial_alpha',
      'alpha = getattr(cfg, "initial_alpha", ) if initial_alpha is None else initial_alpha',
      'alpha = getattr(cfg, "initial_alpha", 2.0) if initial_alpha is None else initial_alpha',)),
    ('agent/learners/common.py', 'build_sac_parts', 'adam_dev',
     'learner.actor_opt = adam(learner.actor.parameters(), cfg.actor_lr, dev)',
     ('learner.actor_opt = adam(learner.actor.parameters(), cfg.actor_lr, None)',)),
    ('agent/learners/common.py', 'build_sac_parts', 'adam_dev',
     'learner.critic_opt = adam(learner.critic.parameters(), cfg.critic_lr, dev)',
     ('learner.critic_opt = adam(learner.critic.parameters(), cfg.critic_lr, None)',)),
    ('agent/learners/common.py', 'build_sac_parts', 'adam_dev',
     'learner.alpha_opt = adam(learner.temperature.parameters(), cfg.alpha_lr, dev)',
     ('learner.alpha_opt = adam(learner.temperature.parameters(), cfg.alpha_lr, None)',)),
    ('agent/learners/common.py', 'sac_actor_loss', 'actor_mean',
     'q = qs.min(0).values if reduce == "min" else qs.mean(0)',
     ('q = qs.min(0).values if reduce == "min" else qs.mean(None)',)),
    ('agent/learners/common.py', 'step', 'zero_grad',
     'optimizer.zero_grad(set_to_none=True)',
     ('optimizer.zero_grad(set_to_none=None)',
      'optimizer.zero_grad(set_to_none=False)',)),
    ('agent/learners/common.py', 'subset_min_target', 'randperm',
     'members = torch.randperm(critic_target.ensemble_size, device=next_action.device)[:subset]',
     ('members = torch.randperm(critic_target.ensemble_size, device=None)[:subset]',
      'members = torch.randperm(critic_target.ensemble_size, )[:subset]',)),
    ('agent/learners/common.py', '_LeanAdam.of', 'dwd',
     'or group.get("decoupled_weight_decay", False):',
     ('or group.get("decoupled_weight_decay", None):',
      'or group.get("decoupled_weight_decay", ):',
      'or group.get("decoupled_weight_decay", True):',)),
    ('agent/learners/common.py', '_LeanAdam.of', 'step_counters',
     'or opt.state[p]["step"].device != step0.device or opt.state[p]["step"].dtype != step0.dtype for p in params):',
     ('or opt.state[p]["step"].device != step0.device and opt.state[p]["step"].dtype != step0.dtype for p in params):',)),
    ('agent/learners/common.py', '_LeanAdam.of', 'step_counters',
     'if any(p.device != first.device or p.dtype != first.dtype or torch.is_complex(p) / or opt.state[p]["step"].device != step0.device or opt.state[p]["step"].dtype != step0.dtype for p in params):',
     ('if any(p.device != first.device or p.dtype != first.dtype or torch.is_complex(p) and opt.state[p]["step"].device != step0.device or opt.state[p]["step"].dtype != step0.dtype for p in params):',)),
    ('agent/learners/common.py', '_LeanAdam.step', 'grad_scale',
     'grad_scale=None, found_inf=None)',
     ('found_inf=None)',
      'grad_scale=None, )',)),
    ('agent/learners/cql.py', 'conservative_gap', 'two_d',
     'batch_size, act_dim = obs.shape[0], batch["action"].shape[-1]',
     ('batch_size, act_dim = obs.shape[0], batch["action"].shape[+1]',)),
    ('agent/learners/cql.py', 'conservative_gap', 'broadcast',
     'q_pi - pi_log_prob.view(1, batch_size, n),',
     ('q_pi - pi_log_prob.view(batch_size, n),',)),
    ('agent/learners/cql.py', 'conservative_gap', 'broadcast',
     'q_next_pi - next_pi_log_prob.view(1, batch_size, n),',
     ('q_next_pi - next_pi_log_prob.view(batch_size, n),',)),
    ('agent/learners/cql.py', 'conservative_gap', 'broadcast',
     'bound = lower_bound.view(1, batch_size, 1)',
     ('bound = lower_bound.view(batch_size, 1)',)),
    ('agent/learners/cql.py', 'critic_loss', 'sum_of_means',
     'td = ((qs - y.unsqueeze(0)) ** 2).mean(1)  # [E]',
     ('td = ((qs - y.unsqueeze(0)) ** 2).mean(None)  # [E]',)),
    ('agent/learners/cql.py', 'CQL.__init__', 'alpha_arg',
     'build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=1.0)',
     ('build_sac_parts(self, cfg, obs_dim, act_dim, device, )',
      'build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=None)',)),
    ('agent/learners/cql.py', 'CQL.__init__', 'adam_dev',
     'self.multiplier_opt = adam(self.multiplier.parameters(), cfg.critic_lr, self.device)',
     ('self.multiplier_opt = adam(self.multiplier.parameters(), cfg.critic_lr, None)',)),
    ('agent/learners/cql.py', 'CQL.update', 'multiplier_or',
     'if self.multiplier is not None and multiplier_loss is not None:',
     ('if self.multiplier is not None or multiplier_loss is not None:',)),
    ('agent/learners/cql.py', 'CQL.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/cql.py', 'LagrangeMultiplier.forward', 'clamp_zero',
     'return self.log_value.exp().clamp(0.0, 1e6)',
     ('return self.log_value.exp().clamp(None, 1e6)',)),
    ('agent/learners/graphed.py', 'GraphedUpdate.__init__', 'graphed_init',
     'self.static: Batch = {}',
     ('self.static: Batch = None',)),
    ('agent/learners/graphed.py', 'GraphedUpdate.__init__', 'graphed_init',
     'self.out: dict[str, torch.Tensor] = {}',
     ('self.out: dict[str, torch.Tensor] = None',)),
    ('agent/learners/h2o.py', 'critic_loss', 'sum_of_means',
     'td_real, td_sim = sq[:, real].mean(1), (w.unsqueeze(0) * sq[:, ~real]).mean(1)',
     ('td_real, td_sim = sq[:, real].mean(None), (w.unsqueeze(0) * sq[:, ~real]).mean(1)',
      'td_real, td_sim = sq[:, real].mean(1), (w.unsqueeze(0) * sq[:, ~real]).mean(None)',)),
    ('agent/learners/h2o.py', 'critic_loss', 'sum_of_means',
     'gap = torch.logsumexp(qs[:, ~real] + omega.log().unsqueeze(0), dim=1) - qs[:, real].mean(1)',
     ('gap = torch.logsumexp(qs[:, ~real] + omega.log().unsqueeze(0), dim=1) - qs[:, real].mean(None)',)),
    ('agent/learners/h2o.py', 'Discriminators.loss', 'two_d',
     'return loss, {"disc_loss": loss.detach(), "disc_sa_acc": (l_sa.argmax(-1) == label).float().mean().detach(),',
     ('return loss, {"disc_loss": loss.detach(), "disc_sa_acc": (l_sa.argmax(+1) == label).float().mean().detach(),',)),
    ('agent/learners/h2o.py', 'Discriminators.loss', 'two_d',
     '"disc_sas_acc": ((l_sas + l_sa).argmax(-1) == label).float().mean().detach()}',
     ('"disc_sas_acc": ((l_sas + l_sa).argmax(+1) == label).float().mean().detach()}',)),
    ('agent/learners/h2o.py', 'DynamicsModel.forward', 'two_d',
     'mu, log_std = self.net(torch.cat([obs, action], -1)).chunk(2, -1)',
     ('mu, log_std = self.net(torch.cat([obs, action], +1)).chunk(2, -1)',
      'mu, log_std = self.net(torch.cat([obs, action], -1)).chunk(2, +1)',)),
    ('agent/learners/h2o.py', 'DynamicsModel.loss', 'two_d',
     'return (0.5 * ((next_obs - mean) / log_std.exp()) ** 2 + log_std).sum(-1).mean()',
     ('return (0.5 * ((next_obs - mean) / log_std.exp()) ** 2 + log_std).sum(+1).mean()',)),
    ('agent/learners/h2o.py', 'H2O.__init__', 'adam_dev',
     'self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)',
     ('self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, None)',)),
    ('agent/learners/h2o.py', 'H2O.__init__', 'adam_dev',
     'self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)',
     ('self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, None)',)),
    ('agent/learners/h2o.py', 'H2O.__init__', 'adam_dev',
     'self.alpha_opt = adam(self.temperature.parameters(), cfg.alpha_lr, self.device)',
     ('self.alpha_opt = adam(self.temperature.parameters(), cfg.alpha_lr, None)',)),
    ('agent/learners/h2o.py', 'H2O.__init__', 'adam_dev',
     'self.disc_opt = adam(self.discriminators.parameters(), cfg.discriminator_lr, self.device)',
     ('self.disc_opt = adam(self.discriminators.parameters(), cfg.discriminator_lr, None)',)),
    ('agent/learners/h2o.py', 'H2O.__init__', 'adam_dev',
     'self.model_opt = adam(self.model.parameters(), cfg.model_lr, self.device)',
     ('self.model_opt = adam(self.model.parameters(), cfg.model_lr, None)',)),
    ('agent/learners/h2o.py', 'H2O.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/iql.py', 'expectile_loss', 'at_zero',
     'weight = torch.where(diff < 0, 1.0 - expectile, expectile)',
     ('weight = torch.where(diff <= 0, 1.0 - expectile, expectile)',)),
    ('agent/learners/iql.py', 'IQL.__init__', 'adam_dev',
     'self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)',
     ('self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, None)',)),
    ('agent/learners/iql.py', 'IQL.__init__', 'adam_dev',
     'self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)',
     ('self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, None)',)),
    ('agent/learners/iql.py', 'IQL.__init__', 'adam_dev',
     'self.value_opt = adam(self.value.parameters(), cfg.value_lr, self.device)',
     ('self.value_opt = adam(self.value.parameters(), cfg.value_lr, None)',)),
    ('agent/learners/iql.py', 'IQL.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/rlpd.py', 'RLPD.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/ro2o.py', 'q_smoothness', 'at_zero',
     'weighted = torch.where(diff > 0, tau, 1.0 - tau) * diff**2',
     ('weighted = torch.where(diff >= 0, tau, 1.0 - tau) * diff**2',)),
    ('agent/learners/ro2o.py', 'RO2O.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/sacn.py', 'SACN.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/td3bc.py', 'TD3BC.__init__', 'adam_dev',
     'self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, self.device)',
     ('self.actor_opt = adam(self.actor.parameters(), cfg.actor_lr, None)',)),
    ('agent/learners/td3bc.py', 'TD3BC.__init__', 'adam_dev',
     'self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, self.device)',
     ('self.critic_opt = adam(self.critic.parameters(), cfg.critic_lr, None)',)),
    ('agent/learners/td3bc.py', 'TD3BC.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/learners/wsrl.py', 'matching_config', 'bool_none',
     'layer_norm=bool(pretrained_config.get("layer_norm", False)), actor_layer_norm=False)',
     ('layer_norm=bool(pretrained_config.get("layer_norm", None)), actor_layer_norm=False)',
      'layer_norm=bool(pretrained_config.get("layer_norm", )), actor_layer_norm=False)',)),
    ('agent/learners/wsrl.py', 'WSRL.__init__', 'alpha_arg',
     'build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=1.0, actor_layer_norm=cfg.actor_layer_norm,',
     ('build_sac_parts(self, cfg, obs_dim, act_dim, device, initial_alpha=None, actor_layer_norm=cfg.actor_layer_norm,',
      'build_sac_parts(self, cfg, obs_dim, act_dim, device, actor_layer_norm=cfg.actor_layer_norm,',)),
    ('agent/learners/wsrl.py', 'WSRL.update', 'metrics',
     'metrics: dict[str, torch.Tensor] = {}',
     ('metrics: dict[str, torch.Tensor] = None',)),
    ('agent/nets.py', '_ensemble_input_grad', 'layout',
     'return grad * w.transpose(1, 2) if grad.shape[-1] == 1 else grad.bmm(w.transpose(1, 2))',
     ('return grad * w.transpose(1, 2) if (grad.shape[-1] == 1) and False else grad.bmm(w.transpose(1, 2))',
      'return grad * w.transpose(1, 2) if grad.shape[+1] == 1 else grad.bmm(w.transpose(1, 2))',
      'return grad * w.transpose(1, 2) if grad.shape[-2] == 1 else grad.bmm(w.transpose(1, 2))',
      'return grad * w.transpose(1, 2) if grad.shape[-1] == 2 else grad.bmm(w.transpose(1, 2))',)),
    ('agent/nets.py', '_ensemble_weight_grad', 'layout',
     'if grad.shape[-1] == 1:',
     ('if grad.shape[+1] == 1:',
      'if grad.shape[-2] == 1:',
      'if grad.shape[-1] != 1:',
      'if grad.shape[-1] == 2:',)),
    ('agent/nets.py', '_mlp_bias_grad', 'keepdim',
     'return grad.sum(0, keepdim=True).view(-1)',
     ('return grad.sum(0, ).view(-1)',
      'return grad.sum(0, keepdim=False).view(-1)',)),
    ('agent/nets.py', '_mlp_input_grad', 'layout',
     'if x.stride(0) == 1 and x.stride(1) == x.size(0):  # mat1 column-major',
     ('if x.stride(0) == 1 or x.stride(1) == x.size(0):  # mat1 column-major',)),
    ('agent/nets.py', '_mlp_weight_grad', 'layout',
     'column_major = w.stride(1) == 1 and w.stride(0) == w.size(1)',
     ('column_major = None',
      'column_major = w.stride(1) == 1 and w.stride(0) == w.size(None)',
      'column_major = w.stride(1) == 1 or w.stride(0) == w.size(1)',
      'column_major = w.stride(None) == 1 and w.stride(0) == w.size(1)',
      'column_major = w.stride(1) != 1 and w.stride(0) == w.size(1)',
      'column_major = w.stride(1) == 2 and w.stride(0) == w.size(1)',
      'column_major = w.stride(1) == 1 and w.stride(None) == w.size(1)',
      'column_major = w.stride(1) == 1 and w.stride(1) == w.size(1)',
      'column_major = w.stride(1) == 1 and w.stride(0) != w.size(1)',)),
    ('agent/nets.py', '_mlp_weight_grad', 'layout',
     'return grad.t().mm(x) if column_major else x.t().mm(grad).t()',
     ('return grad.t().mm(x) if (column_major) and False else x.t().mm(grad).t()',
      'return grad.t().mm(x) if (column_major) or True else x.t().mm(grad).t()',)),
    ('agent/nets.py', '_wanted_grads', 'wanted_or',
     'if wanted[j] and node is not None:',
     ('if wanted[j] or node is not None:',)),
    ('agent/nets.py', 'CriticEnsemble.__init__', 'relu_inplace',
     'layers.append(nn.ReLU(inplace=True))',
     ('layers.append(nn.ReLU(inplace=None))',
      'layers.append(nn.ReLU(inplace=False))',)),
    ('agent/nets.py', 'CriticEnsemble.forward', 'no_grad',
     'if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):',
     ('if torch.is_grad_enabled() or (x.requires_grad or any(p.requires_grad for p in params)):',)),
    ('agent/nets.py', 'DeterministicActor.forward', 'det_flag',
     'def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:',
     ('def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:',)),
    ('agent/nets.py', 'MLP.forward', 'cache',
     'params = self.__dict__.get("_linear_params")',
     ('params = None',
      'params = self.__dict__.get(None)',
      'params = self.__dict__.get("XX_linear_paramsXX")',
      'params = self.__dict__.get("_LINEAR_PARAMS")',)),
    ('agent/nets.py', 'MLP.forward', 'no_grad',
     'if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):',
     ('if torch.is_grad_enabled() or (x.requires_grad or any(p.requires_grad for p in params)):',)),
    ('agent/nets.py', 'ObsNormalizer.fit', 'copy_dtype',
     'self.std.copy_(torch.as_tensor(np.sqrt(var) + eps, dtype=torch.float32))',
     ('self.std.copy_(torch.as_tensor(np.sqrt(var) + eps, ))',
      'self.std.copy_(torch.as_tensor(np.sqrt(var) + eps, dtype=None))',)),
    ('agent/nets.py', 'ObsNormalizer.fit', 'copy_dtype',
     'self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))',
     ('self.mean.copy_(torch.as_tensor(mean, dtype=None))',
      'self.mean.copy_(torch.as_tensor(mean, ))',)),
    ('agent/nets.py', 'Temperature.__init__', 'temp_dtype',
     'self.log_alpha = nn.Parameter(torch.tensor(math.log(initial), dtype=torch.float32))',
     ('self.log_alpha = nn.Parameter(torch.tensor(math.log(initial), dtype=None))',
      'self.log_alpha = nn.Parameter(torch.tensor(math.log(initial), ))',)),
]

# The nine bugs a review planted in the shared math that the suite of the time missed:
# (name, file, original text, planted text); each text occurs exactly once in its file.
PLANTED: list[tuple[str, str, str, str]] = [
    ("temperature_loss_sign", "agent/nets.py",
     "return -(self.log_alpha * (log_prob.detach() + target_entropy)).mean()",
     "return (self.log_alpha * (log_prob.detach() + target_entropy)).mean()"),
    ("polyak_direction", "agent/nets.py",
     "torch._foreach_lerp_(module_params(target), module_params(source), tau)",
     "torch._foreach_lerp_(module_params(target), module_params(source), 1 - tau)"),
    ("actor_loss_entropy_term", "agent/learners/common.py",
     "loss = (alpha.detach() * log_prob - q).mean()",
     "loss = (-q).mean()"),
    ("ensemble_td_reduction", "agent/learners/common.py",
     "loss = sq.mean(1).sum()",
     "loss = sq.mean(1).mean()"),
    ("lean_adam_step_count", "agent/learners/common.py",
     "self.step_counts.add_(1)",
     "self.step_counts.add_(2)"),
    ("td3_target_noise_clip", "agent/learners/td3bc.py",
     "noise = (torch.randn_like(next_action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)",
     "noise = torch.randn_like(next_action) * cfg.policy_noise"),
    ("cql_lagrange_sign", "agent/learners/cql.py",
     "multiplier_loss = -(weight * cfg.alpha_cql * (gap.detach() - cfg.target_action_gap)).mean()",
     "multiplier_loss = (weight * cfg.alpha_cql * (gap.detach() - cfg.target_action_gap)).mean()"),
    ("h2o_weight_clamp", "agent/learners/h2o.py",
     ".exp().clamp(self.cfg.ratio_min, 1.0)",
     ".exp().clamp(min=self.cfg.ratio_min)"),
    ("rlpd_actor_reduce", "agent/learners/rlpd.py",
     "flatten(batch)[\"obs\"],\n                                                       reduce=self.cfg.actor_reduce)",
     "flatten(batch)[\"obs\"])"),
]


def fast_tests() -> list[Path]:
    return sorted({p for pattern in FAST_TESTS for p in ROOT.glob(pattern)})


def _sync_file(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` when their contents differ, keeping the source's mtime
    (mutmut regenerates a file's mutants only when its source is newer)."""
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def sync_tree(dest: Path, tries: int = 10) -> None:
    """``dest``/agent and ``dest``/tests mirror the package and the fast tests. A file
    caught half-written by an editor (one that does not parse) is copied again a little
    later."""
    wanted = {p.relative_to(ROOT) for p in (ROOT / "agent").rglob("*.py")}
    wanted |= {p.relative_to(ROOT) for p in fast_tests()} | {Path(p) for p in TEST_SUPPORT if (ROOT / p).exists()}
    for rel in sorted(wanted):
        for attempt in range(tries):
            try:
                ast.parse((ROOT / rel).read_bytes())
                break
            except SyntaxError:
                if attempt == tries - 1:
                    raise SystemExit(f"{rel} does not parse; fix it before measuring mutants.") from None
                time.sleep(3)
        _sync_file(ROOT / rel, dest / rel)
    for sub in ("agent", "tests"):
        for p in (dest / sub).rglob("*.py"):
            if p.relative_to(dest) not in wanted:
                p.unlink()


def mutmut_config(mutated: tuple[str, ...]) -> str:
    # the copy's tests/ holds the fast tests alone; naming the folder, not the files, keeps
    # the saved outcomes when a test file is added (mutmut resets them all when this changes)
    lines = ["[mutmut]", "source_paths = agent", "only_mutate ="]
    lines += [f"    {p}" for p in mutated]
    lines += ["pytest_add_cli_args_test_selection =", "    tests"]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider"]
    lines += ["do_not_mutate_patterns ="] + [f"    {p}" for p in DO_NOT_MUTATE]
    lines += ["use_git_change_detection = false", "on_dependency_change = ignore", ""]
    return "\n".join(lines)


def run_mutmut(work: Path, names: list[str], children: int, nice: int, log) -> int:
    cmd = ["nice", "-n", str(nice), str(Path(sys.executable).parent / "mutmut"), "run", "--max-children", str(children), *names]
    env = {**os.environ, **ENV}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode


# -- outcomes --------------------------------------------------------------------------
def _status(code) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def outcomes(work: Path) -> dict[str, tuple[str, str]]:
    """mutant name -> (source file, status), from mutmut's per-file records."""
    out = {}
    for meta in sorted((work / "mutants" / "agent").rglob("*.py.meta")):
        source = str(meta.relative_to(work / "mutants"))[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = (source, _status(code))
    return out


def _functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield "", node
        elif isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, ast.FunctionDef):
                    yield node.name, child


def describe(work: Path, sources: dict[str, str]) -> dict[str, dict]:
    """For each mutant (name -> its source file): the file, function, line in the original
    source, and the changed lines (original -> mutated, stripped)."""
    by_file: dict[str, list[str]] = {}
    for name, rel in sources.items():
        by_file.setdefault(rel, []).append(name)
    out = {}
    for rel, group in by_file.items():
        module = re.match(r"(.*?)\.x[_ǁ]", group[0]).group(1)
        mutated_src = (work / "mutants" / rel).read_text()
        original_src = (work / rel).read_text()
        defs = {node.name: ast.get_source_segment(mutated_src, node).splitlines()
                for _, node in _functions(ast.parse(mutated_src)) if "__mutmut_" in node.name}
        starts = {(cls, node.name): node.lineno for cls, node in _functions(ast.parse(original_src))}
        for name in group:
            local = name[len(module) + 1:]
            mangled = local.rsplit("__mutmut_", 1)[0]
            cls, func = (mangled[1:].split("ǁ")[1:3] if mangled.startswith("xǁ") else ("", mangled[2:]))
            orig, mut = defs.get(f"{mangled}__mutmut_orig", []), defs.get(local, [])
            before, after, line = [], [], None
            # the copies are named after the mutant: name them as in the source
            orig = [orig[0].replace(f"{mangled}__mutmut_orig", func, 1)] + orig[1:] if orig else orig
            mut = [mut[0].replace(local, func, 1)] + mut[1:] if mut else mut
            for i, (a, b) in enumerate(zip(orig, mut)):
                if a != b:
                    before.append(a.strip())
                    after.append(b.strip())
                    line = line or starts.get((cls, func), 0) + i
            if len(orig) != len(mut):  # a multi-line change: fall back to a diff
                diff = [d for d in difflib.ndiff(orig, mut) if d[:1] in "-+"]
                before = [d[2:].strip() for d in diff if d[0] == "-"]
                after = [d[2:].strip() for d in diff if d[0] == "+"]
            out[name] = {"mutant": name, "file": rel, "function": f"{cls}.{func}" if cls else func, "line": line,
                         "original": " / ".join(before), "mutated": " / ".join(after)}
    return out


def equivalent_entry(info: dict) -> tuple | None:
    for entry in EQUIVALENT:
        file, function, _, original, mutated = entry
        if (file, function, original) == (info["file"], info["function"], info["original"]) and info["mutated"] in mutated:
            return entry
    return None


def equivalent_reason(info: dict) -> str | None:
    entry = equivalent_entry(info)
    return WHY[entry[2]] if entry else None


# -- planted bugs ----------------------------------------------------------------------
def run_fast_tests(tree: Path, nice: int) -> int:
    env = {**os.environ, **ENV}
    env.pop("PYTHONPATH", None)
    tests = sorted({f"tests/{p.name}" for p in fast_tests()})
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    # cwd first on sys.path: the copy of the package, not the installed tree, is imported
    return subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def planted_bugs(work: Path, nice: int) -> tuple[int, list[str]]:
    """How many PLANTED bugs make the fast tests fail (pytest exit status 1), each applied
    alone to a copy of the package; the copy without a bug must pass."""
    tree = work / "planted"
    sync_tree(tree)
    if (rc := run_fast_tests(tree, nice)) != 0:
        raise SystemExit(f"the fast tests fail (exit {rc}) on an unchanged copy of the package; fix them before "
                         f"measuring mutants: cd {tree} && python -m pytest tests")
    caught, notes = 0, []
    for name, rel, old, new in PLANTED:
        path = tree / rel
        source = (ROOT / rel).read_text()
        if source.count(old) != 1:
            raise SystemExit(f"planted bug {name}: expected its original text once in {rel}, found it "
                             f"{source.count(old)} times; update PLANTED in bench/mutation.py to the current source.")
        path.write_text(source.replace(old, new))
        try:
            rc = run_fast_tests(tree, nice)
        finally:
            path.write_text(source)
        caught += rc == 1
        notes.append(f"{name}: {'caught' if rc == 1 else f'MISSED (pytest exit {rc})'}")
        print(f"  planted {notes[-1]}", flush=True)
    return caught, notes


# -- rows ------------------------------------------------------------------------------
def score_rows(results: dict[str, tuple[str, str]], info: dict[str, dict], bench_name: str
               ) -> tuple[list[dict], list[dict], list[dict]]:
    equivalent, survivors, rows = [], [], []
    groups: dict[str, list[int]] = {"all": [0, 0, 0, 0]}  # killed, counted, equivalent, unchecked
    for name, (source, status) in sorted(results.items()):
        module = next((m for m, prefix in MODULES.items() if source.startswith(prefix)), "other")
        counts = [groups["all"], groups.setdefault(module, [0, 0, 0, 0])]
        if status == "not checked":
            for c in counts:
                c[3] += 1
            continue
        reason = equivalent_reason(info[name]) if status not in DETECTED else None
        if reason:
            equivalent.append({**info[name], "reason": reason})
            for c in counts:
                c[2] += 1
            continue
        for c in counts:
            c[1] += 1
            c[0] += status in DETECTED
        if status not in DETECTED:
            survivors.append({**info[name], "status": status})
    for group, (killed, counted, equiv, unchecked) in groups.items():
        score = round(100.0 * killed / counted, 1) if counted else None
        detail = f"{killed} killed of {counted} non-equivalent mutants, {counted - killed} survived; {equiv} equivalent"
        if group == "all":
            raw = round(100.0 * killed / (counted + equiv), 1) if counted + equiv else None
            detail += (f"; {raw} % of all {counted + equiv} mutants killed (equivalents listed with location, mutation "
                       f"and reason under equivalent_mutants in {bench_name}.json, survivors under surviving_mutants)")
        if unchecked:
            detail += f"; {unchecked} not yet run (rerun to resume)"
        rows.append(row("mutation_score" if group == "all" else f"mutation_score_{group}", score, "%", ">= 90", detail))
    return rows, equivalent, survivors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"mutate {', '.join(QUICK_MUTATED)} alone")
    parser.add_argument("--report", action="store_true", help="run nothing: rows from the outcomes saved so far")
    parser.add_argument("--fresh", action="store_true", help="forget the saved outcomes and start over")
    parser.add_argument("--no-planted", action="store_true", help="skip the planted-bug row (kept from the last run)")
    parser.add_argument("--children", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the test processes (default 10)")
    args = parser.parse_args()
    from agent.optional import require

    require("mutmut", "the mutation bench")

    name = "mutation.quick" if args.quick else "mutation"
    work = WORK / name
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if not args.report:
        sync_tree(work)
        (work / "setup.cfg").write_text(mutmut_config(QUICK_MUTATED if args.quick else MUTATED))
        with open(work / "mutmut.log", "a") as log:
            print(f"running mutmut in {work} (progress: {work / 'mutmut.log'})", flush=True)
            rc = run_mutmut(work, [], args.children, args.nice, log)
            if rc != 0:
                raise SystemExit(f"mutmut run exited with {rc}; see {work / 'mutmut.log'}")
            survived = [n for n, (_, s) in outcomes(work).items() if s in ("survived", "no tests")]
            if survived:  # tests added since they were run may kill them now
                print(f"checking the {len(survived)} survivors again with the current tests", flush=True)
                rc = run_mutmut(work, survived, args.children, args.nice, log)
                if rc != 0:
                    raise SystemExit(f"mutmut run (survivors) exited with {rc}; see {work / 'mutmut.log'}")
        if not args.no_planted:
            print("applying the planted bugs one at a time", flush=True)
            caught, notes = planted_bugs(work, args.nice)
            rows.append(row("planted_bugs_caught", caught, "bugs", f">= {len(PLANTED)}", "; ".join(notes)))
    results = outcomes(work)
    if not results:
        raise SystemExit(f"no mutant outcomes under {work}; run without --report first.")
    info = describe(work, {n: source for n, (source, s) in results.items() if s not in DETECTED | {"not checked"}})
    score, equivalent, survivors = score_rows(results, info, name)
    used = {id(equivalent_entry(i)) for i in info.values()}
    stale = [f"{e[0]} {e[1]}: {e[3]}" for e in EQUIVALENT if id(e) not in used]
    if stale and not args.quick:  # killed since, or the source changed: the list wants a look
        print("EQUIVALENT entries that match no surviving mutant:\n  " + "\n  ".join(stale))
    if not rows and (RESULTS / f"{name}.json").exists():  # keep the planted-bug row of the last run
        rows = [r for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"] if r["name"] == "planted_bugs_caught"]
    rows = score + rows
    print_rows(rows)
    command = "python bench/mutation.py" + (" --quick" if args.quick else "")
    extra = {"equivalent_mutants": equivalent, "surviving_mutants": survivors}
    print(f"wrote {write_results(name, rows, command=command, extra=extra)}")


if __name__ == "__main__":
    main()
