"""The transport as a real rclpy node, for machines with a ROS 2 installation.

The node shows up in ``ros2 node list``, obeys the ROS 2 launch/remapping machinery and
uses whatever rmw the installation selects. Messages cross as CDR bytes in both
directions (``publish`` of serialized bytes, ``raw=True`` subscriptions), so the same
:mod:`robot.msgs` classes serve both transports and no conversion code exists. Importing
this module needs rclpy; :func:`robot.transport.make_transport` says so in one line
when it is missing.
"""
from __future__ import annotations

import importlib
import threading
from typing import Any, TypeVar

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from robot.transport.base import Publisher, QoS, Subscription, Transport

M = TypeVar("M")


def ros_message_class(ros_type: str) -> Any:
    """The rosidl Python class for ``"pkg/msg/Type"`` from the sourced installation."""
    package, _, name = ros_type.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise RuntimeError(
            f"The ROS 2 installation must provide {ros_type} for the rclpy transport, found no {package}.msg.{name}; "
            f"install ros-<distro>-{package.replace('_', '-')}."
        ) from None


def qos_profile(qos: QoS) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE,
    )


class RclpyPublisher(Publisher[M]):
    def __init__(self, transport: RclpyTransport, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._node = transport.node
        ros_class = ros_message_class(msg_type.ROS_TYPE)  # type: ignore[attr-defined]
        self._publisher = self._node.create_publisher(ros_class, topic, qos_profile(qos))

    def _publish(self, msg: M) -> None:
        self._publisher.publish(msg.serialize())  # type: ignore[attr-defined]  # bytes: published as is

    def _close(self) -> None:
        self._node.destroy_publisher(self._publisher)


class RclpySubscription(Subscription[M]):
    def __init__(self, transport: RclpyTransport, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._node = transport.node
        ros_class = ros_message_class(msg_type.ROS_TYPE)  # type: ignore[attr-defined]
        self._subscription = self._node.create_subscription(
            ros_class, topic, self._on_message, qos_profile(qos), raw=True)

    def _on_message(self, data: bytes) -> None:
        self._deliver(self.msg_type.deserialize(data))  # type: ignore[attr-defined]

    def _close(self) -> None:
        self._node.destroy_subscription(self._subscription)


class RclpyTransport(Transport):
    """One rclpy node in its own context (so its domain id is its own), spun in a thread."""

    kind = "rclpy"

    def __init__(self, domain_id: int = 0, node_name: str = "agent", args: list[str] | None = None, namespace: str = "/"):
        super().__init__()
        self.domain_id, self.node_name = domain_id, node_name
        self.context = rclpy.Context()
        # args carries --ros-args (remappings, parameters) when a launch file starts the node
        self.context.init(args=args, domain_id=domain_id)
        self.node = rclpy.create_node(node_name, namespace=namespace, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"rclpy-{node_name}", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok() and not self.closed:
            self._executor.spin_once(timeout_sec=0.1)

    def _publisher(self, topic: str, msg_type: type[M], qos: QoS) -> Publisher[M]:
        return RclpyPublisher(self, topic, msg_type, qos)

    def _subscription(self, topic: str, msg_type: type[M], qos: QoS) -> Subscription[M]:
        return RclpySubscription(self, topic, msg_type, qos)

    def _close(self) -> None:
        self._thread.join()
        self._executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
