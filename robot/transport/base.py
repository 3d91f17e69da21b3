"""The transport contract: publishers and polled subscriptions with ROS 2 QoS.

A subscription buffers what arrives (in whatever thread the transport receives on) and
the control loop polls it: :meth:`Subscription.take` for every message since the last
take (:meth:`Subscription.take_stamped` with their arrival times), :meth:`Subscription.latest` for the newest one and when it arrived,
:meth:`Subscription.wait` to block until something new is there. Polling keeps the
control loop in charge of its own timing; no user code runs in a middleware thread.
"""
from __future__ import annotations

import collections
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

M = TypeVar("M")


@dataclass(frozen=True)
class QoS:
    """The part of a ROS 2 QoS profile the bridge uses (history is always keep-last)."""

    reliable: bool = True
    """Reliable delivery (retransmit lost samples) or best effort."""
    depth: int = 10
    """Keep-last history depth, on the writer and in the subscription's queue."""
    transient_local: bool = False
    """Keep the last ``depth`` samples for subscriptions that join later (a latched topic)."""

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"QoS depth must be an integer >= 1, found {self.depth!r}.")


SENSOR_DATA = QoS(reliable=False, depth=5)
RELIABLE = QoS(reliable=True, depth=10)
COMMAND = QoS(reliable=True, depth=1)
LATCHED = QoS(reliable=True, depth=1, transient_local=True)

_TOPIC = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def check_topic(topic: str) -> str:
    """Return the fully qualified topic name (leading ``/``) or raise for an invalid one."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or "__" in topic:
        raise ValueError(
            f"A ROS 2 topic name must be like '/joint_states' (letters, digits and '_' in '/'-separated parts, "
            f"each not starting with a digit, no '__'), found {topic!r}."
        )
    return topic if topic.startswith("/") else "/" + topic


def check_msg_type(msg_type: Any) -> None:
    if not (isinstance(msg_type, type) and getattr(msg_type, "ROS_TYPE", "") and hasattr(msg_type, "deserialize")):
        raise ValueError(f"msg_type must be a message class from robot.msgs (with ROS_TYPE), found {msg_type!r}.")


class Publisher(ABC, Generic[M]):
    """Sends messages of one type on one topic."""

    def __init__(self, topic: str, msg_type: type[M], qos: QoS):
        self.topic, self.msg_type, self.qos = topic, msg_type, qos
        self.closed = False

    def publish(self, msg: M) -> None:
        if self.closed:
            raise RuntimeError(f"The publisher on {self.topic} is closed; create a new one to publish again.")
        if type(msg) is not self.msg_type:
            raise ValueError(
                f"The publisher on {self.topic} sends {self.msg_type.__name__}, found a {type(msg).__name__}."
            )
        self._publish(msg)

    @abstractmethod
    def _publish(self, msg: M) -> None: ...

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def _close(self) -> None:
        """Release middleware resources (override when there are any)."""


class Subscription(Generic[M]):
    """Receives messages of one type on one topic into a bounded queue.

    A transport calls :meth:`_deliver` from its receive thread; everything else is for
    the user. The queue keeps the newest ``qos.depth`` messages not yet taken.
    """

    def __init__(self, topic: str, msg_type: type[M], qos: QoS):
        self.topic, self.msg_type, self.qos = topic, msg_type, qos
        self.closed = False
        self.received = 0
        """Messages delivered so far (including those dropped from a full queue)."""
        self.dropped = 0
        """Messages pushed out of the queue before anyone took them."""
        self._queue: collections.deque[tuple[M, int]] = collections.deque()
        self._latest: tuple[M, int] | None = None
        self._cond = threading.Condition()

    def _deliver(self, msg: M, received_ns: int | None = None) -> None:
        stamp = time.monotonic_ns() if received_ns is None else received_ns
        with self._cond:
            if self.closed:
                return
            if len(self._queue) == self.qos.depth:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((msg, stamp))
            self._latest = (msg, stamp)
            self.received += 1
            self._cond.notify_all()

    def take(self) -> list[M]:
        """All messages received since the last take, oldest first (at most ``qos.depth``)."""
        return [msg for msg, _ in self.take_stamped()]

    def take_stamped(self) -> list[tuple[M, int]]:
        """As :meth:`take`, each message with its ``time.monotonic_ns()`` arrival time."""
        with self._cond:
            taken = list(self._queue)
            self._queue.clear()
        return taken

    def latest(self) -> tuple[M, int] | None:
        """The newest message ever received and its ``time.monotonic_ns()`` arrival time, or None."""
        with self._cond:
            return self._latest

    def wait(self, timeout_s: float) -> bool:
        """Block until a message not yet taken is available; False on timeout or close."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while not self._queue and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return bool(self._queue)

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._close()

    def _close(self) -> None:
        """Release middleware resources (override when there are any)."""


class Transport(ABC):
    """Creates publishers and subscriptions on one ROS 2 domain; closing it closes them all."""

    kind = ""

    def __init__(self) -> None:
        self.closed = False
        self._endpoints: list[Publisher[Any] | Subscription[Any]] = []
        self._lock = threading.Lock()

    def publisher(self, topic: str, msg_type: type[M], qos: QoS = RELIABLE) -> Publisher[M]:
        name = check_topic(topic)
        check_msg_type(msg_type)
        self._check_open()
        pub = self._publisher(name, msg_type, qos)
        with self._lock:
            self._endpoints.append(pub)
        return pub

    def subscription(self, topic: str, msg_type: type[M], qos: QoS = RELIABLE) -> Subscription[M]:
        name = check_topic(topic)
        check_msg_type(msg_type)
        self._check_open()
        sub = self._subscription(name, msg_type, qos)
        with self._lock:
            self._endpoints.append(sub)
        return sub

    @abstractmethod
    def _publisher(self, topic: str, msg_type: type[M], qos: QoS) -> Publisher[M]: ...

    @abstractmethod
    def _subscription(self, topic: str, msg_type: type[M], qos: QoS) -> Subscription[M]: ...

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"The {self.kind} transport is closed; make a new one with make_transport().")

    def close(self) -> None:
        """Close every publisher and subscription, then the transport itself (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            endpoint.close()
        self._close()

    def _close(self) -> None:
        """Release middleware resources (override when there are any)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
