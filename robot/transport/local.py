"""An in-process bus with the DDS matching rules, for unit tests and single-process runs.

Transports made with the same domain id share one bus, so a simulated driver and the
arm env in one process talk to each other as they would over DDS. Every message goes
through its CDR bytes on the way (the subscriber gets a decoded copy, never the
publisher's object). QoS matching follows DDS: a best-effort writer does not reach a
reliable reader, a transient-local reader needs a transient-local writer, and a
transient-local writer hands its last ``depth`` messages to readers that join later.
Unlike DDS, using one topic with two message types is an error here, not a silent
mismatch.
"""
from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

from robot.transport.base import Publisher, QoS, Subscription, Transport

M = TypeVar("M")


def qos_compatible(writer: QoS, reader: QoS) -> bool:
    """Whether a writer with QoS ``writer`` matches a reader with QoS ``reader`` (DDS rules)."""
    if reader.reliable and not writer.reliable:
        return False
    if reader.transient_local and not writer.transient_local:
        return False
    return True


class _Topic:
    def __init__(self, msg_type: type) -> None:
        self.msg_type = msg_type
        self.publishers: list[LocalPublisher[Any]] = []
        self.subscriptions: list[LocalSubscription[Any]] = []


class _Bus:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.topics: dict[str, _Topic] = {}

    def topic(self, name: str, msg_type: type) -> _Topic:
        entry = self.topics.get(name)
        if entry is None:
            entry = self.topics[name] = _Topic(msg_type)
        elif entry.msg_type is not msg_type:
            raise ValueError(
                f"Topic {name} already carries {entry.msg_type.ROS_TYPE} on this bus, "  # type: ignore[attr-defined]
                f"found a request for {msg_type.ROS_TYPE}."  # type: ignore[attr-defined]
            )
        return entry


_BUSES: dict[int, _Bus] = {}
_BUSES_LOCK = threading.Lock()


def _bus(domain_id: int) -> _Bus:
    with _BUSES_LOCK:
        return _BUSES.setdefault(domain_id, _Bus())


class LocalPublisher(Publisher[M]):
    def __init__(self, bus: _Bus, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._bus = bus
        self._history: list[bytes] = []  # kept for late transient-local readers

    def _publish(self, msg: M) -> None:
        data = msg.serialize()  # type: ignore[attr-defined]
        now = time.monotonic_ns()
        with self._bus.lock:
            if self.qos.transient_local:
                self._history = (self._history + [data])[-self.qos.depth:]
            readers = [s for s in self._bus.topics[self.topic].subscriptions if qos_compatible(self.qos, s.qos)]
        for reader in readers:
            reader._deliver(self.msg_type.deserialize(data), now)  # type: ignore[attr-defined]

    def _close(self) -> None:
        with self._bus.lock:
            self._bus.topics[self.topic].publishers.remove(self)


class LocalSubscription(Subscription[M]):
    def __init__(self, bus: _Bus, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._bus = bus

    def _close(self) -> None:
        with self._bus.lock:
            self._bus.topics[self.topic].subscriptions.remove(self)


class LocalTransport(Transport):
    """In-process transport; transports with the same ``domain_id`` share a bus."""

    kind = "local"

    def __init__(self, domain_id: int = 0, node_name: str = "agent"):
        super().__init__()
        self.domain_id, self.node_name = domain_id, node_name
        self._bus = _bus(domain_id)

    def _publisher(self, topic: str, msg_type: type[M], qos: QoS) -> Publisher[M]:
        pub = LocalPublisher(self._bus, topic, msg_type, qos)
        with self._bus.lock:
            self._bus.topic(topic, msg_type).publishers.append(pub)
        return pub

    def _subscription(self, topic: str, msg_type: type[M], qos: QoS) -> Subscription[M]:
        sub = LocalSubscription(self._bus, topic, msg_type, qos)
        with self._bus.lock:
            entry = self._bus.topic(topic, msg_type)
            entry.subscriptions.append(sub)
            if qos.transient_local:  # under the bus lock, so no newer message can overtake the history
                now = time.monotonic_ns()
                for pub in entry.publishers:
                    if qos_compatible(pub.qos, qos):
                        for data in pub._history:
                            sub._deliver(msg_type.deserialize(data), now)  # type: ignore[attr-defined]
        return sub
