"""Plain CDR (XCDR1, little-endian) as ROS 2 puts it on the wire.

A message is a ``@final`` struct: its fields in the order of the ``.msg`` file, nested
structs inlined, no member headers. Each primitive is aligned to its own size (8 at
most) counted from the first byte after the 4-byte encapsulation header
``00 01 00 00``. Strings are a uint32 length that counts a terminating NUL, the UTF-8
bytes, and the NUL. Sequences are a uint32 element count followed by the elements; an
empty sequence of float64 adds no alignment padding after its count.

Message classes describe themselves with a tuple of ``(name, kind)`` pairs, where kind
is one of the primitive names below, ``"float64[]"``, ``"string[]"``, a message class
(a nested struct) or ``Sequence(cls)`` (a sequence of nested structs).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

ENCAPSULATION_CDR_LE = b"\x00\x01\x00\x00"

# name -> (struct format, size == alignment)
PRIMITIVES: dict[str, tuple[str, int]] = {
    "bool": ("<?", 1),
    "byte": ("<B", 1),
    "uint8": ("<B", 1),
    "int8": ("<b", 1),
    "int32": ("<i", 4),
    "uint32": ("<I", 4),
    "float64": ("<d", 8),
}
_UINT32 = struct.Struct("<I")


@dataclass(frozen=True)
class Sequence:
    """A field that holds an unbounded sequence of nested messages of type ``cls``."""

    cls: Any


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray(ENCAPSULATION_CDR_LE)

    def align(self, size: int) -> None:
        pad = -(len(self.buf) - 4) % size
        if pad:
            self.buf += b"\x00" * pad

    def primitive(self, kind: str, value: Any, where: str) -> None:
        fmt, size = PRIMITIVES[kind]
        self.align(size)
        try:
            self.buf += struct.pack(fmt, value)
        except struct.error as exc:
            raise ValueError(f"{where} must fit the CDR type {kind}, found {value!r} ({exc}).") from None

    def uint32(self, value: int) -> None:
        self.align(4)
        self.buf += _UINT32.pack(value)

    def string(self, value: str, where: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a str, found {type(value).__name__} {value!r}.")
        data = value.encode("utf-8")
        if b"\x00" in data:
            raise ValueError(f"{where} must not contain NUL characters (CDR strings end at the first NUL), found {value!r}.")
        self.uint32(len(data) + 1)
        self.buf += data + b"\x00"

    def float64_array(self, value: Any, where: str) -> None:
        array = np.asarray(value, dtype="<f8")
        if array.ndim != 1:
            raise ValueError(f"{where} must be a 1-D sequence of float64, found an array of shape {array.shape}.")
        self.uint32(len(array))
        if len(array):
            self.align(8)
            self.buf += array.tobytes()


class _Reader:
    def __init__(self, data: bytes, type_name: str) -> None:
        self.data = memoryview(data)
        self.pos = 4
        self.type_name = type_name

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.type_name} CDR data ends early: needed {n} more bytes at offset {self.pos}, "
                f"found only {len(self.data) - self.pos}."
            )

    def align(self, size: int) -> None:
        self.pos += -(self.pos - 4) % size

    def primitive(self, kind: str) -> Any:
        fmt, size = PRIMITIVES[kind]
        self.align(size)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def uint32(self) -> int:
        return int(self.primitive("uint32"))

    def string(self) -> str:
        length = self.uint32()
        if length == 0:
            raise ValueError(f"{self.type_name} CDR data has a string of length 0 at offset {self.pos - 4}; "
                             "a CDR string counts its terminating NUL, so at least 1 was expected.")
        self._need(length)
        raw = bytes(self.data[self.pos:self.pos + length - 1])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.type_name} CDR data must hold UTF-8 strings, found {raw[:16]!r} ({exc.reason}).") from None

    def float64_array(self) -> np.ndarray:
        count = self.uint32()
        if count == 0:
            return np.zeros(0)
        self.align(8)
        self._need(8 * count)
        array = np.frombuffer(self.data, dtype="<f8", count=count, offset=self.pos).astype(np.float64)
        self.pos += 8 * count
        return array

    def count(self, minimum_element_size: int) -> int:
        count = self.uint32()
        # a corrupt count must not make us allocate gigabytes before failing
        self._need(count * minimum_element_size)
        return count


def encode(msg: Any) -> bytes:
    """Serialize a message to CDR, encapsulation header included."""
    writer = _Writer()
    _write_struct(writer, msg, type(msg).__name__)
    return bytes(writer.buf)


def decode(cls: Any, data: bytes) -> Any:
    """Deserialize CDR bytes (encapsulation header included) into a ``cls`` instance."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{cls.ROS_TYPE} data must be bytes, found {type(data).__name__}.")
    head = bytes(data[:2])
    if head != ENCAPSULATION_CDR_LE[:2]:
        raise ValueError(
            f"{cls.ROS_TYPE} data must start with the little-endian CDR header 00 01, found {head.hex(' ') or 'nothing'}."
        )
    reader = _Reader(bytes(data), cls.ROS_TYPE)
    if len(reader.data) < 4:
        raise ValueError(f"{cls.ROS_TYPE} data must hold a 4-byte encapsulation header, found {len(reader.data)} bytes.")
    msg = _read_struct(reader, cls)
    # rmw implementations pad the payload to a multiple of 4; more than that is not ours
    if len(reader.data) - reader.pos > 3:
        raise ValueError(
            f"{cls.ROS_TYPE} CDR data has {len(reader.data) - reader.pos} bytes left after the message; "
            "at most 3 bytes of padding were expected (wrong message type?)."
        )
    return msg


def _write_struct(writer: _Writer, msg: Any, where: str) -> None:
    for name, kind in type(msg).FIELDS:
        value = getattr(msg, name)
        path = f"{where}.{name}"
        if isinstance(kind, str):
            if kind == "string":
                writer.string(value, path)
            elif kind == "float64[]":
                writer.float64_array(value, path)
            elif kind == "string[]":
                writer.uint32(len(value))
                for i, item in enumerate(value):
                    writer.string(item, f"{path}[{i}]")
            else:
                writer.primitive(kind, value, path)
        elif isinstance(kind, Sequence):
            writer.uint32(len(value))
            for i, item in enumerate(value):
                _check_type(item, kind.cls, f"{path}[{i}]")
                _write_struct(writer, item, f"{path}[{i}]")
        else:
            _check_type(value, kind, path)
            _write_struct(writer, value, path)


def _check_type(value: Any, cls: Any, where: str) -> None:
    if not isinstance(value, cls):
        raise ValueError(f"{where} must be a {cls.__name__}, found {type(value).__name__}.")


def _read_struct(reader: _Reader, cls: Any) -> Any:
    values: dict[str, Any] = {}
    for name, kind in cls.FIELDS:
        if isinstance(kind, str):
            if kind == "string":
                values[name] = reader.string()
            elif kind == "float64[]":
                values[name] = reader.float64_array()
            elif kind == "string[]":
                values[name] = [reader.string() for _ in range(reader.count(5))]
            else:
                values[name] = reader.primitive(kind)
        elif isinstance(kind, Sequence):
            values[name] = [_read_struct(reader, kind.cls) for _ in range(reader.count(1))]
        else:
            values[name] = _read_struct(reader, kind)
    return cls(**values)
