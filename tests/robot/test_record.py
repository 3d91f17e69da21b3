"""Recording to MCAP: what the Recorder writes reads back with rosbags' own reader,
type for type, message for message, in both type stores; bad input and existing
recordings are refused."""
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from robot import msgs
from robot.record import Recorder, recording_path

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
T0 = 1_700_000_000_000_000_000


def read_back(path, store: str) -> list[tuple[str, str, int, object]]:
    types = get_typestore(STORES[store])
    with Reader(path) as reader:
        return [(conn.topic, conn.msgtype, t, types.deserialize_cdr(raw, conn.msgtype))
                for conn, t, raw in reader.messages()]


@pytest.mark.parametrize("store", ["humble", "jazzy"])
def test_topics_read_back_with_types_counts_timestamps_and_values(tmp_path, store):
    types = get_typestore(STORES[store])
    path = recording_path(tmp_path / "run", 12)
    ros_string = types.types["std_msgs/msg/String"]
    with Recorder(path, typestore=store) as rec:
        for i in range(5):
            rec.write("/joint_states", msgs.JointState(header=msgs.Header(stamp=msgs.Time.from_ns(T0 + i * 50_000_000),
                                                                          frame_id="base"),
                                                       name=["j1", "j2"], position=[0.1 * i, -0.2 * i],
                                                       velocity=[1.0, 2.0], effort=[]), T0 + i * 50_000_000)
            rec.write("/forward_position_controller/commands", msgs.Float64MultiArray(data=[i, i + 0.5]),
                      T0 + i * 50_000_000 + 1_000)
        rec.write("/agent/estop", msgs.Bool(data=True), T0 + 300_000_000)
        # a rosbags message object, and raw CDR bytes serialized by rosbags
        rec.write("/agent/status", ros_string(data='{"state": "ok"}'), T0 + 310_000_000)
        rec.write("/agent/status", ("std_msgs/msg/String", types.serialize_cdr(ros_string(data="raw"), "std_msgs/msg/String")),
                  T0 + 320_000_000)
        assert rec.counts == {"/joint_states": 5, "/forward_position_controller/commands": 5, "/agent/estop": 1,
                              "/agent/status": 2}
    assert path == tmp_path / "run" / "recordings" / "episode_000012"
    assert (path / "episode_000012.mcap").is_file() and (path / "metadata.yaml").is_file()

    rows = read_back(path, store)
    assert len(rows) == 13
    by_topic: dict[str, list] = {}
    for topic, msgtype, t, msg in rows:
        by_topic.setdefault(topic, []).append((msgtype, t, msg))
    joint = by_topic["/joint_states"]
    assert {m for m, _, _ in joint} == {"sensor_msgs/msg/JointState"}
    assert [t for _, t, _ in joint] == [T0 + i * 50_000_000 for i in range(5)]
    last = joint[-1][2]
    assert list(last.name) == ["j1", "j2"] and last.header.frame_id == "base"
    np.testing.assert_array_equal(last.position, [0.4, -0.8])
    assert (last.header.stamp.sec, last.header.stamp.nanosec) == divmod(T0 + 200_000_000, 1_000_000_000)
    commands = by_topic["/forward_position_controller/commands"]
    assert {m for m, _, _ in commands} == {"std_msgs/msg/Float64MultiArray"}
    np.testing.assert_array_equal(commands[3][2].data, [3.0, 3.5])
    assert commands[3][1] == T0 + 150_001_000
    assert by_topic["/agent/estop"][0][2].data is True
    assert [m.data for _, _, m in by_topic["/agent/status"]] == ['{"state": "ok"}', "raw"]
    with Reader(path) as reader:  # the bag's own summary agrees
        assert reader.message_count == 13 and reader.start_time == T0
        assert {c.topic: c.msgcount for c in reader.connections}["/joint_states"] == 5


def test_an_existing_recording_is_never_overwritten(tmp_path):
    path = recording_path(tmp_path, 0)
    with Recorder(path) as rec:
        rec.write("/agent/estop", msgs.Bool(data=False), T0)
    before = (path / "episode_000000.mcap").read_bytes()
    with pytest.raises(ValueError, match="already exists .* never overwritten"):
        Recorder(path)
    assert (path / "episode_000000.mcap").read_bytes() == before


def test_a_recording_closed_by_an_error_stays_readable(tmp_path):
    path = tmp_path / "crash"
    with pytest.raises(RuntimeError), Recorder(path, typestore="jazzy") as rec:
        rec.write("/agent/estop", msgs.Bool(data=True), T0)
        raise RuntimeError("the episode crashed")
    assert [(topic, t) for topic, _, t, _ in read_back(path, "jazzy")] == [("/agent/estop", T0)]


@pytest.mark.parametrize("topic, msg, t_ns, match", [
    ("joint_states", msgs.Bool(data=True), T0, "absolute ROS name"),
    ("/x", msgs.Bool(data=True), -1, "non-negative integer of nanoseconds"),
    ("/x", msgs.Bool(data=True), 1.5, "non-negative integer of nanoseconds"),
    ("/x", ("std_msgs/msg/Nope", b"\x00\x01\x00\x00\x01"), T0, "not in the humble type store"),
    ("/x", ("std_msgs/msg/Bool", "not bytes"), T0, "pair"),
    ("/x", ("std_msgs/msg/Bool", b"\x07"), T0, "encapsulation header"),
    ("/x", {"data": True}, T0, "ROS_TYPE and serialize"),
])
def test_bad_input_is_refused_with_what_was_expected(tmp_path, topic, msg, t_ns, match):
    with Recorder(tmp_path / "bag") as rec, pytest.raises(ValueError, match=match):
        rec.write(topic, msg, t_ns)


def test_one_topic_carries_one_type_and_a_closed_recorder_refuses_writes(tmp_path):
    rec = Recorder(tmp_path / "bag")
    rec.write("/agent/status", msgs.String(data="a"), T0)
    with pytest.raises(ValueError, match="recorded as std_msgs/msg/String, found a std_msgs/msg/Bool"):
        rec.write("/agent/status", msgs.Bool(data=True), T0 + 1)
    rec.close()
    rec.close()
    with pytest.raises(ValueError, match="closed"):
        rec.write("/agent/status", msgs.String(data="b"), T0 + 2)


def test_paths_and_typestores_are_checked(tmp_path):
    with pytest.raises(ValueError, match="one of humble, jazzy, found 'iron'"):
        Recorder(tmp_path / "a", typestore="iron")
    with pytest.raises(ValueError, match="ending in .mcap"):
        Recorder(tmp_path / "a.mcap")
    with pytest.raises(ValueError, match="non-negative integer"):
        recording_path(tmp_path, -1)
    assert recording_path("runs/r1", 3).as_posix() == "runs/r1/recordings/episode_000003"
