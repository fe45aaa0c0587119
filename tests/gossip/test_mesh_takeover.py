"""The two ways a stranger without a secret could still take a live peer's name, on explicit
``now`` and wall-clock values: records stamped at the top of the stamp space (which the owner
could never outrank), and a handshake that gives the victim's real uid (uids are public)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import pytest

from gossip.mesh import Mesh, MeshConfig
from gossip.names import Origin, claim
from gossip.record import MAX_AHEAD_NS, MAX_STAMP, PeerRecord
from gossip.topology import Topology
from gossip.wire import Decoder, MessageType

WALL = 1_800_000_000 * 10**9  # the receivers' wall clock, ns
RECEIVER = "00:00:00:00:00:09"  # sorts above OWNER: the order in which a tie-break once let a
OWNER = "00:00:00:00:00:01"  # duplicate replace a connection we dialled
STRANGER = "00:00:00:00:00:05"
BLOCK = "10.32.1.0/24"


def record(name: str, uid: int, incarnation: int = WALL - 10**9, **kw: Any) -> PeerRecord:
    host = f"10.0.0.{int(name[-2:], 16)}"
    return PeerRecord(name=name, nickname=name[-2:], incarnation=incarnation, version=1, uid=uid,
                      data_endpoint=(host, 6783), control_endpoint=(host, 6783), **kw)  # fmt: skip


def topology_message(*records: PeerRecord) -> dict[str, Any]:
    return {"records": [msgpack.unpackb(msgpack.packb(r.to_wire())) for r in records]}


def mesh(name: str, uid: int, **config: Any) -> Mesh:
    return Mesh(Topology(record(name, uid)), MeshConfig(**config), random.Random(1))


def sent_records(m: Mesh) -> list[PeerRecord]:
    out = []
    for _, data in m.outbox():
        for msg_type, fields in Decoder().feed(data):
            if msg_type == MessageType.TOPOLOGY:
                out += [PeerRecord.from_wire(d) for d in fields["records"]]
    return out


# -- stamps at the top of the range ----------------------------------------------------------


def receiver_with_owner_and_stranger() -> tuple[Mesh, PeerRecord]:
    """A receiver connected to the owner (uid 7, blocks BLOCK) and to a stranger."""
    m = mesh(RECEIVER, 1)
    owner = record(OWNER, 7, blocks=(BLOCK,), connections=(RECEIVER,))
    m.connection_up("owner", OWNER, None, 0.0, uid=7, label="owner", host="10.0.0.1")
    m.connection_up("x", STRANGER, None, 0.0, uid=66, label="stranger", host="10.6.6.6")
    m.receive("owner", MessageType.TOPOLOGY, topology_message(owner), 0.1, WALL)
    return m, owner


def test_a_record_stamped_at_the_top_under_a_live_name_is_refused_as_future() -> None:
    m, owner = receiver_with_owner_and_stranger()
    for top in (MAX_STAMP, MAX_STAMP - 1):  # with the owner's own uid: the binding lets it by
        emptied = dataclasses.replace(owner, incarnation=top, version=top, blocks=())
        m.receive("x", MessageType.TOPOLOGY, topology_message(emptied), 0.2, WALL)
    assert m.topology.records[OWNER] == owner
    assert m.rejections.counts == {"future": 2}
    m.handle_timer(1.0)
    assert OWNER in m.routes()
    assert all(r == owner for r in sent_records(m) if r.name == OWNER)  # nothing relayed


def test_what_a_receiver_accepts_the_owner_outranks() -> None:
    """The furthest a forgery may go and still be accepted: the owner, whose clock is the
    same, jumps above it and the receiver takes the owner's record back."""
    m, owner = receiver_with_owner_and_stranger()
    edge = dataclasses.replace(owner, incarnation=WALL + MAX_AHEAD_NS, version=MAX_STAMP, blocks=())
    m.receive("x", MessageType.TOPOLOGY, topology_message(edge), 0.2, WALL)
    assert m.topology.records[OWNER] == edge  # within the bound: a clock may be set so
    assert m.rejections.counts == {}

    at_owner = Topology(owner)
    [defence] = at_owner.merge([edge], "receiver", WALL + 10**6)
    assert defence.stamp == (WALL + MAX_AHEAD_NS + 1, 0) and defence.blocks == (BLOCK,)
    m.receive("owner", MessageType.TOPOLOGY, topology_message(defence), 0.3, WALL + 2 * 10**6)
    assert m.topology.records[OWNER] == defence
    changed = at_owner.set_local(blocks=(BLOCK, "10.32.2.0/24"))
    assert changed is not None and changed.stamp == (WALL + MAX_AHEAD_NS + 1, 1)


