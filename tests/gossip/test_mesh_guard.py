"""The mesh core against a stranger without a secret: names tied to live connections, no
redial storms, silent connections closed, and answers bounded -- on explicit ``now`` values."""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgpack
import pytest

from gossip import wire
from gossip.dissemination import MAX_NAMES
from gossip.mesh import Mesh, MeshConfig
from gossip.outbox import Outbox
from gossip.record import MAX_META, MAX_STAMP, PeerRecord
from gossip.topology import Topology, TopologyError
from gossip.wire import Decoder, MessageType

ME = "00:00:00:00:00:00"
PEER = "00:00:00:00:00:01"
ADDR = ("10.0.0.1", 6783)
WALL = 1_800_000_000 * 10**9  # the wall clock the mesh judges incarnations by (ns)


def record(name: str = PEER, version: int = 1, **kw: Any) -> PeerRecord:
    fields: dict[str, Any] = {
        "nickname": "n",
        "incarnation": 5,
        "uid": 7,
        "data_endpoint": ADDR,
        "control_endpoint": ADDR,
    }
    fields.update(kw)
    return PeerRecord(name=name, version=version, **fields)


def mesh(**config: Any) -> Mesh:
    local = record(ME, uid=1, data_endpoint=("10.0.0.9", 6783), control_endpoint=("10.0.0.9", 6783))
    return Mesh(Topology(local), MeshConfig(**config), random.Random(1), seeds=[ADDR])


def sent(m: Mesh) -> list[tuple[Any, MessageType | int, dict[Any, Any]]]:
    out = []
    for conn, data in m.outbox():
        for msg_type, fields in Decoder().feed(data):
            out.append((conn, msg_type, fields))
    return out


def topology_message(*records: PeerRecord) -> dict[str, Any]:
    return {"records": [msgpack.unpackb(msgpack.packb(r.to_wire())) for r in records]}


# -- a name tied to its live connection ------------------------------------------------------


def test_a_second_handshake_with_a_live_name_and_another_uid_is_refused() -> None:
    m = mesh()
    assert m.dial_targets(0.0) == [ADDR]
    assert m.connection_up("real", PEER, ADDR, 0.0, uid=7, label="real")
    assert not m.connection_up("fake", PEER, None, 1.0, uid=666, label="10.6.6.6:1|fake")
    assert m.by_name == {PEER: "real"}
    assert m.to_close() == []  # the live connection is not touched
    assert m.rejections.counts == {"name_in_use": 1}
    assert m.topology.local.connections == (PEER,)


def test_a_refused_duplicate_we_dialled_backs_off_instead_of_redialling() -> None:
    m = mesh()
    m.dial_targets(0.0)
    assert m.connection_up("real", PEER, None, 0.0, uid=7)  # it dialled us first
    other = ("10.0.0.2", 6783)
    m.set_seeds([ADDR, other])
    assert other in m.dial_targets(1.0)
    assert not m.connection_up("dup", PEER, other, 1.1, uid=666)  # other claims PEER's name
    for t in (1.2, 2.0, 2.5):
        assert other not in m.dial_targets(t)


def test_records_for_a_connected_name_from_another_uid_are_refused() -> None:
    m = mesh()
    m.connection_up("real", PEER, None, 0.0, uid=7, label="real")
    m.connection_up("x", "00:00:00:00:00:02", None, 0.0, uid=9, label="stranger")
    m.receive("real", MessageType.TOPOLOGY, topology_message(record(uid=7)), 0.1, WALL)
    forged = record(version=99, uid=666, blocks=("10.32.0.0/24",))
    m.receive("x", MessageType.TOPOLOGY, topology_message(forged), 0.2, WALL)
    assert m.topology.records[PEER] == record(uid=7)
    assert m.rejections.counts == {"name_bound": 1}
    m.connection_down("real", 1.0)
    m.receive("x", MessageType.TOPOLOGY, topology_message(forged), 1.1, WALL)
    assert m.topology.records[PEER] == forged  # no live connection ties the name any more


def test_a_connection_dropped_at_once_is_redialled_ever_more_slowly() -> None:
    m = mesh()
    now, dials = 0.0, []
    while now < 60.0:
        if m.dial_targets(now) == [ADDR]:
            dials.append(now)
            m.connection_up(f"c{now}", PEER, ADDR, now, uid=7)
            m.connection_down(f"c{now}", now + 0.01)  # the far end closes at once
        now = round(now + 0.1, 2)
    assert 3 <= len(dials) <= 8  # backoff 2 s x 1.5 ... rather than a dial every step
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    assert gaps == sorted(gaps)


