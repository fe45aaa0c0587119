"""The record's opaque data-plane fields, ``sleeve_key`` (wire key "sk") and ``fastdp`` ("fd"):
wire form, bounds, interop with records that lack them, local changes and the merge order."""

from __future__ import annotations

import msgpack
import pytest

from gossip import wire
from gossip.topology import MAX_FASTDP, MAX_SLEEVE_KEY, PeerRecord, Topology, TopologyError
from gossip.wire import Decoder, MessageType
from tests.gossip.test_topology_meta import ME, PEER, record

KEY = bytes(range(11))
FIELDS = [("sleeve_key", "sk", MAX_SLEEVE_KEY), ("fastdp", "fd", MAX_FASTDP)]
each_field = pytest.mark.parametrize(("field", "key", "limit"), FIELDS, ids=["sk", "fd"])


@each_field
def test_field_round_trips_through_a_topology_message(field: str, key: str, limit: int) -> None:
    sent = record(**{field: KEY}, meta=b"claim")
    packed = [msgpack.packb(sent.to_wire(), use_bin_type=True)]
    [(_, fields)] = Decoder().feed(wire.encode_list(MessageType.TOPOLOGY, "records", packed))
    [back] = [PeerRecord.from_wire(d) for d in fields["records"]]
    assert back == sent
    assert type(getattr(back, field)) is bytes


@each_field
def test_empty_field_is_left_out_so_old_peers_read_the_record(
    field: str, key: str, limit: int
) -> None:
    wire_dict = record().to_wire()
    assert key not in wire_dict
    assert getattr(PeerRecord.from_wire(wire_dict), field) == b""
    assert record(**{field: b"\x00"}).to_wire()[key] == b"\x00"


@each_field
def test_largest_value_is_accepted(field: str, key: str, limit: int) -> None:
    r = record(**{field: b"\x01" * limit})
    assert PeerRecord.from_wire(r.to_wire()) == r


@each_field
@pytest.mark.parametrize(
    "value",
    ["a key", 5, None, [1], bytearray(b"x"), "too-long"],
    ids=["str", "int", "nil", "list", "bytearray", "too-long"],
)
def test_bad_value_is_rejected_naming_the_field(
    field: str, key: str, limit: int, value: object
) -> None:
    bad = b"\x00" * (limit + 1) if value == "too-long" else value
    with pytest.raises(TopologyError, match=f"'{key}'"):
        PeerRecord.from_wire({**record().to_wire(), key: bad})


@each_field
def test_set_local_bumps_the_version(field: str, key: str, limit: int) -> None:
    t = Topology(record(ME, uid=1))
    changed = t.set_local(**{field: KEY})
    assert changed is not None
    assert (changed.version, getattr(changed, field)) == (2, KEY)
    assert t.set_local(**{field: KEY}) is None


@each_field
def test_same_stamp_different_values_have_one_winner_whatever_the_order(
    field: str, key: str, limit: int
) -> None:
    x, y = record(**{field: b"\x01"}), record(**{field: b"\x02"})
    winners = set()
    for batch in ([x, y], [y, x]):
        t = Topology(record(ME, uid=1))
        t.merge(batch)
        winners.add(t.records[PEER])
    assert winners == {y}