def test_a_claim_of_our_own_name_from_the_future_is_refused_not_jumped_to() -> None:
    t = Topology(record(OWNER, 7))
    ours = t.local
    for uid in (7, 66):
        claim = dataclasses.replace(ours, uid=uid, incarnation=MAX_STAMP, version=MAX_STAMP)
        assert t.merge([claim], "stranger", WALL) == []
    assert t.local == ours
    assert t.rejections.counts == {"future": 2}
    assert t.set_local(blocks=(BLOCK,)) is not None  # and we still change our record


def test_a_digest_from_the_future_asks_for_nothing() -> None:
    t = Topology(record(RECEIVER, 1))
    ahead = WALL + MAX_AHEAD_NS
    digest = {OWNER: (ahead + 1, 0), STRANGER: (ahead, 0)}
    assert t.wanted(digest, WALL) == [STRANGER]
    assert t.wanted(digest) == [OWNER, STRANGER]  # no clock: nothing judged


# -- a name held by its live connection ------------------------------------------------------


def dialled_owner(**config: Any) -> Mesh:
    """A receiver that dialled the owner, whose name sorts below its own, at t=0."""
    m = mesh(RECEIVER, 1, **config)
    m.seeds = {("10.0.0.1", 6783)}
    assert m.dial_targets(0.0) == [("10.0.0.1", 6783)]
    assert m.connection_up("real", OWNER, ("10.0.0.1", 6783), 0.0, uid=7, label="real",
                           host="10.0.0.1", keepalive=True)  # fmt: skip
    return m


def test_a_handshake_with_the_live_peers_real_uid_does_not_take_its_name() -> None:
    m = dialled_owner()
    for t in (0.5, 5.0, 100.0):  # from another host, at once or later
        m.receive("real", MessageType.KEEPALIVE, {}, t - 0.1, WALL)
        assert not m.connection_up(f"fake{t}", OWNER, None, t, uid=7, label="stranger",
                                   host="10.6.6.6", keepalive=True)  # fmt: skip
    m.receive("real", MessageType.KEEPALIVE, {}, 99.9, WALL)
    assert not m.connection_up("late", OWNER, None, 100.0, uid=7, host="10.0.0.1")
    assert m.by_name == {OWNER: "real"}
    assert m.to_close() == []
    assert m.rejections.counts == {"name_in_use": 4}


def test_both_ends_dialling_at_once_still_settle_on_one_connection() -> None:
    m = dialled_owner()
    # The owner's own dial, moments later from its host: the lower name's dial is kept.
    assert m.connection_up("theirs", OWNER, None, 0.01, uid=7, host="10.0.0.1")
    assert m.by_name == {OWNER: "theirs"} and m.to_close() == ["real"]
    assert m.rejections.counts == {}


def test_a_silent_holder_gives_way_to_a_restarted_peer() -> None:
    m = dialled_owner(keepalive_interval=3.0, silence_timeout=12.0)
    m.receive("real", MessageType.KEEPALIVE, {}, 1.0, WALL)
    assert not m.connection_up("new", OWNER, None, 12.5, uid=8, host="10.0.0.1")
    assert m.rejections.counts == {"name_in_use": 1}
    assert m.connection_up("new", OWNER, None, 13.0, uid=8, host="10.0.0.1", keepalive=True)
    assert m.by_name == {OWNER: "new"} and m.to_close() == ["real"]
    assert m.rejections.counts == {"name_in_use": 1, "silent": 1}
    m.connection_down("real", 13.1)  # the driver closed it: the newcomer keeps the name
    assert m.by_name == {OWNER: "new"}
    assert m.topology.local.connections == (OWNER,)


def test_a_closed_holder_frees_the_name_at_once() -> None:
    m = dialled_owner()
    m.connection_down("real", 5.0)
    assert m.connection_up("new", OWNER, None, 5.1, uid=8, host="10.0.0.1")
    assert m.by_name == {OWNER: "new"}
    assert m.rejections.counts == {}


HOLDER = Origin("real", uid=7, host="10.0.0.1", up_at=100.0)


@pytest.mark.parametrize(
    ("newcomer", "silent", "verdict"),
    [
        (Origin("x", uid=7, host="10.0.0.1", up_at=100.5), 0.0, "settle"),
        (Origin("x", uid=7, host="10.0.0.1", up_at=103.0), 0.0, "refuse"),  # settle over
        (Origin("x", uid=7, host="10.6.6.6", up_at=100.5), 0.0, "refuse"),  # another host
        (Origin("x", uid=8, host="10.0.0.1", up_at=100.5), 0.0, "refuse"),  # another uid
        (Origin("x", uid=None, host="10.0.0.1", up_at=100.5), 0.0, "refuse"),
        (Origin("x", uid=8, host="10.6.6.6", up_at=130.0), 11.9, "refuse"),
        (Origin("x", uid=8, host="10.6.6.6", up_at=130.0), 12.0, "take"),  # holder silent
    ],
)
def test_the_verdict_on_a_second_claim_of_a_held_name(
    newcomer: Origin, silent: float, verdict: str
) -> None:
    assert claim(HOLDER, newcomer, silent, silence_timeout=12.0, settle_interval=3.0) == verdict
