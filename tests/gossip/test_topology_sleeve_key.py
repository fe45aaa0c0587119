"""The record's opaque ``sleeve_key`` bytes (wire key "sk"): wire form, bounds, interop with
records that lack it, local changes and the merge order."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gossip import wire
from gossip.topology import MAX_SLEEVE_KEY, PeerRecord, Topology, TopologyError
from gossip.wire import Decoder, MessageType

ME = "00:00:00:00:00:00"
PEER = "00:00:00:00:00:01"
KEY = bytes(range(32))


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


def test_sleeve_key_round_trips_through_a_topology_message() -> None:
    sent = record(sleeve_key=KEY, meta=b"claim")
    packed = [msgpack.packb(sent.to_wire(), use_bin_type=True)]
    [(_, fields)] = Decoder().feed(wire.encode_list(MessageType.TOPOLOGY, "records", packed))
    [back] = [PeerRecord.from_wire(d) for d in fields["records"]]
    assert back == sent
    assert type(back.sleeve_key) is bytes


def test_empty_sleeve_key_is_left_out_so_old_peers_read_the_record() -> None:
    wire_dict = record().to_wire()
    assert "sk" not in wire_dict
    assert PeerRecord.from_wire(wire_dict).sleeve_key == b""
    assert record(sleeve_key=b"\x00").to_wire()["sk"] == b"\x00"


def test_largest_sleeve_key_is_accepted() -> None:
    r = record(sleeve_key=b"\x01" * MAX_SLEEVE_KEY)
    assert PeerRecord.from_wire(r.to_wire()) == r


@pytest.mark.parametrize(
    "key",
    ["a key", 5, None, [1], bytearray(b"x"), b"\x00" * (MAX_SLEEVE_KEY + 1)],
    ids=["str", "int", "nil", "list", "bytearray", "too-long"],
)
def test_bad_sleeve_key_is_rejected_naming_the_field(key: object) -> None:
    with pytest.raises(TopologyError, match="'sk'"):
        PeerRecord.from_wire({**record().to_wire(), "sk": key})


def test_set_local_sleeve_key_bumps_the_version() -> None:
    t = Topology(record(ME, uid=1))
    changed = t.set_local(sleeve_key=KEY)
    assert changed is not None
    assert (changed.version, changed.sleeve_key) == (2, KEY)
    assert t.set_local(sleeve_key=KEY) is None


def test_same_stamp_different_sleeve_key_has_one_winner_whatever_the_order() -> None:
    x, y = record(sleeve_key=b"\x01"), record(sleeve_key=b"\x02")
    winners = set()
    for batch in ([x, y], [y, x]):
        t = Topology(record(ME, uid=1))
        t.merge(batch)
        winners.add(t.records[PEER])
    assert winners == {y}
