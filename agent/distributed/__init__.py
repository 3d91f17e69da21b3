"""Running the same commands on a Ray cluster (``pip install 'agent[ray]'``): rollouts on
many actors, the store kept by one writer."""
from __future__ import annotations

import os


def require_ray():
    """The ray module, or one sentence saying what to install."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the ray package, which is not installed: pip install 'agent[ray]'.") from None
    return ray


def connect(address: str, actors: int):
    """Join or start a cluster: ``local`` starts one in this process with a CPU slot per
    actor; ``auto`` joins the cluster this machine belongs to; anything else is a cluster
    address (``ray://head:10001``). Returns (ray, started), ``started`` when this call
    started it and must shut it down."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "local":
            ray.init(num_cpus=max(actors, os.cpu_count() or 1), **quiet)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError... for an unreachable cluster
        raise ValueError(f"--ray {address}: cannot start or reach a Ray cluster ({type(exc).__name__}: {exc}); "
                         f"use --ray local for a cluster in this process, or the head's address.") from None
    return ray, True
