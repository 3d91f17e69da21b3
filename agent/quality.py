"""Dataset quality measures of "A Dataset Perspective on Offline Reinforcement Learning"
(Schweighofer et al., 2022), for ``agent inspect --quality``.

* **TQ**, trajectory quality: how much return the data's behaviour earns, between a
  random policy's return (0) and the best policy's (1):
  ``TQ = (mean episode return - R_random) / (R_best - R_random)``, with the task's
  reference returns (the ones normalized scores use).
* **SACo**, state-action coverage: how many distinct state-action pairs the data visits,
  relative to a reference dataset: ``SACo = u(D) / u(reference)``. The paper counts
  unique pairs of discrete MDPs. A grid over every dimension of a robot's (s, a) (35 on
  the arm) gives nearly every transition a cell of its own, so u would count transitions,
  not coverage; here (s, a), standardized by the reference, is projected on the
  reference's ``components`` leading principal directions (default 4; 0 keeps every
  dimension), each cut into ``bins`` equal intervals over the reference's range (values
  outside fall into the end intervals), and u counts the distinct cells. The reference defaults to the whole
  store (every source together), so SACo says how much of what the store covers each
  part covers; the paper's reference is the replay of an online learner's whole run,
  which ``--reference STORE`` (e.g. a replay-tier store of the task) gives.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

DEFAULT_BINS = 8
DEFAULT_COMPONENTS = 4


def trajectory_quality(returns: np.ndarray, reference_returns: tuple[float, float] | None) -> float | None:
    """TQ of a set of episode returns, None when the task has no reference returns."""
    if reference_returns is None or len(returns) == 0:
        return None
    low, high = reference_returns
    return float((np.mean(returns) - low) / (high - low))


def cells(pairs: np.ndarray, low: np.ndarray, high: np.ndarray, bins: int) -> np.ndarray:
    """The grid cell of each (s, a) row: per dimension an interval index in [0, bins)."""
    span = np.where(high > low, high - low, 1.0)
    index = np.floor((pairs - low) / span * bins).astype(np.int64)
    return np.clip(index, 0, bins - 1)


def unique_pairs(pairs: np.ndarray, low: np.ndarray, high: np.ndarray, bins: int) -> int:
    """u: the number of distinct grid cells the rows of ``pairs`` fall in."""
    if len(pairs) == 0:
        return 0
    return int(len(np.unique(cells(pairs, low, high, bins), axis=0)))


def projection(reference: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, basis): x -> ((x - mean) / std) @ basis maps (s, a) rows onto the reference's
    ``components`` leading principal directions (all dimensions, unrotated, for 0)."""
    mean, std = reference.mean(0), reference.std(0) + 1e-9
    if components <= 0 or components >= reference.shape[1]:
        return mean, std, np.eye(reference.shape[1])
    _, _, vt = np.linalg.svd((reference - mean) / std, full_matrices=False)
    return mean, std, vt[:components].T


def quality(obs: np.ndarray, action: np.ndarray, episode: np.ndarray, returns: np.ndarray, groups: dict[str, np.ndarray],
            reference_returns: tuple[float, float] | None, reference: np.ndarray | None = None,
            bins: int = DEFAULT_BINS, components: int = DEFAULT_COMPONENTS) -> dict:
    """TQ and SACo per group (a boolean mask over episodes), over the transitions ``obs``,
    ``action`` with their episode index ``episode``; ``reference`` holds the reference's
    (s, a) rows (default: all of these)."""
    if bins < 1:
        raise ValueError(f"--bins must be at least 1, found {bins}.")
    pairs = np.concatenate([obs, action], axis=1).astype(np.float64)
    ref = pairs if reference is None else np.asarray(reference, np.float64)
    if ref.shape[1] != pairs.shape[1]:
        raise ValueError(f"the reference's (s, a) rows have {ref.shape[1]} values, this store's {pairs.shape[1]}; "
                         f"compare stores of the same task.")
    mean, std, basis = projection(ref, components)
    pairs, ref = ((pairs - mean) / std) @ basis, ((ref - mean) / std) @ basis
    low, high = ref.min(0), ref.max(0)
    u_ref = unique_pairs(ref, low, high, bins)
    out = {}
    for name, mask in groups.items():
        rows = mask[episode]
        u = unique_pairs(pairs[rows], low, high, bins)
        out[name] = {"episodes": int(mask.sum()), "tq": trajectory_quality(returns[mask], reference_returns),
                     "saco": u / u_ref if u_ref else None, "unique_pairs": u}
    dims = basis.shape[1]
    space = (f"(s, a) standardized and projected on the reference's {dims} leading principal directions"
             if dims < basis.shape[0] else f"each of the {dims} standardized (s, a) dimensions")
    return {"groups": out, "reference_unique_pairs": u_ref, "bins": bins, "components": dims,
            "discretization": f"{space}, cut into {bins} equal intervals over the reference's range; u = distinct cells"}


