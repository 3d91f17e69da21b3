"""The message classes against rosbags, an independent implementation of ROS 2 CDR.

For the Humble and the Jazzy type store: the field lists match the .msg definitions,
our bytes equal rosbags' bytes for random messages (empty sequences, unicode, odd
string lengths that move the 8-byte alignment of the float64 arrays after them), and
each side decodes what the other wrote.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from robot import cdr, msgs

STORES = {"humble": get_typestore(Stores.ROS2_HUMBLE), "jazzy": get_typestore(Stores.ROS2_JAZZY)}
ALL = sorted(msgs.MESSAGE_TYPES.values(), key=lambda c: c.ROS_TYPE)
_PRIMITIVE_NAMES = {"bool", "byte", "uint8", "int8", "int32", "uint32", "float64", "string"}


# -- conversion to and from rosbags' objects ------------------------------------------
def to_rosbags(msg, store):
    cls = store.types[msg.ROS_TYPE]
    values = {}
    for name, kind in type(msg).FIELDS:
        value = getattr(msg, name)
        if kind == "float64[]":
            values[name] = np.asarray(value, dtype=np.float64)
        elif kind == "string[]":
            values[name] = list(value)
        elif isinstance(kind, str):
            values[name] = value
        elif isinstance(kind, cdr.Sequence):
            values[name] = [to_rosbags(item, store) for item in value]
        else:
            values[name] = to_rosbags(value, store)
    return cls(**values)


def from_rosbags(obj, cls):
    values = {}
    for name, kind in cls.FIELDS:
        value = getattr(obj, name)
        if isinstance(kind, cdr.Sequence):
            values[name] = [from_rosbags(item, kind.cls) for item in value]
        elif isinstance(kind, str):
            values[name] = value
        else:
            values[name] = from_rosbags(value, kind)
    return cls(**values)


# -- random messages ------------------------------------------------------------------
_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=9)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
# ROS 2 maps `byte` to an unsigned octet and rosbags to int8: the same byte for 0..127
_leaves = {
    "bool": st.booleans(), "byte": st.integers(0, 127), "uint8": st.integers(0, 255), "int8": st.integers(-128, 127),
    "int32": st.integers(-2**31, 2**31 - 1), "uint32": st.integers(0, 2**32 - 1), "float64": _floats,
    "string": _text, "string[]": st.lists(_text, max_size=4),
    "float64[]": st.lists(_floats, max_size=5).map(lambda v: np.array(v, dtype=np.float64)),
}


def messages(cls):
    fields = {}
    for name, kind in cls.FIELDS:
        if isinstance(kind, str):
            fields[name] = _leaves[kind]
        elif isinstance(kind, cdr.Sequence):
            fields[name] = st.lists(messages(kind.cls), max_size=3)
        else:
            fields[name] = messages(kind)
    return st.builds(cls, **fields)


# -- the tests ------------------------------------------------------------------------
def _rosbags_kind(node):
    nodetype, detail = node
    if nodetype.name == "BASE":
        return detail[0]
    if nodetype.name == "NAME":
        return detail
    assert nodetype.name == "SEQUENCE" and detail[1] == 0, f"unexpected field node {node}"
    inner = _rosbags_kind(detail[0])
    return f"{inner}[]" if inner in _PRIMITIVE_NAMES else ("seq", inner)


def _our_kind(kind):
    if isinstance(kind, str):
        return kind
    if isinstance(kind, cdr.Sequence):
        return ("seq", kind.cls.ROS_TYPE)
    return kind.ROS_TYPE


@pytest.mark.parametrize("store", sorted(STORES))
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.ROS_TYPE)
def test_fields_follow_the_msg_definition(cls, store):
    _, fields = STORES[store].fielddefs[cls.ROS_TYPE]
    assert [(name, _rosbags_kind(node)) for name, node in fields] == [(n, _our_kind(k)) for n, k in cls.FIELDS]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.ROS_TYPE)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bytes_equal_rosbags_both_ways(cls, data):
    msg = data.draw(messages(cls))
    ours = msg.serialize()
    assert ours[:4] == b"\x00\x01\x00\x00"
    for name, store in STORES.items():
        theirs = store.serialize_cdr(to_rosbags(msg, store), cls.ROS_TYPE)
        assert ours == theirs, f"{name}: {ours.hex()} != {theirs.hex()}"
        decoded = cls.deserialize(theirs)
        assert decoded == msg and decoded.serialize() == theirs
        back = from_rosbags(store.deserialize_cdr(ours, cls.ROS_TYPE), cls)
        assert back == msg
    # rmw implementations pad the payload to a multiple of 4
    assert cls.deserialize(ours + b"\x00" * (-len(ours) % 4)) == msg


def test_joint_state_bytes_by_hand():
    msg = msgs.JointState(header=msgs.Header(msgs.Time(sec=1, nanosec=2), "b"), name=["j1"],
                          position=[0.5], velocity=[], effort=[])
    expected = (
        b"\x00\x01\x00\x00"                     # little-endian plain CDR; offsets below count from after it
        + struct.pack("<iI", 1, 2)              # 0: stamp
        + struct.pack("<I", 2) + b"b\x00"       # 8: frame_id, its NUL counted
        + b"\x00\x00"                           # 14: align the next uint32 to 4
        + struct.pack("<I", 1)                  # 16: one name
        + struct.pack("<I", 3) + b"j1\x00"      # 20: "j1"
        + b"\x00"                               # 27: align to 28
        + struct.pack("<I", 1)                  # 28: one position
        + struct.pack("<d", 0.5)                # 32: already 8-aligned, so no padding before it
        + struct.pack("<I", 0) + struct.pack("<I", 0)  # 40: empty velocity and effort, no padding after the counts
    )
    # a longer name puts the position count at 32, so 4 bytes of padding come before the float64 at 40
    shifted = msgs.JointState(header=msgs.Header(msgs.Time(1, 2), "b"), name=["j1234"], position=[0.5]).serialize()
    assert shifted[4 + 32:4 + 48] == struct.pack("<I", 1) + b"\x00" * 4 + struct.pack("<d", 0.5)
    assert msg.serialize() == expected
    assert msgs.JointState.deserialize(expected) == msg


def test_defaults_construct_and_round_trip():
    for cls in ALL:
        msg = cls()
        assert cls.deserialize(msg.serialize()) == msg
    assert msgs.Quaternion().w == 1.0
    assert msgs.JointState().position.dtype == np.float64


def test_time_conversions():
    t = msgs.Time.from_ns(-1)
    assert (t.sec, t.nanosec) == (-1, 999_999_999) and t.to_ns() == -1
    assert msgs.Duration.from_ns(2_500_000_000) == msgs.Duration(2, 500_000_000)
    assert isinstance(msgs.Duration.from_ns(0), msgs.Duration)
    assert math.isclose(msgs.now().to_ns() / 1e9, __import__("time").time(), abs_tol=1.0)


def test_arrays_are_float64_copies():
    source = [1, 2, 3]
    msg = msgs.Float64MultiArray(data=source)
    assert msg.data.dtype == np.float64 and msg.data.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "cls, data, expected",
    [
        (msgs.Bool, b"\x01\x00\x00\x00\x01", "must start with the little-endian CDR header 00 01, found 01 00"),
        (msgs.Bool, b"", "must start with the little-endian CDR header 00 01, found nothing"),
        (msgs.Bool, b"\x00\x01\x00", "must hold a 4-byte encapsulation header, found 3 bytes"),
        (msgs.String, b"\x00\x01\x00\x00\x05\x00\x00\x00ab", "ends early: needed 5 more bytes at offset 8, found only 2"),
        (msgs.String, b"\x00\x01\x00\x00\x00\x00\x00\x00", "string of length 0"),
        (msgs.String, b"\x00\x01\x00\x00\x03\x00\x00\x00\xff\xfe\x00", "must hold UTF-8 strings"),
        (msgs.Bool, msgs.JointState(name=["a"]).serialize(), "bytes left after the message"),
    ],
)
def test_malformed_data_is_one_clear_error(cls, data, expected):
    with pytest.raises(ValueError, match=expected) as info:
        cls.deserialize(data)
    message = info.value.args[0]
    assert message.endswith(".") and message.count(". ") == 0 and cls.ROS_TYPE in message


def test_a_huge_sequence_count_fails_before_allocating():
    data = b"\x00\x01\x00\x00" + struct.pack("<iI", 0, 0) + struct.pack("<I", 1) + b"\x00\x00\x00\x00" \
        + struct.pack("<I", 0x7FFFFFFF)
    with pytest.raises(ValueError, match="ends early"):
        msgs.JointState.deserialize(data)


@pytest.mark.parametrize(
    "msg, expected",
    [
        (msgs.Time(sec=2**31), r"Time.sec must fit the CDR type int32, found 2147483648"),
        (msgs.Header(frame_id="a\x00b"), "must not contain NUL"),
        (msgs.JointState(name=[3]), r"JointState.name\[0\] must be a str, found int"),
        (msgs.JointTrajectory(points=[msgs.Bool()]), r"JointTrajectory.points\[0\] must be a JointTrajectoryPoint"),
    ],
)
def test_bad_field_values_name_the_field(msg, expected):
    with pytest.raises(ValueError, match=expected):
        msg.serialize()


def test_non_numeric_array_is_rejected_at_construction():
    with pytest.raises(ValueError, match="JointState.position must be a 1-D sequence of numbers"):
        msgs.JointState(position=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="Float64MultiArray.data must be a 1-D sequence of numbers, found 'x'"):
        msgs.Float64MultiArray(data="x")
