"""Bounds that keep one hostile record from crashing or taking over a peer: stamps, the names
tied to live connections, and the total the topology holds."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gossip import topology
from gossip.record import MAX_STAMP, MAX_UINT, next_stamp, weight
from gossip.topology import PeerRecord, Topology, TopologyError

ME = "00:00:00:00:00:00"
PEER = "00:00:00:00:00:01"


def record(name: str = PEER, incarnation: int = 5, version: int = 1, **kw: Any) -> PeerRecord:
    fields: dict[str, Any] = {
        "nickname": "n",
        "uid": 7,
        "data_endpoint": ("10.0.0.1", 6783),
        "control_endpoint": ("10.0.0.1", 6783),
    }
    fields.update(kw)
    return PeerRecord(name=name, incarnation=incarnation, version=version, **fields)


def fresh() -> Topology:
    return Topology(record(ME, uid=1))


def packs(r: PeerRecord) -> bool:
    return PeerRecord.from_wire(msgpack.unpackb(msgpack.packb(r.to_wire()))) == r


# -- stamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["i", "v"])
@pytest.mark.parametrize("value", [MAX_STAMP + 1, MAX_UINT])
def test_a_stamp_above_the_bound_is_refused(key: str, value: int) -> None:
    with pytest.raises(TopologyError, match=repr(key)):
        PeerRecord.from_wire({**record().to_wire(), key: value})


def test_the_largest_stamp_and_uid_are_accepted() -> None:
    r = record(incarnation=MAX_STAMP, version=MAX_STAMP, uid=MAX_UINT)
    assert PeerRecord.from_wire(r.to_wire()) == r


def test_next_stamp_never_leaves_the_bounds() -> None:
    assert next_stamp((3, 4)) == (3, 5)
    assert next_stamp((3, MAX_STAMP)) == (4, 0)
    assert next_stamp((MAX_STAMP, MAX_STAMP)) is None


def test_a_claim_of_our_name_at_the_top_version_is_outranked_within_the_bounds() -> None:
    t = fresh()
    [jumped] = t.merge([record(ME, incarnation=9, version=MAX_STAMP, uid=666)], source="x")
    assert jumped.stamp == (10, 0)
    assert jumped.uid == 1
    assert packs(jumped)
    changed = t.set_local(blocks=("10.32.0.0/24",))
    assert changed is not None and changed.stamp == (10, 1) and packs(changed)
    assert t.rejections.counts == {"name_collision": 1}


def test_a_claim_of_our_name_at_the_top_stamp_is_reported_and_nothing_overflows() -> None:
    t = fresh()
    top = record(ME, incarnation=MAX_STAMP, version=MAX_STAMP, uid=666)
    assert t.merge([top]) == []
    assert t.collision_count == 1
    assert t.local.uid == 1 and t.local.stamp == (5, 1)
    t.merge([record(ME, incarnation=MAX_STAMP, version=MAX_STAMP - 1, uid=666)])
    assert t.local.stamp == (MAX_STAMP, MAX_STAMP)
    assert t.set_local(blocks=("10.32.0.0/24",)) is None  # no stamp left: no change, no crash
    assert packs(t.local)


# -- a name tied to its live connection ------------------------------------------------------


def test_a_bound_name_refuses_records_with_another_uid() -> None:
    t = fresh()
    t.bind(PEER, 7)
    assert t.merge([record(uid=7)]) == [record(uid=7)]
    forged = record(incarnation=99, version=99, uid=666, blocks=("10.32.0.0/24",))
    assert t.merge([forged], source="10.9.9.9:1|x") == []
    assert t.records[PEER] == record(uid=7)
    assert t.rejections.counts == {"name_bound": 1}
    [line] = t.rejections.lines(0.0)
    assert line.startswith("reject name_bound from 10.9.9.9:1|x: record 00:00:00:00:00:01(n)")


def test_binding_drops_a_record_held_under_another_uid() -> None:
    t = fresh()
    t.merge([record(incarnation=99, uid=666)])  # arrived before the peer connected
    t.bind(PEER, 7)
    assert PEER not in t.records
    assert t.wanted({PEER: (5, 1)}) == [PEER]  # the live peer's own record is wanted again
    assert t.merge([record(uid=7)]) == [record(uid=7)]


def test_unbinding_lets_a_restarted_peer_in() -> None:
    t = fresh()
    t.bind(PEER, 7)
    t.merge([record(uid=7)])
    restarted = record(incarnation=6, uid=8)
    assert t.merge([restarted]) == []
    t.unbind(PEER, 8)  # not the uid bound: nothing changes
    assert t.merge([restarted]) == []
    t.unbind(PEER, 7)
    assert t.merge([restarted]) == [restarted]


# -- totals ----------------------------------------------------------------------------------


def test_records_beyond_the_count_limit_are_refused_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topology, "MAX_RECORDS", 3)
    t = fresh()
    names = [f"00:00:00:00:01:{i:02x}" for i in range(4)]
    kept = t.merge([record(n) for n in names])
    assert [r.name for r in kept] == names[:2]
    assert t.rejections.counts == {"records_limit": 2}
    assert t.merge([record(names[0], version=2)]) == [record(names[0], version=2)]


def test_records_beyond_the_weight_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    t = fresh()
    monkeypatch.setattr(topology, "MAX_WEIGHT", t.weight + 2 * weight(record()))
    heavy = record("00:00:00:00:00:02", meta=b"\x00" * 4096)
    assert t.merge([record(), heavy]) == [record()]
    assert t.rejections.counts == {"records_limit": 1}


def test_the_weight_follows_stores_and_removals() -> None:
    t = fresh()
    t.merge([record(), record("00:00:00:00:00:02", meta=b"xyz")])
    t.merge([record(version=2, blocks=("10.32.0.0/24",))])
    t.remove("00:00:00:00:00:02")
    assert t.weight == sum(weight(r) for r in t.records.values())
