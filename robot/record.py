"""Recording a robot run to an MCAP rosbag (docs/ros2.md, "Recording").

A :class:`Recorder` writes ROS 2 messages with rosbags' rosbag2 writer and its MCAP
storage, so ``ros2 bag info/play`` and Foxglove open the result. A rosbag2 bag is a
directory: ``<path>/<name>.mcap`` plus ``<path>/metadata.yaml`` (metadata version 8,
the oldest rosbags writes, which the rosbag2 of Humble and of Jazzy both read). The
type store (``humble`` or ``jazzy``) supplies each topic's message definition and type
hash; the message definitions the bridge uses are the same in both.

A message is given as any of

* an object with ``ROS_TYPE`` and ``serialize()`` (the classes of :mod:`robot.msgs`),
* a message object of rosbags' own type store (it carries ``__msgtype__``),
* a pair ``(ros_type, cdr_bytes)``, e.g. ``("std_msgs/msg/String", raw)``.

A recording is never overwritten: a path that exists is refused. A recorder closed
after an error still writes the metadata, so what was recorded up to a crash stays
readable.
"""
from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Self

TYPESTORES = ("humble", "jazzy")
RECORDINGS_DIR = "recordings"
_BAG_VERSION = 8


def recording_path(run_dir: str | Path, episode_index: int) -> Path:
    """Where episode ``episode_index`` of a run is recorded: next to the run's store,
    ``<run_dir>/recordings/episode_000012`` (a bag directory holding
    ``episode_000012.mcap`` and ``metadata.yaml``)."""
    if isinstance(episode_index, bool) or not isinstance(episode_index, int) or episode_index < 0:
        raise ValueError(f"episode_index must be a non-negative integer, found {episode_index!r}.")
    return Path(run_dir) / RECORDINGS_DIR / f"episode_{episode_index:06d}"


class Recorder:
    """``Recorder(path, typestore="humble")``; ``write(topic, msg, t_ns)`` for each
    message, then ``close()`` (or use it as a context manager)."""

    def __init__(self, path: str | Path, typestore: str = "humble"):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if typestore not in TYPESTORES:
            raise ValueError(f"typestore must be one of {', '.join(TYPESTORES)}, found {typestore!r}.")
        path = Path(path)
        if path.suffix == ".mcap":
            raise ValueError(f"a recording path names the bag directory (rosbag2 writes <dir>/<dir name>.mcap and "
                             f"metadata.yaml in it), found a path ending in .mcap: {str(path)!r}; drop the suffix.")
        if path.exists():
            raise ValueError(f"a recording already exists at {str(path)!r} and recordings are never overwritten; "
                             f"choose a new path.")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.typestore_name = typestore
        self._types = get_typestore(Stores.ROS2_HUMBLE if typestore == "humble" else Stores.ROS2_JAZZY)
        self._writer: Any = Writer(path, version=_BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}  # topic -> rosbags connection
        self.counts: dict[str, int] = {}

    @property
    def closed(self) -> bool:
        return self._writer is None

    def _encode(self, msg: object) -> tuple[str, bytes]:
        """``msg`` as (ROS type name, CDR bytes)."""
        if isinstance(msg, tuple):
            if len(msg) != 2 or not isinstance(msg[0], str) or not isinstance(msg[1], (bytes, bytearray, memoryview)):
                raise ValueError(f"a raw message must be a pair (ros_type: str, cdr_bytes: bytes), found "
                                 f"({', '.join(type(m).__name__ for m in msg)}).")
            ros_type, data = msg[0], bytes(msg[1])
        elif hasattr(msg, "ROS_TYPE") and callable(getattr(msg, "serialize", None)):
            ros_type, data = str(msg.ROS_TYPE), bytes(msg.serialize())  # type: ignore[attr-defined]
        elif hasattr(msg, "__msgtype__"):
            ros_type = str(msg.__msgtype__)
            data = bytes(self._types.serialize_cdr(msg, ros_type))
        else:
            raise ValueError(f"a message must have ROS_TYPE and serialize(), be a rosbags message, or be a pair "
                             f"(ros_type, cdr_bytes); found a {type(msg).__name__}.")
        if ros_type not in self._types.types:
            raise ValueError(f"message type {ros_type!r} is not in the {self.typestore_name} type store; expected a "
                             f"name like 'sensor_msgs/msg/JointState'.")
        if len(data) < 4 or data[:2] not in (b"\x00\x01", b"\x00\x00"):
            raise ValueError(f"{ros_type} data must be CDR bytes starting with the encapsulation header 00 01 00 00 "
                             f"(little-endian) or 00 00 00 00, found {data[:4].hex(' ') or 'no bytes'}.")
        return ros_type, data

    def write(self, topic: str, msg: object, t_ns: int) -> None:
        """Record ``msg`` on ``topic`` with receive time ``t_ns`` (nanoseconds since the epoch)."""
        if self._writer is None:
            raise ValueError(f"the recording at {str(self.path)!r} is closed; open a new Recorder to record more.")
        if not isinstance(topic, str) or not topic.startswith("/") or len(topic) < 2:
            raise ValueError(f"a topic must be an absolute ROS name such as '/joint_states', found {topic!r}.")
        if isinstance(t_ns, bool) or not isinstance(t_ns, int) or t_ns < 0:
            raise ValueError(f"t_ns must be a non-negative integer of nanoseconds, found {t_ns!r}.")
        ros_type, data = self._encode(msg)
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, ros_type, typestore=self._types)
            self._connections[topic] = connection
            self.counts[topic] = 0
        elif connection.msgtype != ros_type:
            raise ValueError(f"topic {topic!r} is recorded as {connection.msgtype}, found a {ros_type} message; "
                             f"one topic carries one type.")
        self._writer.write(connection, t_ns, data)
        self.counts[topic] += 1

    def close(self) -> None:
        """Write the MCAP summary and metadata.yaml; closing twice is harmless."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()  # also after an error: a crashed episode's recording is the one most worth reading