def store_quality(store, reference=None, bins: int = DEFAULT_BINS, components: int = DEFAULT_COMPONENTS) -> dict:
    """TQ and SACo of a store's sources (and their splits) against ``reference`` (a Store, or None: itself)."""
    from agent.envs import reference_returns
    from agent.store import load_transitions

    data = load_transitions(store, episode_attrs=False)
    episode = np.repeat(np.arange(store.num_episodes), np.diff(np.concatenate([[0], store.episode_ends()])))
    attrs = store.episode_attrs()
    ref_pairs = None
    if reference is not None:
        if reference.env_id != store.env_id:
            raise ValueError(f"--reference holds {reference.env_id} episodes, this store {store.env_id}; "
                             f"coverage is compared within one task.")
        ref = load_transitions(reference, episode_attrs=False)
        ref_pairs = np.concatenate([ref.obs[:reference.num_steps], ref.action], axis=1)
    result = quality(data.obs[:store.num_steps], data.action, episode, attrs["return"], store_groups(attrs),
                     reference_returns(store.env_id), ref_pairs, bins, components)
    result["reference"] = str(reference.path) if reference is not None else "this store (all sources)"
    return result


def format_quality(result: dict) -> str:
    lines = [f"quality: TQ (0 random, 1 best) and SACo against {result['reference']} "
             f"({result['reference_unique_pairs']} cells; {result['discretization']})",
             f"{'group':<40}{'episodes':>9}{'TQ':>8}{'SACo':>8}{'cells':>9}"]
    for name, g in result["groups"].items():
        tq = "-" if g["tq"] is None else f"{g['tq']:.3f}"
        saco = "-" if g["saco"] is None else f"{g['saco']:.3f}"
        lines.append(f"{name:<40}{g['episodes']:>9}{tq:>8}{saco:>8}{g['unique_pairs']:>9}")
    return "\n".join(lines)


def store_groups(attrs: dict) -> dict[str, np.ndarray]:
    """Episode masks per source and per source/split (splits only where a source has several)."""
    groups: dict[str, np.ndarray] = {"all": np.ones(len(attrs["source"]), bool)}
    by_source = defaultdict(list)
    for source in sorted(set(attrs["source"].tolist())):
        mask = attrs["source"] == source
        groups[f"source={source}"] = mask
        by_source[source] = sorted(set(attrs["split"][mask].tolist()))
    for source, splits in by_source.items():
        if len(splits) > 1:
            for split in splits:
                groups[f"source={source},split={split or '-'}"] = (attrs["source"] == source) & (attrs["split"] == split)
    return groups


def plot(result: dict, path: str, title: str) -> None:
    """TQ against SACo, one point per group, as the paper plots its datasets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    for name, g in result["groups"].items():
        if g["tq"] is None or g["saco"] is None:
            continue
        ax.scatter(g["saco"], g["tq"])
        ax.annotate(name, (g["saco"], g["tq"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("SACo (state-action coverage)")
    ax.set_ylabel("TQ (trajectory quality)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
