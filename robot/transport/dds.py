"""A Cyclone DDS participant that is a ROS 2 peer without a ROS 2 installation.

It follows the conventions of rmw_cyclonedds: DDS topic ``rt`` + ROS topic name, type
name ``<pkg>::msg::dds_::<Type>_`` (key-less, ``@final``, so plain XCDR1 is the only
data representation offered or accepted), ROS QoS mapped one to one, ``ROS_DOMAIN_ID``
as the DDS domain, ``typehash=RIHS01_<hex>;`` in each reader's and writer's user data
as Iron and later send it (older releases ignore it), and ``enclave=/;`` in the
participant's. Samples are written and taken as raw CDR made by :mod:`robot.cdr`, so
what goes on the wire is exactly what the message classes serialize (padded to a
multiple of 4 as every rmw does); the Cyclone type objects only tell DDS the type's name
and shape.

Like an rmw, it announces its node and the node's readers and writers on
``ros_discovery_info`` (:mod:`robot.discovery`), so ``ros2 node list`` shows it.

Discovery is localhost-only (``robot/config/cyclonedds.xml``) unless ``CYCLONEDDS_URI``
is set, in which case Cyclone reads that configuration instead (how to reach a robot on
another host: robot/README.md).

One receive thread per transport waits on all its readers and moves arrived samples
into the subscriptions' queues, so the control loop only polls.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

from cyclonedds.core import DDSException, GuardCondition, InstanceState, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.idl import IdlStruct, make_idl_struct, types
from cyclonedds.idl.annotations import final
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from cyclonedds._clayer import ddspy_take, ddspy_write  # the raw-bytes entry points DataWriter/DataReader use
from robot import cdr, discovery
from robot.transport.base import Publisher, QoS, Subscription, Transport

M = TypeVar("M")
log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "cyclonedds.xml"
_ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any
_TAKE_BATCH = 64

_IDL_PRIMITIVES: dict[str, Any] = {
    "bool": bool, "byte": types.byte, "uint8": types.uint8, "int8": types.int8, "int32": types.int32,
    "uint32": types.uint32, "float64": types.float64, "string": str,
    "float64[]": types.sequence[types.float64], "string[]": types.sequence[str],  # type: ignore[misc]
}


@functools.cache
def idl_type(msg_type: Any) -> type[IdlStruct]:
    """The Cyclone IDL struct mirroring ``msg_type`` field by field, named as rmw_cyclonedds names it."""
    fields: dict[str, Any] = {}
    for name, kind in msg_type.FIELDS:
        if isinstance(kind, str):
            fields[name] = _IDL_PRIMITIVES[kind]
        elif isinstance(kind, cdr.Sequence):
            fields[name] = types.sequence[idl_type(kind.cls)]  # type: ignore[misc]
        else:
            fields[name] = idl_type(kind)
    struct = make_idl_struct(f"{msg_type.__name__}_", msg_type.dds_type_name(), fields)
    return final(struct)  # type: ignore[no-any-return]


@functools.cache
def type_hash(ros_type: str) -> str:
    """The RIHS01 type hash Iron and later advertise (computed by rosbags from Jazzy's definitions)."""
    from rosbags.typesys import Stores, get_typestore
    return str(get_typestore(Stores.ROS2_JAZZY).hash_rihs01(ros_type))


def dds_topic_name(ros_topic: str) -> str:
    return "rt" + ros_topic


DISCOVERY_QOS = QoS(reliable=True, transient_local=True, depth=1)  # rmw_dds_common's for ros_discovery_info


def dds_qos(qos: QoS, ros_type: str) -> Qos:
    """The DDS reader/writer QoS rmw_cyclonedds derives from a ROS QoS profile."""
    policies: list[Any] = [
        Policy.Reliability.Reliable(duration(milliseconds=100)) if qos.reliable else Policy.Reliability.BestEffort,
        Policy.History.KeepLast(qos.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True),
        Policy.Userdata(f"typehash={type_hash(ros_type)};".encode()),
    ]
    if qos.transient_local:
        policies += [
            Policy.Durability.TransientLocal,
            # Cyclone keeps a transient-local writer's history per the durability service
            Policy.DurabilityService(0, Policy.History.KeepLast(qos.depth), -1, -1, -1),
        ]
    else:
        policies.append(Policy.Durability.Volatile)
    return Qos(*policies)


class _Domains:
    """Process-wide Cyclone domains, created with our configuration and shared by transports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.domains: dict[int, tuple[Domain | None, int]] = {}

    def acquire(self, domain_id: int, config: str | None) -> None:
        with self.lock:
            domain, users = self.domains.get(domain_id, (None, 0))
            if users == 0 and config is not None:
                try:
                    domain = Domain(domain_id, config)
                except DDSException:
                    # someone in this process already made this domain with another configuration
                    log.warning("Cyclone DDS domain %d already exists in this process; its configuration, "
                                "not %s, decides discovery", domain_id, config)
                    domain = None
            self.domains[domain_id] = (domain, users + 1)

    def release(self, domain_id: int) -> None:
        with self.lock:
            domain, users = self.domains[domain_id]
            if users > 1:
                self.domains[domain_id] = (domain, users - 1)
                return
            del self.domains[domain_id]
            if domain is not None:
                _delete(domain)


_DOMAINS = _Domains()


def _delete(entity: Any) -> None:
    # cyclonedds deletes an entity when its Python object is collected; do it now instead
    entity.__del__()


def configuration() -> str | None:
    """The Cyclone configuration to create domains with: None defers to ``CYCLONEDDS_URI``."""
    if os.environ.get("CYCLONEDDS_URI", "").strip():
        return None
    return DEFAULT_CONFIG.as_uri()


class DdsPublisher(Publisher[M]):
    def __init__(self, transport: DdsTransport, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._transport = transport
        self._writer = DataWriter(transport.participant, transport._topic(topic, msg_type), dds_qos(qos, msg_type.ROS_TYPE))  # type: ignore[attr-defined]
        transport._announce(add=("writers", self._writer.guid.bytes))

    def _publish(self, msg: M) -> None:
        data = msg.serialize()  # type: ignore[attr-defined]
        data += b"\x00" * (-len(data) % 4)
        ret = ddspy_write(self._writer._ref, data)
        if ret < 0:
            raise RuntimeError(f"Cyclone DDS refused to write on {self.topic}: return code {ret}.")

    def _close(self) -> None:
        self._transport._announce(remove=("writers", self._writer.guid.bytes))
        _delete(self._writer)


class DdsSubscription(Subscription[M]):
    def __init__(self, transport: DdsTransport, topic: str, msg_type: type[M], qos: QoS):
        super().__init__(topic, msg_type, qos)
        self._transport = transport
        self.malformed = 0
        """Samples that arrived but did not decode as ``msg_type`` (logged once)."""
        self._reader = DataReader(transport.participant, transport._topic(topic, msg_type), dds_qos(qos, msg_type.ROS_TYPE))  # type: ignore[attr-defined]
        self._condition = ReadCondition(self._reader, _ANY_SAMPLE)
        transport._announce(add=("readers", self._reader.guid.bytes))

    def _drain(self) -> None:
        """Move every sample the reader holds into the queue (receive thread only)."""
        while True:
            samples = ddspy_take(self._reader._ref, _ANY_SAMPLE, _TAKE_BATCH)
            if isinstance(samples, int) or not samples:
                return
            for data, info in samples:
                if not info.valid_data:  # a writer went away: no data in it
                    continue
                try:
                    msg = self.msg_type.deserialize(data)  # type: ignore[attr-defined]
                except ValueError as exc:
                    if not self.malformed:
                        log.warning("Dropping a sample on %s that is not a valid %s: %s",
                                    self.topic, self.msg_type.ROS_TYPE, exc)  # type: ignore[attr-defined]
                    self.malformed += 1
                    continue
                self._deliver(msg)
            if len(samples) < _TAKE_BATCH:
                return

    def _close(self) -> None:
        self._transport._forget(self)
        self._transport._announce(remove=("readers", self._reader.guid.bytes))
        _delete(self._condition)
        _delete(self._reader)


class DdsTransport(Transport):
    """ROS 2 peer over Cyclone DDS; ``config`` is a Cyclone configuration (XML or file URI)
    that replaces both ``CYCLONEDDS_URI`` and the localhost default."""

    kind = "dds"

    def __init__(self, domain_id: int = 0, node_name: str = "agent", config: str | None = None, namespace: str = "/"):
        super().__init__()
        self.domain_id, self.node_name = domain_id, node_name
        self.config = config if config is not None else configuration()
        _DOMAINS.acquire(domain_id, self.config)
        try:
            self.participant = DomainParticipant(
                domain_id, qos=Qos(Policy.Userdata(b"enclave=/;"), Policy.EntityName(node_name)))
        except Exception:
            _DOMAINS.release(domain_id)
            raise
        self._announce_lock = threading.Lock()
        self._node = discovery.NodeEntities(namespace, node_name)
        self._gid_size = discovery.gid_size()
        self._discovery = DataWriter(self.participant, Topic(self.participant, discovery.TOPIC,
                                                             discovery.idl_struct(self._gid_size)),
                                     dds_qos(DISCOVERY_QOS, discovery.ROS_TYPE))
        self._announce()
        self._topics: dict[str, tuple[type, Topic[Any]]] = {}
        self._receiving: list[DdsSubscription[Any]] = []
        self._receive_lock = threading.Lock()  # held while draining and while a reader is removed
        self._waitset = WaitSet(self.participant)
        self._wakeup = GuardCondition(self.participant)
        self._waitset.attach(self._wakeup)
        self._stopping = False
        self._thread = threading.Thread(target=self._receive_loop, name=f"dds-receive-{node_name}", daemon=True)
        self._thread.start()

    def _topic(self, topic: str, msg_type: type) -> Topic[Any]:
        with self._lock:
            known = self._topics.get(topic)
            if known is None:
                known = (msg_type, Topic(self.participant, dds_topic_name(topic), idl_type(msg_type)))
                self._topics[topic] = known
            elif known[0] is not msg_type:
                raise ValueError(
                    f"Topic {topic} is already used with {known[0].ROS_TYPE} by this transport, "  # type: ignore[attr-defined]
                    f"found a request for {msg_type.ROS_TYPE}."  # type: ignore[attr-defined]
                )
            return known[1]

    def _announce(self, add: tuple[str, bytes] | None = None, remove: tuple[str, bytes] | None = None) -> None:
        """Publish this participant's node and its readers and writers on ros_discovery_info."""
        with self._announce_lock:
            if add:
                getattr(self._node, add[0]).append(add[1])
            if remove and remove[1] in getattr(self._node, remove[0]):
                getattr(self._node, remove[0]).remove(remove[1])
            data = discovery.encode(self.participant.guid.bytes, [self._node], self._gid_size)
            ret = ddspy_write(self._discovery._ref, data + b"\x00" * (-len(data) % 4))
        if ret < 0:
            log.warning("Cyclone DDS refused to write on %s: return code %d", discovery.TOPIC, ret)

    def _publisher(self, topic: str, msg_type: type[M], qos: QoS) -> Publisher[M]:
        return DdsPublisher(self, topic, msg_type, qos)

    def _subscription(self, topic: str, msg_type: type[M], qos: QoS) -> Subscription[M]:
        sub = DdsSubscription(self, topic, msg_type, qos)
        with self._receive_lock:
            self._receiving.append(sub)
            self._waitset.attach(sub._condition)
        self._wakeup.set(True)  # samples (a transient-local history) may already be there
        return sub

    def _forget(self, sub: DdsSubscription[Any]) -> None:
        with self._receive_lock:
            if sub in self._receiving:
                self._receiving.remove(sub)
                self._waitset.detach(sub._condition)

    def _receive_loop(self) -> None:
        while not self._stopping:
            self._waitset.wait(duration(seconds=1))
            self._wakeup.take()
            with self._receive_lock:
                for sub in self._receiving:
                    try:
                        sub._drain()
                    except Exception:  # a failing reader must not stop the others from receiving
                        log.exception("Receiving on %s failed", sub.topic)

    def _close(self) -> None:
        self._stopping = True
        self._wakeup.set(True)
        self._thread.join()
        for entity in (self._waitset, self._wakeup, self._discovery, self.participant):
            _delete(entity)
        _DOMAINS.release(self.domain_id)
