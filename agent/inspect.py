"""``agent inspect``: what a store holds."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from agent.envs import normalized_score
from agent.store import Store


def summarize_store(store: Store) -> dict:
    attrs = store.episode_attrs()
    # an import whose format states no success stores False for it; report that as unknown, not 0
    unknown_success = attrs["source"] == "imported" if not store.success_recorded \
        else np.zeros(len(attrs["source"]), bool)
    by_source = {}
    for source in sorted(set(attrs["source"].tolist())):
        mask = attrs["source"] == source
        returns = attrs["return"][mask]
        by_source[source] = {
            "episodes": int(mask.sum()),
            "steps": int(attrs["length"][mask].sum()),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "normalized_score": normalized_score(store.env_id, float(returns.mean())),
            "success_rate": None if unknown_success[mask].any() else float(attrs["success"][mask].mean()),
            "quality": sorted(set(attrs["quality"][mask].tolist())),
            "splits": dict(sorted(Counter(attrs["split"][mask].tolist()).items())),
        }
    keys = {}
    for key, spec in store.array_specs.items():
        arr = store.group[key]
        keys[key] = {"shape": [store.committed_length(key), *spec["row"]], "dtype": str(spec["dtype"]),
                     "chunks": list(arr.chunks)}
    parents = [json.loads(p) for p in attrs["parents"].tolist()]
    lineage = {
        "derived_episodes": int(sum(1 for p in parents if p)),
        "generator_hashes": dict(Counter(h for h in attrs["generator_hash"].tolist() if h).most_common(5)),
        "checkpoints": dict(Counter(c for c in attrs["checkpoint"].tolist() if c).most_common(5)),
        "imported_from": store.attrs.get("imported_from"),
    }
    returns = attrs["return"]
    stats = store.stats
    return {
        "store": str(store.path),
        "env_id": store.env_id,
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "return_mean": float(returns.mean()) if returns.size else None,
        "normalized_score": normalized_score(store.env_id, float(returns.mean())) if returns.size else None,
        "success_rate": float(attrs["success"].mean()) if returns.size and not unknown_success.any() else None,
        "episode_length": {"min": int(attrs["length"].min()), "max": int(attrs["length"].max())} if returns.size else None,
        "by_source": by_source,
        "lineage": lineage,
        "keys": keys,
        "obs_mean_abs_max": float(np.abs(stats["obs_mean"]).max()) if stats["count"] else None,
        "control_rate": store.attrs.get("control_rate"),
        "software": store.attrs.get("software"),
    }


def format_summary(s: dict) -> str:
    lines = [f"store {s['store']}  env {s['env_id']}  {s['episodes']} episodes, {s['steps']} steps"]
    if s["normalized_score"] is not None:
        lines.append(f"mean return {s['return_mean']:.1f}  (normalized {s['normalized_score']:.1f})")
    elif s["return_mean"] is not None:
        success = "unknown" if s["success_rate"] is None else f"{s['success_rate']:.2f}"
        lines.append(f"mean return {s['return_mean']:.1f}  success {success}  "
                     f"length {s['episode_length']['min']}..{s['episode_length']['max']}")
    lines.append("")
    lines.append(f"{'source':<12}{'episodes':>9}{'steps':>10}{'return':>16}{'norm.':>8}{'success':>9}  quality / splits")
    for src, r in s["by_source"].items():
        norm = "-" if r["normalized_score"] is None else f"{r['normalized_score']:.1f}"
        ret = f"{r['return_mean']:.1f}±{r['return_std']:.1f}"
        splits = ",".join(f"{k}:{v}" for k, v in r["splits"].items())
        success = "unknown" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
        lines.append(f"{src:<12}{r['episodes']:>9}{r['steps']:>10}{ret:>16}{norm:>8}{success:>9}  "
                     f"{','.join(q for q in r['quality'] if q) or '-'} / {splits}")
    lin = s["lineage"]
    lines.append("")
    lines.append(f"lineage: {lin['derived_episodes']} derived episodes; generators {lin['generator_hashes'] or '-'}; "
                 f"checkpoints {lin['checkpoints'] or '-'}")
    if lin["imported_from"]:
        lines.append(f"imported from {lin['imported_from'].get('format')} {lin['imported_from'].get('path')}")
    lines.append("")
    lines.append(f"{'key':<30}{'shape':>20}{'dtype':>10}{'chunks':>16}")
    for key, k in s["keys"].items():
        lines.append(f"{key:<30}{str(tuple(k['shape'])):>20}{k['dtype']:>10}{str(tuple(k['chunks'])):>16}")
    return "\n".join(lines)
