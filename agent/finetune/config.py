"""The fine-tuning config: the loop's settings plus one section per algorithm."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.config import option, section
from agent.finetune.regime import AutoConfig
from agent.learners import CalQLConfig, DARCConfig, H2OConfig, IQLConfig, RLPDConfig, RO2OConfig, SACConfig, WSRLConfig
from agent.trajectory_weights import Sampling

# The loop settings each algorithm's authors use, where the config leaves them empty:
# warm-up steps, who acts during warm-up, update-to-data ratio, offline share of a batch.
ALGO_DEFAULTS: dict[str, dict] = {
    "wsrl": {"warmup_steps": 5_000, "warmup_policy": "policy", "utd": 4, "offline_ratio": 0.0},
    "ro2o": {"warmup_steps": 2_500, "warmup_policy": "policy", "utd": 1, "offline_ratio": 0.0},
    "calql": {"warmup_steps": 0, "warmup_policy": "policy", "utd": 1, "offline_ratio": 0.5},
    "rlpd": {"warmup_steps": 5_000, "warmup_policy": "random", "utd": 20, "offline_ratio": 0.5},
    "sac": {"warmup_steps": 5_000, "warmup_policy": "random", "utd": 1, "offline_ratio": 0.0},
    # H2O: its own initial policy collects from the first step, as the released code does
    "h2o": {"warmup_steps": 1_000, "warmup_policy": "policy", "utd": 1, "offline_ratio": 0.5},
    # DARC: the real half of each batch trains only its classifiers
    "darc": {"warmup_steps": 1_000, "warmup_policy": "random", "utd": 1, "offline_ratio": 0.5},
    # IQL keeps its offline data (the paper and CORL append online data to the offline buffer);
    # symmetric batches here, so that the online share does not depend on the dataset's size
    "iql": {"warmup_steps": 0, "warmup_policy": "policy", "utd": 1, "offline_ratio": 0.5},
}

# algorithms that learn from a real dataset and a simulator at once: batches mark the real rows (is_real)
HYBRID = ("h2o", "darc")


@dataclass
class FinetuneConfig:
    algo: Literal["auto", "wsrl", "ro2o", "h2o", "darc", "calql", "iql", "rlpd", "sac"] = option(
        "auto", "fine-tuning algorithm; auto keeps or drops the offline data by comparing the --init policy with it (--auto.*)")
    init: str = option("", "pretrained run directory or checkpoint (auto: Cal-QL/CQL/SAC-N/IQL; WSRL: Cal-QL/CQL; "
                           "Cal-QL: Cal-QL; IQL: IQL; RO2O: optional)")
    env: str = option("", "env id trained in online; empty means the pretrained run's env")
    sim_gap: list[str] = option([], "dynamics-gap kwargs of the training env, name=value (e.g. gravity_scale=2.0); evaluation always uses the nominal env")
    env_kwargs: list[str] = option([], "name=value kwargs for the env, train and eval; values are YAML scalars (e.g. domain_id=5,transport=dds)")
    data: str = option("", "offline store for mixed batches and the held-out TD diagnostic; empty means the pretrained run's data")
    real_data: str = option("", "H2O, DARC: the real-dynamics dataset (overrides --data)")
    sampling: Sampling = option("uniform", "how the offline share of each batch is drawn: uniform, or weighted by each episode's return or advantage (agent/trajectory_weights.py)")
    sampling_temperature: float = option(0.1, "weighted sampling: episodes' scores (0 to 1) are divided by this before exp", gt=0)
    online_store: str = option("", "store the online episodes are appended to; empty means <out>/online.zarr")
    out: str = option("", "run directory (config, checkpoints, metrics, TensorBoard)")
    steps: int = option(50_000, "online environment steps in total", min=1)
    max_minutes: float = option(0.0, "wall-clock budget in minutes (0: none); the run checkpoints and stops when it is spent", min=0)
    offline_steps: int = option(0, "offline updates on the offline data before going online (RO2O pretrains itself)", min=0)
    warmup_steps: int | None = option(None, "environment steps before the first update (empty: the algorithm's default)", min=0)
    warmup_policy: Literal["default", "policy", "random"] = option("default", "who acts during warm-up (default: the algorithm's)")
    utd: int | None = option(None, "update-to-data ratio K: critic updates per environment step (empty: the algorithm's)", min=1)
    offline_ratio: float | None = option(None, "share of each batch drawn from the offline data (empty: the algorithm's)", min=0, max=1)
    batch_size: int = option(256, "transitions per critic update", min=1)
    eval_every: int = option(5_000, "evaluate every this many environment steps (and at step 0, the offline start)", min=1)
    eval_episodes: int = option(5, "episodes per evaluation", min=0)
    calibration_horizon: int = option(0, "Q calibration against rollouts this long, past the task's time limit (0: off; "
                                         "sims/Arm* tasks): q_calibration_gap_long beside the bootstrapped one", min=0)
    calibration_episodes: int = option(3, "episodes per evaluation for the long-rollout calibration", min=1)
    checkpoint_every: int = option(5_000, "checkpoint at the first episode end after every this many environment steps", min=1)
    log_every: int = option(1_000, "write training metrics every this many environment steps", min=1)
    heldout_fraction: float = option(0.05, "share of the offline episodes held out for the TD-error diagnostic", min=0, lt=1)
    seed: int = option(0, "seed for networks, sampling and episode resets", min=0)
    device: str = option("cpu", "torch device; auto picks cuda when torch sees one", pattern="device")
    actor_learner: bool = option(False, "run the actor (env, control loop) and the learner in separate processes (docs/ros2.md, Timing)")
    control_rate: float = option(20.0, "actor-learner: the actor's control rate in Hz; 0 leaves pacing to the env (sims run unpaced, robot envs pace themselves)", min=0)
    weight_push_seconds: float = option(1.0, "actor-learner: the learner pushes new actor weights this often (seconds); the actor swaps them between steps", gt=0)
    auto: AutoConfig = section(AutoConfig, "regime-aware choice (--algo auto)")
    wsrl: WSRLConfig = section(WSRLConfig, "WSRL settings")
    ro2o: RO2OConfig = section(RO2OConfig, "RO2O settings")
    h2o: H2OConfig = section(H2OConfig, "H2O settings")
    darc: DARCConfig = section(DARCConfig, "DARC settings")
    calql: CalQLConfig = section(CalQLConfig, "Cal-QL settings (fine-tuning)")
    rlpd: RLPDConfig = section(RLPDConfig, "RLPD settings")
    iql: IQLConfig = section(IQLConfig, "IQL settings (fine-tuning)")
    sac: SACConfig = section(SACConfig, "SAC settings")


def loop_setting(cfg: FinetuneConfig, name: str):
    """A loop setting, or the algorithm's default when the config leaves it empty."""
    value = getattr(cfg, name)
    if value is None or value == "default":
        return ALGO_DEFAULTS[cfg.algo][name]
    return value


def parse_gap(items: list[str]) -> dict[str, float]:
    from sims.gaps import parse_assignments

    return parse_assignments(items, "--sim-gap")


def parse_env_kwargs(items: list[str]) -> dict:
    """``["domain_id=5", "transport=dds"]`` as keyword arguments, each value read as a YAML scalar."""
    import yaml

    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--env-kwargs entries must look like name=value (e.g. domain_id=5), got {item!r}.")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, (dict, list)) or (parsed is None and value.strip() not in ("", "null", "~")):
            raise ValueError(f"--env-kwargs value of {name.strip()!r} must be a single YAML scalar (number, string, "
                             f"true/false), got {value!r}.")
        out[name.strip()] = parsed
    return out
