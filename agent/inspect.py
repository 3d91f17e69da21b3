"""``agent inspect``: what a store holds."""
from __future__ import annotations

import numpy as np

from agent.envs import normalized_score
from agent.store import Store


def summarize_store(store: Store) -> dict:
    attrs = store.episode_attrs()
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
            "success_rate": float(attrs["success"][mask].mean()),
            "quality": sorted(set(attrs["quality"][mask].tolist())),
        }
    keys = {}
    for group in ("data", "final_obs", "meta"):
        for path, arr in _walk(store.group[group], group):
            keys[path] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks)}
    returns = attrs["return"]
    return {
        "store": str(store.path),
        "env_id": store.env_id,
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "return_mean": float(returns.mean()) if returns.size else None,
        "normalized_score": normalized_score(store.env_id, float(returns.mean())) if returns.size else None,
        "by_source": by_source,
        "keys": keys,
        "control_rate": store.attrs.get("control_rate"),
        "software": store.attrs.get("software"),
    }


def _walk(group, prefix):
    for name, arr in group.arrays():
        yield f"{prefix}/{name}", arr
    for name, sub in group.groups():
        yield from _walk(sub, f"{prefix}/{name}")


def format_summary(s: dict) -> str:
    lines = [f"store {s['store']}  env {s['env_id']}  {s['episodes']} episodes, {s['steps']} steps"]
    if s["normalized_score"] is not None:
        lines.append(f"mean return {s['return_mean']:.1f}  (normalized {s['normalized_score']:.1f})")
    lines.append("")
    lines.append(f"{'source':<12}{'episodes':>9}{'steps':>10}{'return':>16}{'norm.':>8}{'success':>9}  quality")
    for src, r in s["by_source"].items():
        norm = "-" if r["normalized_score"] is None else f"{r['normalized_score']:.1f}"
        ret = f"{r['return_mean']:.1f}±{r['return_std']:.1f}"
        lines.append(f"{src:<12}{r['episodes']:>9}{r['steps']:>10}{ret:>16}{norm:>8}{r['success_rate']:>9.2f}  {','.join(q for q in r['quality'] if q) or '-'}")
    lines.append("")
    lines.append(f"{'key':<30}{'shape':>16}{'dtype':>14}")
    for key, k in s["keys"].items():
        lines.append(f"{key:<30}{str(tuple(k['shape'])):>16}{k['dtype']:>14}")
    return "\n".join(lines)