def test_a_stable_connection_resets_the_backoff() -> None:
    m = mesh()
    m.dial_targets(0.0)
    m.connection_up("c1", PEER, ADDR, 0.0, uid=7)
    m.connection_down("c1", 30.0)
    assert m.dial_targets(30.0) == [ADDR]


# -- silent connections ----------------------------------------------------------------------


def test_keepalives_go_out_and_a_silent_peer_is_closed() -> None:
    m = mesh(keepalive_interval=3.0, silence_timeout=12.0)
    m.connection_up("frozen", PEER, None, 0.0, uid=7, label="frozen", keepalive=True)
    m.connection_up("old", "00:00:00:00:00:02", None, 0.0, uid=9)  # no keepalive feature
    m.receive("frozen", MessageType.TOPOLOGY, topology_message(record(uid=7)), 0.1, WALL)
    sent(m)
    kept_at = []
    t = 0.0
    while t < 20.0:
        t = max(m.get_timer(), t)
        m.handle_timer(t)
        kept_at += [t for conn, kind, _ in sent(m) if kind == MessageType.KEEPALIVE]
        if "frozen" in m.to_close():
            break
    assert kept_at[:3] == [3.0, 6.0, 9.0]
    assert 12.0 <= t <= 15.0
    assert m.by_name.keys() == {"00:00:00:00:00:02"}  # the old peer is never judged silent
    assert PEER not in m.topology.local.connections
    assert m.rejections.counts == {"silent": 1}


def test_any_message_counts_as_life() -> None:
    m = mesh(keepalive_interval=3.0, silence_timeout=12.0)
    m.connection_up("c", PEER, None, 0.0, uid=7, keepalive=True)
    for t in range(1, 40):
        m.receive("c", 9, {}, float(t), WALL)
        m.handle_timer(float(t))
        assert m.to_close() == []


# -- bounded answers -------------------------------------------------------------------------


def test_a_request_repeating_a_name_is_answered_once() -> None:
    m = mesh()
    m.connection_up("c", PEER, None, 0.0, uid=7)
    sent(m)
    m.receive("c", MessageType.REQUEST, {"names": [ME] * 2000 + [PEER, 5]}, 0.1, WALL)
    [(_, kind, fields)] = sent(m)
    assert kind == MessageType.TOPOLOGY and len(fields["records"]) == 1


@pytest.mark.parametrize(
    ("msg_type", "fields"),
    [
        (MessageType.REQUEST, {"names": ["x"] * (MAX_NAMES + 1)}),
        (MessageType.DIGEST, {"digest": {PEER: [2**64 - 1, 1]}}),
        (MessageType.DIGEST, {"digest": {PEER: [1, -1]}}),
        (MessageType.TOPOLOGY, {"records": [{}] * 1025}),
    ],
    ids=["request-too-long", "digest-stamp-too-high", "digest-stamp-negative", "topology-too-long"],
)
def test_oversized_or_out_of_bounds_messages_are_malformed(
    msg_type: MessageType, fields: dict[str, Any]
) -> None:
    m = mesh()
    m.connection_up("c", PEER, None, 0.0, uid=7)
    with pytest.raises(ValueError, match=r"at most|within bounds"):
        m.receive("c", msg_type, fields, 0.1, WALL)


def test_our_name_at_the_top_version_leaves_us_working() -> None:
    m = mesh()
    m.connection_up("c", PEER, None, 0.0, uid=7, label="c")
    claim = record(ME, version=MAX_STAMP, uid=666)
    m.receive("c", MessageType.TOPOLOGY, topology_message(claim), 0.1, WALL)
    assert m.topology.local.stamp == (6, 0)
    m.handle_timer(1.0)
    m.set_local(1.0, blocks=("10.32.0.0/24",))
    m.handle_timer(2.0)
    sent(m)  # everything encodes
    too_high = {**claim.to_wire(), "i": 7, "v": 2**64 - 1}  # not an echo: decoded, refused
    with pytest.raises(TopologyError):
        m.receive("c", MessageType.TOPOLOGY, {"records": [too_high]}, 3.0, WALL)


def test_records_are_split_by_bytes_as_well_as_by_count() -> None:
    box = Outbox(max_records=256)
    heavy = [record(f"00:00:00:00:01:{i:02x}", meta=b"\x00" * MAX_META) for i in range(200)]
    box.send_records("c", heavy)
    messages = box.drain()
    assert len(messages) >= 2
    got = []
    for _, data in messages:
        assert len(data) <= wire.LENGTH_SIZE + wire.MAX_MESSAGE
        [(_, fields)] = Decoder().feed(data)
        got += [PeerRecord.from_wire(d) for d in fields["records"]]
    assert got == heavy
