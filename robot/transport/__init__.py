"""Transports between the bridge and ROS 2: rclpy, Cyclone DDS (pip-only), or in-process.

``make_transport("auto")`` picks rclpy when a ROS 2 installation loads in this
interpreter and the Cyclone DDS transport otherwise (with a one-line notice when rclpy is
on the path but cannot load, e.g. a ROS 2 built for another Python version); both put the
same bytes on the same DDS topics, so the other side cannot tell them apart. ``"local"``
is an in-process bus for unit tests.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from robot.transport.base import (COMMAND, LATCHED, RELIABLE, SENSOR_DATA, Publisher, QoS, Subscription,
                                  Transport)

KINDS = ("auto", "dds", "rclpy", "local")
MAX_DOMAIN_ID = 232  # the largest id whose ports fit in 16 bits with the default port mapping

__all__ = ["COMMAND", "KINDS", "LATCHED", "RELIABLE", "SENSOR_DATA", "Publisher", "QoS", "Subscription", "rclpy_available", "rclpy_status",
           "Transport", "make_transport", "resolve_domain_id"]


def resolve_domain_id(domain_id: int | None = None) -> int:
    """``domain_id``, else ``ROS_DOMAIN_ID`` from the environment, else 0; checked to be 0..232."""
    source = "domain_id"
    if domain_id is None:
        raw = os.environ.get("ROS_DOMAIN_ID", "").strip()
        if not raw:
            return 0
        source = "ROS_DOMAIN_ID"
        try:
            domain_id = int(raw)
        except ValueError:
            raise ValueError(f"ROS_DOMAIN_ID must be an integer from 0 to {MAX_DOMAIN_ID}, found {raw!r}.") from None
    if isinstance(domain_id, bool) or not isinstance(domain_id, int) or not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise ValueError(f"{source} must be an integer from 0 to {MAX_DOMAIN_ID}, found {domain_id!r}.")
    return domain_id


def rclpy_status() -> tuple[bool, str]:
    """(usable, why not): rclpy is on the path *and* imports in this interpreter."""
    if importlib.util.find_spec("rclpy") is None:
        return False, "needs a sourced ROS 2 installation (import rclpy), found none"
    try:
        importlib.import_module("rclpy")
    except Exception as exc:  # a ROS 2 for another Python raises ImportError, a broken one anything
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"found rclpy, but it cannot load in Python {version} ({type(exc).__name__}: {first_line})"
    return True, ""


def rclpy_available() -> bool:
    return rclpy_status()[0]


def make_transport(kind: str = "auto", domain_id: int | None = None, node_name: str = "agent", namespace: str = "/") -> Transport:
    """A transport of ``kind`` ("auto", "dds", "rclpy" or "local") on ``domain_id`` (None: ROS_DOMAIN_ID or 0)."""
    if kind not in KINDS:
        raise ValueError(f"Transport kind must be one of {', '.join(KINDS)}, found {kind!r}.")
    domain = resolve_domain_id(domain_id)
    if kind == "auto":
        usable, why = rclpy_status()
        if not usable and importlib.util.find_spec("rclpy") is not None:
            print(f"transport auto: {why}; using the Cyclone DDS transport instead.", file=sys.stderr, flush=True)
        kind = "rclpy" if usable else "dds"
    if kind == "local":
        from robot.transport.local import LocalTransport
        return LocalTransport(domain, node_name)
    if kind == "rclpy":
        usable, why = rclpy_status()
        if not usable:
            raise RuntimeError(
                f"Transport 'rclpy' {why}; source /opt/ros/<distro>/setup.bash in a shell of the Python ROS 2 was "
                f"built for, or use kind 'dds'."
            )
        from robot.transport.rclpy_transport import RclpyTransport
        return RclpyTransport(domain, node_name, namespace=namespace)
    from robot.transport.dds import DdsTransport
    return DdsTransport(domain, node_name, namespace=namespace)
