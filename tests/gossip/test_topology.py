"""The topology CRDT: merge laws, own-name defence, tombstones, wire form and anti-entropy."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.topology import MAX_ENTRIES, MAX_STRING, PeerRecord, Topology, TopologyError

ME = "00:00:00:00:00:00"
POOL = [f"00:00:00:00:00:{i:02x}" for i in range(1, 6)]


def record(name: str = POOL[0], incarnation: int = 1, version: int = 1, **kw: Any) -> PeerRecord:
    fields: dict[str, Any] = {
        "nickname": "n",
        "uid": 7,
        "data_endpoint": ("10.0.0.1", 6784),
        "control_endpoint": ("10.0.0.1", 6783),
    }
    fields.update(kw)
    return PeerRecord(name=name, incarnation=incarnation, version=version, **fields)


def fresh() -> Topology:
    return Topology(record(ME, uid=1))


records_st = st.builds(
    record,
    name=st.sampled_from(POOL),
    incarnation=st.integers(0, 3),
    version=st.integers(0, 3),
    uid=st.integers(0, 2),
    nickname=st.sampled_from(["a", "b"]),
    connections=st.lists(st.sampled_from(POOL), max_size=3).map(tuple),
    unreachable=st.lists(st.sampled_from(POOL), max_size=2).map(tuple),
    blocks=st.lists(st.sampled_from(["10.32.0.0/24", "10.32.1.0/24"]), max_size=2).map(tuple),
    departed=st.booleans(),
)
batches = st.lists(records_st, max_size=12)


# -- merge laws ------------------------------------------------------------------------------


@given(batches, st.randoms(use_true_random=False))
def test_merge_order_and_batching_do_not_matter(
    batch: list[PeerRecord], rng: random.Random
) -> None:
    one = fresh()
    one.merge(batch)
    shuffled = list(batch)
    rng.shuffle(shuffled)
    cut = rng.randrange(len(shuffled) + 1)
    two = fresh()
    two.merge(shuffled[:cut])
    two.merge(shuffled[cut:])
    assert one.records == two.records


@given(batches, batches, batches)
def test_merging_states_is_associative_and_commutative(
    a: list[PeerRecord], b: list[PeerRecord], c: list[PeerRecord]
) -> None:
    def state(*parts: list[PeerRecord]) -> Topology:
        t = fresh()
        for part in parts:
            t.merge(part)
        return t

    ab_c = state(state(a, b).snapshot(), c)
    a_bc = state(a, state(b, c).snapshot())
    assert ab_c.records == a_bc.records == state(c, b, a).records


@given(batches, batches)
def test_merge_returns_exactly_the_novelty(first: list[PeerRecord], then: list[PeerRecord]) -> None:
    t = fresh()
    t.merge(first)
    before = dict(t.records)
    delta = t.merge(then)
    changed = {n: r for n, r in t.records.items() if before.get(n) != r}
    assert {r.name: r for r in delta} == changed
    assert len(delta) == len(changed)
    assert t.merge(then) == []
    assert t.merge(t.snapshot()) == []


@given(batches)
def test_gossiping_deltas_converges_like_full_state(batch: list[PeerRecord]) -> None:
    origin, relay, full = fresh(), fresh(), fresh()
    for r in batch:
        relay.merge(origin.merge([r]))
    full.merge(origin.snapshot())
    assert relay.records == full.records == origin.records


def test_restart_wins_through_its_incarnation() -> None:
    t = fresh()
    t.merge([record(incarnation=1, version=50, uid=3)])
    restarted = record(incarnation=2, version=1, uid=4)
    assert t.merge([restarted]) == [restarted]
    assert t.merge([record(incarnation=1, version=51, uid=3)]) == []
    assert t.records[POOL[0]] == restarted


def test_equal_stamps_still_merge_deterministically() -> None:
    low, high = record(uid=3), record(uid=4)
    for order in ([low, high], [high, low]):
        t = fresh()
        t.merge(order)
        assert t.records[POOL[0]] == high


# -- our own record --------------------------------------------------------------------------


def test_set_local_bumps_version_and_ignores_no_ops() -> None:
    t = fresh()
    changed = t.set_local(connections=(POOL[1], POOL[0]))
    assert changed == t.local
    assert changed is not None
    assert (changed.version, changed.connections) == (2, (POOL[0], POOL[1]))
    assert t.set_local(connections=[POOL[0], POOL[1], POOL[0]]) is None
    assert t.set_local() is None
    with pytest.raises(TypeError, match="version"):
        t.set_local(version=9)


def test_own_name_collision_is_reported_and_ours_outranks_it() -> None:
    t = fresh()
    mine = t.local
    impostor = record(ME, incarnation=1, version=9, uid=99, nickname="other")
    delta = t.merge([impostor])
    assert delta == [t.local]
    assert t.local == dataclasses.replace(mine, version=10)
    assert [r for r, _ in t.collisions] == [impostor]
    assert "name collision" in t.collisions[0][1]
    assert t.merge([impostor]) == []  # ours wins now: no repeated report
    assert t.collision_count == 1


def test_echo_of_a_later_stamped_incarnation_is_outranked() -> None:
    t = fresh()
    echo = record(ME, incarnation=5, version=3, uid=42)
    t.merge([echo])
    assert (t.local.stamp, t.local.uid) == ((5, 4), 1)


def test_echo_of_an_earlier_incarnation_is_ignored_silently() -> None:
    t = Topology(record(ME, incarnation=5, uid=1))
    assert t.merge([record(ME, incarnation=4, version=100, uid=2)]) == []
    assert t.collisions == []
    assert t.local.stamp == (5, 1)


def test_own_state_with_a_higher_version_is_not_a_collision() -> None:
    t = fresh()
    t.merge([record(ME, version=7, uid=1, nickname="stale")])
    assert t.collisions == []
    assert (t.local.version, t.local.nickname) == (8, "n")


def test_own_name_defence_ends_at_the_greatest_stamp_in_any_order() -> None:
    claims = [record(ME, incarnation=2, version=1, uid=5), record(ME, incarnation=1, version=9)]
    stamps = set()
    for order in (claims, claims[::-1]):
        t = fresh()
        t.merge(order)
        stamps.add(t.local.stamp)
    assert stamps == {(2, 2)}


# -- removal ---------------------------------------------------------------------------------


def test_removed_departed_record_is_not_resurrected_but_a_restart_is() -> None:
    t = fresh()
    gone = record(departed=True)
    t.merge([gone])
    assert t.remove(POOL[0]) == gone
    assert t.merge([gone, record(version=0)]) == []
    assert t.wanted({POOL[0]: gone.stamp}) == []
    back = record(incarnation=2)
    assert t.merge([back]) == [back]


def test_removed_live_record_can_come_back() -> None:
    t = fresh()
    peer = record()
    t.merge([peer])
    t.remove(POOL[0])
    assert t.remove(POOL[0]) is None
    assert t.merge([peer]) == [peer]


def test_own_record_cannot_be_removed() -> None:
    with pytest.raises(ValueError, match="own"):
        fresh().remove(ME)


# -- anti-entropy ----------------------------------------------------------------------------


def test_digest_newer_than_and_wanted() -> None:
    a, b = fresh(), Topology(record(POOL[4], uid=2))
    a.merge([record(POOL[0], version=3), record(POOL[1], version=1)])
    b.merge([record(POOL[0], version=2), record(POOL[1], version=5), record(POOL[2])])
    assert a.digest() == {ME: (1, 1), POOL[0]: (1, 3), POOL[1]: (1, 1)}
    assert [r.name for r in a.newer_than(b.digest())] == [ME, POOL[0]]
    assert a.wanted(b.digest()) == [POOL[1], POOL[2], POOL[4]]


@given(batches, batches)
def test_one_anti_entropy_round_each_way_converges(
    x: list[PeerRecord], y: list[PeerRecord]
) -> None:
    # A digest carries stamps only: one stamp per name means one record (no collisions here).
    unique = {(r.name, r.stamp): r for r in reversed(x + y)}
    a, b = fresh(), fresh()
    a.merge(unique[(r.name, r.stamp)] for r in x)
    b.merge(unique[(r.name, r.stamp)] for r in y)
    b.merge(a.newer_than(b.digest()))
    a.merge(b.newer_than(a.digest()))
    assert a.records == b.records


# -- wire form -------------------------------------------------------------------------------


@given(records_st)
def test_wire_round_trip_through_msgpack(r: PeerRecord) -> None:
    data = msgpack.unpackb(msgpack.packb(r.to_wire(), use_bin_type=True), raw=False)
    assert PeerRecord.from_wire(data) == r


def test_wire_form_is_compact_and_tolerates_unknown_keys() -> None:
    wire = record().to_wire()
    assert set(wire) == {"n", "nk", "i", "v", "u", "de", "ce"}
    assert PeerRecord.from_wire({**wire, "future": [1, 2]}) == record()


GOOD = record(connections=(POOL[1],), blocks=("10.32.0.0/24",)).to_wire()


@pytest.mark.parametrize(
    "change",
    [
        {"n": None},
        {"n": "AA:bb:cc:dd:ee:ff"},
        {"n": "aa:bb:cc:dd:ee"},
        {"nk": 5},
        {"nk": "x" * (MAX_STRING + 1)},
        {"v": "3"},
        {"v": True},
        {"i": -1},
        {"u": 2**64},
        {"de": ["10.0.0.1"]},
        {"de": ["10.0.0.1", 70000]},
        {"ce": "10.0.0.1:6783"},
        {"c": ["not-a-name"]},
        {"c": POOL[1]},
        {"x": [POOL[0]] * (MAX_ENTRIES + 1)},
        {"b": [7]},
        {"dp": 1},
    ],
)
def test_from_wire_rejects_malformed_records(change: dict[str, Any]) -> None:
    bad = {**GOOD, **change}
    if change.get("n", "") is None:
        del bad["n"]
    with pytest.raises(TopologyError):
        PeerRecord.from_wire(bad)


def test_from_wire_rejects_a_non_map() -> None:
    with pytest.raises(TopologyError):
        PeerRecord.from_wire([1, 2])  # type: ignore[arg-type]


def test_topology_error_is_a_value_error() -> None:
    assert issubclass(TopologyError, ValueError)
