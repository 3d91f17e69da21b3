"""``ros_discovery_info``: how a ROS 2 participant tells ROS tools which nodes it holds.

Every rmw publishes one ``rmw_dds_common/msg/ParticipantEntitiesInfo`` per participant
on the DDS topic ``ros_discovery_info`` (no ``rt`` prefix; reliable, transient-local,
keep-last 1): the participant's gid and, per node, its namespace, name and the gids of
its readers and writers. ``ros2 node list`` and ``ros2 node info`` are built from it;
without it they show topics without the nodes behind them.

A gid is the entity's 16-byte DDS GUID (what rmw_cyclonedds uses). Its message is
``char[24]`` in Humble (the GUID then zeros) and ``uint8[16]`` from Iron on, so the
layout follows the ROS release the other side runs: ``ROS_DISTRO`` when set, else Jazzy's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from robot import cdr

ROS_TYPE = "rmw_dds_common/msg/ParticipantEntitiesInfo"
DDS_TYPE = "rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_"
TOPIC = "ros_discovery_info"
GID_SIZES = {"foxy": 24, "galactic": 24, "humble": 24}  # releases before Iron carry 24 bytes; Iron and later 16


def gid_size(distro: str | None = None) -> int:
    distro = (distro if distro is not None else os.environ.get("ROS_DISTRO", "")).strip().lower()
    return GID_SIZES.get(distro, 16)


@dataclass
class NodeEntities:
    namespace: str
    name: str
    readers: list[bytes] = field(default_factory=list)
    writers: list[bytes] = field(default_factory=list)


def encode(participant: bytes, nodes: list[NodeEntities], size: int) -> bytes:
    """The CDR bytes of a ParticipantEntitiesInfo with gids of ``size`` bytes."""

    def gid(guid: bytes) -> bytes:
        if len(guid) > size:
            raise ValueError(f"a gid holds {size} bytes, found a GUID of {len(guid)}.")
        return guid + b"\x00" * (size - len(guid))

    w = cdr._Writer()
    w.buf += gid(participant)
    w.uint32(len(nodes))
    for node in nodes:
        w.string(node.namespace, "node namespace")
        w.string(node.name, "node name")
        for gids in (node.readers, node.writers):
            w.uint32(len(gids))
            for g in gids:
                w.buf += gid(g)
    return bytes(w.buf)


def idl_struct(size: int):
    """The Cyclone IDL type of the message for gids of ``size`` bytes (only its name and shape matter)."""
    from cyclonedds.idl import make_idl_struct, types
    from cyclonedds.idl.annotations import final

    gid = final(make_idl_struct(f"Gid{size}_", "rmw_dds_common::msg::dds_::Gid_",
                                {"data": types.array[types.uint8, size]}))  # type: ignore[misc]
    node = final(make_idl_struct(f"NodeEntitiesInfo{size}_", "rmw_dds_common::msg::dds_::NodeEntitiesInfo_", {
        "node_namespace": types.bounded_str[256], "node_name": types.bounded_str[256],  # type: ignore[misc]
        "reader_gid_seq": types.sequence[gid], "writer_gid_seq": types.sequence[gid]}))  # type: ignore[misc]
    return final(make_idl_struct(f"ParticipantEntitiesInfo{size}_", DDS_TYPE, {
        "gid": gid, "node_entities_info_seq": types.sequence[node]}))  # type: ignore[misc]
