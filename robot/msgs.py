"""The ROS 2 message types the bridge speaks, as plain dataclasses with CDR codecs.

Each class mirrors one ``.msg`` definition field by field (same names, same order) and
carries ``ROS_TYPE`` (``"sensor_msgs/msg/JointState"``) and ``DDS_TYPE``
(``"sensor_msgs::msg::dds_::JointState_"``, the name rmw_cyclonedds registers).
``serialize()`` gives the bytes a ROS 2 node puts on the wire (little-endian plain CDR
with the header ``00 01 00 00``, unpadded as rosbags writes it) and ``deserialize()``
reads them back, tolerating the up-to-3 trailing padding bytes rmw implementations add.
Numeric sequences are float64 numpy arrays; two messages compare equal when their
serialized bytes do.

The definitions are identical in Humble and Jazzy; ``tests/robot/test_msgs.py`` checks
every type byte for byte against rosbags' type stores of both releases.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from robot import cdr

M = TypeVar("M", bound="Message")
_NS = 1_000_000_000


def _float64_array(value: Any, where: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a 1-D sequence of numbers, found {value!r}.") from None
    if array.ndim != 1:
        raise ValueError(f"{where} must be a 1-D sequence of numbers, found an array of shape {array.shape}.")
    return array


class Message:
    """Common behaviour of the message dataclasses (CDR codec, equality by wire bytes)."""

    ROS_TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = ()

    @classmethod
    def dds_type_name(cls) -> str:
        package, _, name = cls.ROS_TYPE.split("/")
        return f"{package}::msg::dds_::{name}_"

    def serialize(self) -> bytes:
        return cdr.encode(self)

    @classmethod
    def deserialize(cls: type[M], data: bytes) -> M:
        return cdr.decode(cls, data)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.serialize() == other.serialize()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclasses they are

    def _arrays(self, *names: str) -> None:
        for name in names:
            setattr(self, name, _float64_array(getattr(self, name), f"{type(self).__name__}.{name}"))


# -- builtin_interfaces ---------------------------------------------------------------
@dataclass(eq=False)
class Time(Message):
    sec: int = 0
    nanosec: int = 0
    ROS_TYPE: ClassVar[str] = "builtin_interfaces/msg/Time"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("sec", "int32"), ("nanosec", "uint32"))

    @classmethod
    def from_ns(cls: type[M], ns: int) -> M:
        sec, nanosec = divmod(int(ns), _NS)
        return cls(sec=sec, nanosec=nanosec)  # type: ignore[call-arg]

    def to_ns(self) -> int:
        return self.sec * _NS + self.nanosec


@dataclass(eq=False)
class Duration(Time):
    ROS_TYPE: ClassVar[str] = "builtin_interfaces/msg/Duration"


def now() -> Time:
    """The wall-clock time as a ROS ``Time`` (what a node without sim time stamps)."""
    return Time.from_ns(time.time_ns())


# -- std_msgs -------------------------------------------------------------------------
@dataclass(eq=False)
class Header(Message):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Header"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("stamp", Time), ("frame_id", "string"))


@dataclass(eq=False)
class Bool(Message):
    data: bool = False
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Bool"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("data", "bool"),)


@dataclass(eq=False)
class String(Message):
    data: str = ""
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/String"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("data", "string"),)


@dataclass(eq=False)
class MultiArrayDimension(Message):
    label: str = ""
    size: int = 0
    stride: int = 0
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/MultiArrayDimension"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("label", "string"), ("size", "uint32"), ("stride", "uint32"))


@dataclass(eq=False)
class MultiArrayLayout(Message):
    dim: list[MultiArrayDimension] = field(default_factory=list)
    data_offset: int = 0
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/MultiArrayLayout"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("dim", cdr.Sequence(MultiArrayDimension)), ("data_offset", "uint32"))


@dataclass(eq=False)
class Float64MultiArray(Message):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Float64MultiArray"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("layout", MultiArrayLayout), ("data", "float64[]"))

    def __post_init__(self) -> None:
        self._arrays("data")


# -- sensor_msgs ----------------------------------------------------------------------
@dataclass(eq=False)
class JointState(Message):
    header: Header = field(default_factory=Header)
    name: list[str] = field(default_factory=list)
    position: np.ndarray = field(default_factory=lambda: np.zeros(0))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    effort: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/JointState"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("header", Header), ("name", "string[]"),
        ("position", "float64[]"), ("velocity", "float64[]"), ("effort", "float64[]"),
    )

    def __post_init__(self) -> None:
        self.name = list(self.name)
        self._arrays("position", "velocity", "effort")


# -- trajectory_msgs ------------------------------------------------------------------
@dataclass(eq=False)
class JointTrajectoryPoint(Message):
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    velocities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    accelerations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    effort: np.ndarray = field(default_factory=lambda: np.zeros(0))
    time_from_start: Duration = field(default_factory=Duration)
    ROS_TYPE: ClassVar[str] = "trajectory_msgs/msg/JointTrajectoryPoint"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("positions", "float64[]"), ("velocities", "float64[]"), ("accelerations", "float64[]"),
        ("effort", "float64[]"), ("time_from_start", Duration),
    )

    def __post_init__(self) -> None:
        self._arrays("positions", "velocities", "accelerations", "effort")


@dataclass(eq=False)
class JointTrajectory(Message):
    header: Header = field(default_factory=Header)
    joint_names: list[str] = field(default_factory=list)
    points: list[JointTrajectoryPoint] = field(default_factory=list)
    ROS_TYPE: ClassVar[str] = "trajectory_msgs/msg/JointTrajectory"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("header", Header), ("joint_names", "string[]"), ("points", cdr.Sequence(JointTrajectoryPoint)),
    )


# -- geometry_msgs --------------------------------------------------------------------
@dataclass(eq=False)
class Point(Message):
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Point"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("x", "float64"), ("y", "float64"), ("z", "float64"))


@dataclass(eq=False)
class Quaternion(Message):
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    w: float = 1.0  # the .msg default: the identity rotation
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Quaternion"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("x", "float64"), ("y", "float64"), ("z", "float64"), ("w", "float64"))


@dataclass(eq=False)
class Pose(Message):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Pose"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("position", Point), ("orientation", Quaternion))


@dataclass(eq=False)
class PoseStamped(Message):
    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/PoseStamped"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("header", Header), ("pose", Pose))


# -- diagnostic_msgs ------------------------------------------------------------------
@dataclass(eq=False)
class KeyValue(Message):
    key: str = ""
    value: str = ""
    ROS_TYPE: ClassVar[str] = "diagnostic_msgs/msg/KeyValue"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("key", "string"), ("value", "string"))


@dataclass(eq=False)
class DiagnosticStatus(Message):
    level: int = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: list[KeyValue] = field(default_factory=list)
    OK: ClassVar[int] = 0
    WARN: ClassVar[int] = 1
    ERROR: ClassVar[int] = 2
    STALE: ClassVar[int] = 3
    ROS_TYPE: ClassVar[str] = "diagnostic_msgs/msg/DiagnosticStatus"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("level", "byte"), ("name", "string"), ("message", "string"), ("hardware_id", "string"),
        ("values", cdr.Sequence(KeyValue)),
    )


@dataclass(eq=False)
class DiagnosticArray(Message):
    header: Header = field(default_factory=Header)
    status: list[DiagnosticStatus] = field(default_factory=list)
    ROS_TYPE: ClassVar[str] = "diagnostic_msgs/msg/DiagnosticArray"
    FIELDS: ClassVar[tuple[tuple[str, Any], ...]] = (("header", Header), ("status", cdr.Sequence(DiagnosticStatus)))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.ROS_TYPE: cls
    for cls in (Time, Duration, Header, Bool, String, MultiArrayDimension, MultiArrayLayout, Float64MultiArray,
                JointState, JointTrajectoryPoint, JointTrajectory, Point, Quaternion, Pose, PoseStamped,
                KeyValue, DiagnosticStatus, DiagnosticArray)
}
"""Every message class by its ROS type name (``"std_msgs/msg/Bool"`` -> :class:`Bool`)."""
