"""Transports: the polling contract (local and Cyclone DDS), real DDS traffic between
processes on loopback, and what a ROS 2 node would see on the wire.

Run as a script, this file is the peer process of the cross-process test (see
``peer_main``).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from robot import msgs
from robot.transport import COMMAND, LATCHED, RELIABLE, SENSOR_DATA, QoS, make_transport, rclpy_available

REPO = Path(__file__).resolve().parents[2]
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow", "forearm_roll", "wrist_pitch", "tool_roll"]


def random_domain() -> int:
    # other test runs on this machine may use DDS at the same time: stay off the common ids
    return random.randint(100, 230)


def until(predicate, timeout_s: float = 10.0, every=None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if predicate():
            return True
        time.sleep(0.02)
    return False


def joint_state(i: int, nonce: str) -> msgs.JointState:
    k = np.arange(6, dtype=np.float64)
    return msgs.JointState(header=msgs.Header(msgs.Time(sec=i, nanosec=7), frame_id=nonce), name=list(JOINTS),
                           position=0.1 * i + k, velocity=-k, effort=np.zeros(0))


# -- the polling contract, for both in-process transports ------------------------------
@pytest.fixture(params=["local", "dds"])
def pair(request):
    """Two transports on one fresh domain: a 'robot' side and an 'agent' side."""
    domain = random_domain()
    a = make_transport(request.param, domain, node_name="robot_side")
    b = make_transport(request.param, domain, node_name="agent_side")
    yield a, b
    b.close()
    a.close()


def matched(pub, sub, msg, timeout_s=10.0) -> bool:
    """Publish ``msg`` until ``sub`` gets one (DDS discovery takes a moment), then empty it."""
    ok = until(lambda: sub.wait(0.05), timeout_s, every=lambda: pub.publish(msg))
    sub.take()
    return ok


def test_take_returns_new_messages_oldest_first_bounded_by_depth(pair):
    a, b = pair
    pub = a.publisher("/joint_states", msgs.JointState, RELIABLE)
    sub = b.subscription("/joint_states", msgs.JointState, QoS(reliable=True, depth=3))
    assert sub.take() == [] and sub.latest() is None and not sub.wait(0.01)
    assert matched(pub, sub, joint_state(0, "probe"))
    for i in range(1, 6):
        pub.publish(joint_state(i, "x"))
    assert until(lambda: sub.latest() is not None and sub.latest()[0].header.stamp.sec == 5)
    taken = sub.take()
    assert [m.header.stamp.sec for m in taken] == [3, 4, 5]
    assert taken[-1] == joint_state(5, "x")
    assert sub.take() == [] and not sub.wait(0.05)


def test_latest_is_not_consumed_and_carries_the_receive_time(pair):
    a, b = pair
    pub = a.publisher("/agent/intervention", msgs.Float64MultiArray, RELIABLE)
    sub = b.subscription("/agent/intervention", msgs.Float64MultiArray, RELIABLE)
    assert matched(pub, sub, msgs.Float64MultiArray(data=[0.0]))
    before = time.monotonic_ns()
    pub.publish(msgs.Float64MultiArray(data=[1.0, 2.0]))
    assert sub.wait(10.0)
    msg, received_ns = sub.latest()
    assert msg.data.tolist() == [1.0, 2.0] and before <= received_ns <= time.monotonic_ns()
    assert sub.latest() == (msg, received_ns)
    assert len(sub.take()) == 1 and sub.latest()[0] == msg


def test_wait_wakes_up_when_a_message_arrives(pair):
    a, b = pair
    pub = a.publisher("/agent/status", msgs.String, RELIABLE)
    sub = b.subscription("/agent/status", msgs.String, RELIABLE)
    assert matched(pub, sub, msgs.String("probe"))
    timer = threading.Timer(0.2, lambda: pub.publish(msgs.String("{}")))
    start = time.monotonic()
    timer.start()
    assert sub.wait(10.0)
    assert 0.15 < time.monotonic() - start < 5.0
    timer.join()


def test_best_effort_subscription_matches_a_reliable_publisher_but_not_the_reverse(pair):
    a, b = pair
    reliable_pub = a.publisher("/joint_states", msgs.JointState, RELIABLE)
    best_effort_sub = b.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
    assert matched(reliable_pub, best_effort_sub, joint_state(1, "be"))

    best_effort_pub = a.publisher("/forward_position_controller/commands", msgs.Float64MultiArray, SENSOR_DATA)
    reliable_sub = b.subscription("/forward_position_controller/commands", msgs.Float64MultiArray, COMMAND)
    control_pub = a.publisher("/forward_position_controller/commands", msgs.Float64MultiArray, COMMAND)
    # the reliable writer on the same topic proves discovery is done, yet only its data arrives
    assert matched(control_pub, reliable_sub, msgs.Float64MultiArray(data=[1.0]))
    for _ in range(20):
        best_effort_pub.publish(msgs.Float64MultiArray(data=[666.0]))
    time.sleep(0.3)
    assert all(m.data.tolist() != [666.0] for m in reliable_sub.take())


def test_latched_message_reaches_a_late_subscriber(pair):
    a, b = pair
    pub = a.publisher("/agent/estop", msgs.Bool, LATCHED)
    pub.publish(msgs.Bool(False))
    pub.publish(msgs.Bool(True))
    late = b.subscription("/agent/estop", msgs.Bool, LATCHED)
    assert late.wait(10.0)
    assert late.take() == [msgs.Bool(True)]  # keep-last 1: only the newest one


def test_a_volatile_publisher_leaves_nothing_for_late_subscribers(pair):
    a, b = pair
    pub = a.publisher("/agent/estop", msgs.Bool, RELIABLE)
    early = b.subscription("/agent/estop", msgs.Bool, RELIABLE)
    assert matched(pub, early, msgs.Bool(True))
    late = b.subscription("/agent/estop", msgs.Bool, LATCHED)
    assert not late.wait(0.3)


def test_errors_are_one_clear_sentence(pair):
    a, _ = pair
    with pytest.raises(ValueError, match=r"topic name must be like '/joint_states'.*found 'joint states'"):
        a.publisher("joint states", msgs.JointState, RELIABLE)
    with pytest.raises(ValueError, match="msg_type must be a message class from robot.msgs"):
        a.subscription("/x", dict, RELIABLE)
    pub = a.publisher("/typed", msgs.Bool, RELIABLE)
    with pytest.raises(ValueError, match="sends Bool, found a String"):
        pub.publish(msgs.String("no"))
    with pytest.raises(ValueError, match="already .* std_msgs/msg/Bool.*found a request for std_msgs/msg/String"):
        a.subscription("/typed", msgs.String, RELIABLE)
    pub.close()
    with pytest.raises(RuntimeError, match="publisher on /typed is closed"):
        pub.publish(msgs.Bool(True))
    with pytest.raises(ValueError, match="QoS depth must be an integer >= 1, found 0"):
        QoS(depth=0)


def test_close_is_idempotent_and_wakes_waiters(pair):
    a, b = pair
    sub = b.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
    results = []
    waiter = threading.Thread(target=lambda: results.append(sub.wait(30.0)))
    waiter.start()
    time.sleep(0.1)
    start = time.monotonic()
    b.close()
    b.close()
    waiter.join(5.0)
    assert results == [False] and time.monotonic() - start < 5.0
    with pytest.raises(RuntimeError, match="transport is closed"):
        b.publisher("/x", msgs.Bool, RELIABLE)


# -- make_transport ----------------------------------------------------------------------
def test_unknown_kind_names_the_kinds():
    with pytest.raises(ValueError, match="one of auto, dds, rclpy, local, found 'zenoh'"):
        make_transport("zenoh")


def test_domain_id_comes_from_ros_domain_id(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "42")
    with make_transport("local") as t:
        assert t.domain_id == 42
    with make_transport("local", domain_id=7) as t:
        assert t.domain_id == 7
    monkeypatch.setenv("ROS_DOMAIN_ID", "forty")
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID must be an integer from 0 to 232, found 'forty'"):
        make_transport("local")
    with pytest.raises(ValueError, match="domain_id must be an integer from 0 to 232, found 300"):
        make_transport("local", domain_id=300)


@pytest.mark.skipif(rclpy_available(), reason="rclpy is installed here")
def test_rclpy_kind_without_ros_is_a_one_line_error():
    with pytest.raises(RuntimeError) as info:
        make_transport("rclpy")
    message = str(info.value)
    assert "\n" not in message and "needs a sourced ROS 2 installation" in message and "'dds'" in message


@pytest.mark.skipif(rclpy_available(), reason="rclpy loads here")
def test_auto_falls_back_to_dds_when_rclpy_is_found_but_cannot_load(tmp_path, monkeypatch, capsys):
    """A ROS 2 built for another Python on PYTHONPATH: find_spec finds rclpy, importing it fails."""
    fake = tmp_path / "rclpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'rclpy._rclpy_pybind11'\\n"
                                      "The C extension '_rclpy_pybind11.cpython-312-x86_64-linux-gnu.so' isn't present\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rclpy", raising=False)
    with make_transport("auto", random_domain()) as transport:
        assert transport.kind == "dds"
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and "found rclpy, but it cannot load in Python 3." in notice
    assert "_rclpy_pybind11" in notice and "using the Cyclone DDS transport instead" in notice
    with pytest.raises(RuntimeError, match="Transport 'rclpy' found rclpy, but it cannot load") as info:
        make_transport("rclpy")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not rclpy_available(), reason="needs a ROS 2 installation (rclpy)")
def test_rclpy_transport_talks_to_the_dds_transport():
    domain = random_domain()
    with make_transport("rclpy", domain) as ros, make_transport("dds", domain) as dds:
        pub = ros.publisher("/joint_states", msgs.JointState, RELIABLE)
        sub = dds.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        assert matched(pub, sub, joint_state(1, "rclpy"))
        back = dds.publisher("/agent/estop", msgs.Bool, LATCHED)
        back.publish(msgs.Bool(True))
        latched = ros.subscription("/agent/estop", msgs.Bool, LATCHED)
        assert latched.wait(10.0) and latched.take() == [msgs.Bool(True)]


# -- the DDS wire ------------------------------------------------------------------------
def test_shipped_config_is_localhost_only_and_used_by_default(monkeypatch):
    from robot.transport import dds
    ns = {"c": "https://cdds.io/config"}
    root = ET.parse(dds.DEFAULT_CONFIG).getroot()
    assert root.find("c:Domain", ns).get("Id") == "any"
    assert [i.get("address") for i in root.iterfind(".//c:Interfaces/c:NetworkInterface", ns)] == ["127.0.0.1"]
    assert root.findtext(".//c:General/c:AllowMulticast", namespaces=ns) == "false"
    assert root.findtext(".//c:Discovery/c:ParticipantIndex", namespaces=ns) == "auto"
    assert root.findtext(".//c:Discovery/c:MaxAutoParticipantIndex", namespaces=ns) == "32"
    assert [p.get("address") for p in root.iterfind(".//c:Peers/c:Peer", ns)] == ["127.0.0.1"]
    monkeypatch.delenv("CYCLONEDDS_URI", raising=False)
    assert dds.configuration() == dds.DEFAULT_CONFIG.as_uri()
    monkeypatch.setenv("CYCLONEDDS_URI", "file:///etc/robot-lan.xml")
    assert dds.configuration() is None  # Cyclone reads the user's file itself


def test_cyclone_types_serialize_exactly_our_bytes():
    from robot.transport.dds import idl_type
    rng = np.random.default_rng(1)
    samples = [
        joint_state(3, "wörld"), msgs.JointState(),
        msgs.Float64MultiArray(msgs.MultiArrayLayout([msgs.MultiArrayDimension("joints", 7, 7)], 1), rng.normal(size=7)),
        msgs.JointTrajectory(msgs.Header(frame_id="base"), JOINTS[:3], [
            msgs.JointTrajectoryPoint(positions=rng.normal(size=3), time_from_start=msgs.Duration(1, 5)),
            msgs.JointTrajectoryPoint(velocities=[0.5], effort=[1.0, 2.0]),
        ]),
        msgs.PoseStamped(msgs.Header(msgs.Time(9, 9), "cam"), msgs.Pose(msgs.Point(1, 2, 3), msgs.Quaternion(0, 0, 0, 1))),
        msgs.Bool(True), msgs.String("ä"),
        msgs.DiagnosticArray(status=[msgs.DiagnosticStatus(2, "arm", "stale", "hw1", [msgs.KeyValue("k", "v")])]),
    ]
    for msg in samples:
        cls = type(msg)
        cyclone_type = idl_type(cls)
        assert cyclone_type.__idl_typename__ == cls.dds_type_name()
        ours = msg.serialize()
        theirs = cyclone_type.deserialize(ours).serialize(use_version_2=False)
        assert theirs == ours, cls.ROS_TYPE


@pytest.mark.parametrize("distro, store", [("humble", "ROS2_HUMBLE"), ("jazzy", "ROS2_JAZZY")])
def test_ros_discovery_info_names_the_node_and_its_endpoints_as_ros_tools_read_it(distro, store, monkeypatch):
    """What `ros2 node list` reads: rosbags decodes our ParticipantEntitiesInfo byte for byte in
    the release's layout (gids of 24 bytes in Humble, 16 later), and a plain Cyclone reader
    on another participant receives the node with the GUIDs of its reader and writer."""
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from rosbags.typesys import Stores, get_typestore

    from cyclonedds._clayer import ddspy_take
    from robot import discovery
    from robot.transport.dds import DISCOVERY_QOS, _ANY_SAMPLE, dds_qos

    typestore = get_typestore(getattr(Stores, store))
    size = {"humble": 24, "jazzy": 16}[distro]
    Gid, Node, Info = (typestore.types[f"rmw_dds_common/msg/{n}"] for n in ("Gid", "NodeEntitiesInfo", "ParticipantEntitiesInfo"))
    guids = [bytes(range(i, i + 16)) for i in (0, 16, 32, 48)]
    gid = lambda g: Gid(data=np.frombuffer(g + bytes(size - 16), np.uint8))  # noqa: E731
    theirs = typestore.serialize_cdr(Info(gid=gid(guids[0]), node_entities_info_seq=[
        Node(node_namespace="/robot1", node_name="agent", reader_gid_seq=[gid(guids[1])], writer_gid_seq=[gid(guids[2]), gid(guids[3])])]),
        Info.__msgtype__)
    ours = discovery.encode(guids[0], [discovery.NodeEntities("/robot1", "agent", [guids[1]], guids[2:])], size)
    assert ours == bytes(theirs)

    monkeypatch.setenv("ROS_DISTRO", distro)
    domain = random_domain()
    with make_transport("dds", domain, node_name="announced", namespace="/robot1") as t:
        pub = t.publisher("/agent/estop", msgs.Bool, LATCHED)
        sub = t.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        observer = DomainParticipant(domain)
        reader = DataReader(observer, Topic(observer, discovery.TOPIC, discovery.idl_struct(size)),
                            dds_qos(DISCOVERY_QOS, discovery.ROS_TYPE))
        seen = []

        def take():
            got = ddspy_take(reader._ref, _ANY_SAMPLE, 16)
            seen.extend(typestore.deserialize_cdr(data, Info.__msgtype__) for data, info in (got or []) if info.valid_data)

        assert until(lambda: seen, every=take)
        info = seen[-1]
        assert bytes(info.gid.data[:16]) == t.participant.guid.bytes and not any(info.gid.data[16:])
        (node,) = info.node_entities_info_seq
        assert (node.node_namespace, node.node_name) == ("/robot1", "announced")
        assert [bytes(g.data[:16]) for g in node.writer_gid_seq] == [pub._writer.guid.bytes]
        assert [bytes(g.data[:16]) for g in node.reader_gid_seq] == [sub._reader.guid.bytes]
        sub.close()  # a closed endpoint leaves the node's list
        assert until(lambda: seen and not seen[-1].node_entities_info_seq[0].reader_gid_seq, every=take)
        for entity in (reader, observer):
            entity.__del__()


def test_discovery_announces_ros_names_types_and_qos():
    from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription
    from cyclonedds.core import Policy
    from cyclonedds.domain import DomainParticipant
    from robot.transport.dds import type_hash

    domain = random_domain()
    with make_transport("dds", domain, node_name="announcer") as t:
        t.publisher("/agent/estop", msgs.Bool, LATCHED)
        t.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        observer = DomainParticipant(domain)
        endpoints = {}
        readers = [BuiltinDataReader(observer, BuiltinTopicDcpsPublication),
                   BuiltinDataReader(observer, BuiltinTopicDcpsSubscription)]

        def collect():
            for reader in readers:
                for sample in reader.take(N=64):
                    endpoints[sample.topic_name] = sample

        assert until(lambda: {"rt/agent/estop", "rt/joint_states"} <= endpoints.keys(), every=collect)
        estop, joints = endpoints["rt/agent/estop"], endpoints["rt/joint_states"]
        assert estop.type_name == "std_msgs::msg::dds_::Bool_"
        assert joints.type_name == "sensor_msgs::msg::dds_::JointState_"
        assert estop.qos[Policy.Reliability].__scope__ == "Reliability" and isinstance(estop.qos[Policy.Reliability], Policy.Reliability.Reliable)
        assert estop.qos[Policy.Durability] == Policy.Durability.TransientLocal
        assert estop.qos[Policy.History] == Policy.History.KeepLast(1)
        assert joints.qos[Policy.Reliability] == Policy.Reliability.BestEffort
        assert joints.qos[Policy.History] == Policy.History.KeepLast(5)
        assert estop.qos[Policy.Userdata].data == f"typehash={type_hash('std_msgs/msg/Bool')};".encode()
        assert type_hash("std_msgs/msg/Bool").startswith("RIHS01_") and len(type_hash("std_msgs/msg/Bool")) == 71
        assert estop.qos[Policy.DataRepresentation] == Policy.DataRepresentation(use_cdrv0_representation=True)
        del readers, observer


def test_plain_cyclone_peer_reads_and_writes_our_wire_format():
    """A Cyclone application using its own (de)serializer for the same IDL is a stand-in for a ROS node."""
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from robot.transport.dds import dds_qos, idl_type

    domain = random_domain()
    with make_transport("dds", domain) as t:
        other = DomainParticipant(domain)
        cmd_type = idl_type(msgs.Float64MultiArray)
        reader = DataReader(other, Topic(other, "rt/forward_position_controller/commands", cmd_type),
                            dds_qos(COMMAND, msgs.Float64MultiArray.ROS_TYPE))
        pub = t.publisher("/forward_position_controller/commands", msgs.Float64MultiArray, COMMAND)
        sent = msgs.Float64MultiArray(data=[0.25, -1.5, 3.0])
        got = []
        assert until(lambda: bool(got), every=lambda: (pub.publish(sent), got.extend(reader.take(N=10))))
        assert list(got[0].data) == [0.25, -1.5, 3.0] and got[0].layout.dim == []

        js_type = idl_type(msgs.JointState)
        writer = DataWriter(other, Topic(other, "rt/joint_states", js_type), dds_qos(RELIABLE, msgs.JointState.ROS_TYPE))
        sub = t.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        sample = js_type.deserialize(joint_state(4, "plain").serialize())
        assert until(lambda: sub.wait(0.05), every=lambda: writer.write(sample))
        assert sub.take()[0] == joint_state(4, "plain")
        del reader, writer, other


def test_a_malformed_sample_is_dropped_and_counted():
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.topic import Topic
    from cyclonedds._clayer import ddspy_write
    from robot.transport.dds import dds_qos, idl_type

    domain = random_domain()
    with make_transport("dds", domain) as t:
        other = DomainParticipant(domain)
        writer = DataWriter(other, Topic(other, "rt/agent/status", idl_type(msgs.String)), dds_qos(RELIABLE, msgs.String.ROS_TYPE))
        sub = t.subscription("/agent/status", msgs.String, RELIABLE)
        bad = b"\x00\x01\x00\x00" + (3).to_bytes(4, "little") + b"\xff\xfe\x00\x00"  # not UTF-8
        assert until(lambda: sub.malformed > 0, every=lambda: ddspy_write(writer._ref, bad))
        ddspy_write(writer._ref, msgs.String("fine").serialize() + b"\x00" * 3)
        assert sub.wait(10.0) and sub.take()[-1] == msgs.String("fine")
        del writer, other


# -- two processes on loopback -------------------------------------------------------------
def test_two_processes_exchange_joint_states_and_commands_over_dds():
    domain = random_domain()
    nonce = f"n{random.getrandbits(32)}"
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONPATH": str(REPO)}
    env.pop("CYCLONEDDS_URI", None)
    with make_transport("dds", domain, node_name="agent") as agent, \
            make_transport("dds", (domain + 1) % 233, node_name="bystander") as other_domain:
        estop = agent.publisher("/agent/estop", msgs.Bool, LATCHED)
        estop.publish(msgs.Bool(True))  # before the peer exists: it must still get it
        states = agent.subscription("/joint_states", msgs.JointState, SENSOR_DATA)
        echoes = agent.subscription("/from_peer", msgs.Float64MultiArray, RELIABLE)
        commands = agent.publisher("/to_peer", msgs.Float64MultiArray, RELIABLE)
        stray = other_domain.subscription("/joint_states", msgs.JointState, SENSOR_DATA)

        peer = subprocess.Popen([sys.executable, __file__, "peer", nonce], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            received: list[msgs.JointState] = []
            assert until(lambda: received.extend(m for m in states.take() if m.header.frame_id == nonce)
                         or len(received) >= 3, 30.0), "no joint states from the peer process"
            for msg in received:
                assert msg == joint_state(msg.header.stamp.sec, nonce)

            layout = msgs.MultiArrayLayout([msgs.MultiArrayDimension("joints", 6, 6)], 0)
            command = msgs.Float64MultiArray(layout, np.random.default_rng(0).normal(size=6))
            assert until(lambda: echoes.wait(0.05), 30.0, every=lambda: commands.publish(command))
            assert echoes.take()[0] == command

            commands.publish(msgs.Float64MultiArray(data=[-1.0]))  # stop
            out, err = peer.communicate(timeout=30)
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.communicate()
        assert peer.returncode == 0, err
        assert err == "", err  # a clean shutdown prints nothing
        report = json.loads(out.strip().splitlines()[-1])
        assert report["estop"] is True and report["domain_id"] == domain and report["published"] > 0
        assert stray.take() == [] and stray.latest() is None  # another domain hears nothing


def peer_main(nonce: str) -> int:
    """The other process: a robot-side node on ROS_DOMAIN_ID. Publishes joint states at
    50 Hz (reliable, as joint_state_broadcaster does), echoes /to_peer to /from_peer, and
    stops on the command [-1]; prints a JSON line with what it saw."""
    deadline = time.monotonic() + 60.0
    with make_transport("dds", node_name="peer") as t:
        estop = t.subscription("/agent/estop", msgs.Bool, LATCHED)
        inbox = t.subscription("/to_peer", msgs.Float64MultiArray, RELIABLE)
        outbox = t.publisher("/from_peer", msgs.Float64MultiArray, RELIABLE)
        states = t.publisher("/joint_states", msgs.JointState, RELIABLE)
        i, stop = 0, False
        while not stop and time.monotonic() < deadline:
            i += 1
            states.publish(joint_state(i, nonce))
            if inbox.wait(0.02):
                for cmd in inbox.take():
                    if cmd.data.tolist() == [-1.0]:
                        stop = True
                    else:
                        outbox.publish(cmd)
        latched = estop.latest()
        print(json.dumps({"estop": latched[0].data if latched else None, "domain_id": t.domain_id, "published": i}))
    return 0 if stop else 2


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "peer":
        sys.exit(peer_main(sys.argv[2]))
    sys.exit(f"usage: {sys.argv[0]} peer NONCE")
