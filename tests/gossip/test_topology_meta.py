"""The record's opaque ``meta`` bytes (wire key "m"): wire form, bounds, local changes and the
merge order of records that differ only in it."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip import wire
from gossip.topology import MAX_META, PeerRecord, Topology, TopologyError
from gossip.wire import Decoder, MessageType

ME = "00:00:00:00:00:00"
PEER = "00:00:00:00:00:01"
CLAIM = msgpack.packb({"u": 1, "f": 253, "r": [17, ME]})


def record(name: str = PEER, version: int = 1, **kw: Any) -> PeerRecord:
    fields: dict[str, Any] = {
        "nickname": "n",
        "incarnation": 5,
        "uid": 7,
        "data_endpoint": ("10.0.0.1", 6783),
        "control_endpoint": ("10.0.0.1", 6783),
    }
    fields.update(kw)
    return PeerRecord(name=name, version=version, **fields)


def through_topology_message(records: list[PeerRecord]) -> list[PeerRecord]:
    """Send records as the mesh does (each packed once, listed in one TOPOLOGY message) and read
    them back as the receiving side does."""
    packed = [msgpack.packb(r.to_wire(), use_bin_type=True) for r in records]
    [(msg_type, fields)] = Decoder().feed(wire.encode_list(MessageType.TOPOLOGY, "records", packed))
    assert msg_type is MessageType.TOPOLOGY
    return [PeerRecord.from_wire(d) for d in fields["records"]]


# -- wire form -------------------------------------------------------------------------------


def test_meta_round_trips_through_the_wire_dict() -> None:
    r = record(meta=CLAIM, blocks=("10.32.0.0/24",))
    wire_dict = r.to_wire()
    assert wire_dict["m"] == CLAIM
    assert PeerRecord.from_wire(wire_dict) == r


@given(st.binary(max_size=64))
def test_meta_round_trips_through_a_topology_message(meta: bytes) -> None:
    sent = [record(meta=meta), record("00:00:00:00:00:02", meta=meta[::-1])]
    got = through_topology_message(sent)
    assert got == sent
    assert all(isinstance(r.meta, bytes) for r in got)


def test_meta_round_trips_through_an_encoded_topology_message() -> None:
    r = record(meta=b"text-like bytes stay bytes")
    [(msg_type, fields)] = Decoder().feed(wire.encode(MessageType.TOPOLOGY, records=[r.to_wire()]))
    assert msg_type is MessageType.TOPOLOGY
    [back] = [PeerRecord.from_wire(d) for d in fields["records"]]
    assert back == r
    assert type(back.meta) is bytes


def test_largest_meta_is_accepted() -> None:
    r = record(meta=b"\x01" * MAX_META)
    assert through_topology_message([r]) == [r]


def test_empty_meta_is_left_out_of_the_wire_dict() -> None:
    wire_dict = record(meta=b"").to_wire()
    assert "m" not in wire_dict
    assert PeerRecord.from_wire(wire_dict).meta == b""
    assert "m" in record(meta=b"\x00").to_wire()  # one zero byte is not empty


@pytest.mark.parametrize(
    "meta",
    ["a claim", 5, None, [1, 2], {"u": 1}, bytearray(b"x"), b"\x00" * (MAX_META + 1)],
    ids=["str", "int", "nil", "list", "map", "bytearray", "too-long"],
)
def test_bad_meta_is_rejected_naming_the_field(meta: object) -> None:
    bad = {**record().to_wire(), "m": meta}
    with pytest.raises(TopologyError, match="'m'"):
        PeerRecord.from_wire(bad)


def test_meta_sent_as_a_msgpack_string_is_rejected() -> None:
    # A sender packing without the bin type turns bytes into a string on the way.
    body = msgpack.packb(record(meta=b"claim").to_wire(), use_bin_type=False)
    data = msgpack.unpackb(body, raw=False)
    assert data["m"] == "claim"
    with pytest.raises(TopologyError, match="'m'"):
        PeerRecord.from_wire(data)


def test_a_too_long_meta_fails_the_message_on_receipt() -> None:
    wire_dict = {**record().to_wire(), "m": b"\x00" * (MAX_META + 1)}
    packed = [msgpack.packb(wire_dict, use_bin_type=True)]
    [(_, fields)] = Decoder().feed(wire.encode_list(MessageType.TOPOLOGY, "records", packed))
    with pytest.raises(TopologyError, match="'m'"):
        PeerRecord.from_wire(fields["records"][0])


# -- local changes ---------------------------------------------------------------------------


def test_set_local_meta_bumps_the_version() -> None:
    t = Topology(record(ME, uid=1))
    first = t.set_local(meta=CLAIM)
    assert first is not None
    assert (first.version, first.meta) == (2, CLAIM)
    assert t.local == first
    assert t.set_local(meta=CLAIM) is None  # unchanged: no new version
    cleared = t.set_local(meta=b"")
    assert cleared is not None
    assert (cleared.version, cleared.meta) == (3, b"")
    assert "m" not in cleared.to_wire()


def test_set_local_meta_with_blocks_is_one_version() -> None:
    t = Topology(record(ME, uid=1))
    changed = t.set_local(blocks=("10.32.0.0/24",), meta=CLAIM)
    assert changed is not None
    assert (changed.version, changed.blocks, changed.meta) == (2, ("10.32.0.0/24",), CLAIM)


# -- merge order -----------------------------------------------------------------------------


def test_same_stamp_different_meta_has_one_winner_whatever_the_order() -> None:
    x, y = record(meta=b"\x01claim"), record(meta=b"\x02claim")
    one, two = Topology(record(ME, uid=1)), Topology(record(ME, uid=1))
    one.merge([x])
    one.merge([y])
    two.merge([y])
    two.merge([x])
    assert one.records[PEER] == two.records[PEER]
    winner = one.records[PEER]
    assert winner in (x, y)
    loser = x if winner == y else y
    # the loser is never news again; the winner is news to whoever holds the loser
    assert one.merge([loser]) == []
    fresh = Topology(record(ME, uid=1))
    fresh.merge([loser])
    assert fresh.merge([winner]) == [winner]
    three = Topology(record(ME, uid=1))
    three.merge([x, y])
    assert three.records[PEER] == winner


def test_empty_meta_against_some_meta_at_one_stamp_is_ordered() -> None:
    bare, claimed = record(meta=b""), record(meta=CLAIM)
    winners = set()
    for batch in ([bare, claimed], [claimed, bare]):
        t = Topology(record(ME, uid=1))
        t.merge(batch)
        winners.add(t.records[PEER])
    assert len(winners) == 1


def test_a_newer_stamp_wins_whatever_the_meta() -> None:
    old, new = record(version=3, meta=b"\xff" * 8), record(version=4, meta=b"")
    for batch in ([old, new], [new, old]):
        t = Topology(record(ME, uid=1))
        t.merge(batch)
        assert t.records[PEER] == new


def test_an_echo_of_our_name_that_outranks_us_by_meta_makes_ours_jump() -> None:
    t = Topology(record(ME, uid=1, meta=b"\x01"))
    echo = record(ME, uid=1, meta=b"\x02")  # same stamp and uid, greater meta
    [jumped] = t.merge([echo])
    assert jumped.meta == b"\x01"  # our content is kept
    assert jumped.stamp == (echo.incarnation, echo.version + 1)
    assert t.collisions == []  # our own uid: not a collision
    assert t.merge([echo]) == []


@given(
    st.lists(
        st.builds(
            record,
            version=st.integers(1, 2),
            uid=st.integers(0, 1),
            meta=st.sampled_from([b"", b"\x00", b"\x01", CLAIM]),
        ),
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_merge_with_meta_does_not_depend_on_order(
    batch: list[PeerRecord], rng: random.Random
) -> None:
    one, two = Topology(record(ME, uid=1)), Topology(record(ME, uid=1))
    one.merge(batch)
    shuffled = list(batch)
    rng.shuffle(shuffled)
    for r in shuffled:
        two.merge([r])
    assert one.records == two.records
