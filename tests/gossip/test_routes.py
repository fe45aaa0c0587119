"""Data-plane routes: hand-drawn topologies, a naive reference, route invariants and scale."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from gossip.routes import check_routes, next_hops
from gossip.topology import PeerRecord


def name(i: int) -> str:
    return ":".join(f"{b:02x}" for b in i.to_bytes(6, "big"))


A, B, C, D = (name(i) for i in (1, 2, 3, 4))


def peers(
    n: int, broken: Iterable[tuple[int, int]] = (), departed: Iterable[int] = ()
) -> dict[str, PeerRecord]:
    """Records of peers 1..n; each broken pair is listed by its first peer only."""
    unreachable: dict[int, list[str]] = {}
    for a, b in broken:
        unreachable.setdefault(a, []).append(name(b))
    gone = set(departed)
    return {
        name(i): PeerRecord(
            name(i), f"n{i}", 1, 1, i, ("10.0.0.1", 6784), ("10.0.0.1", 6783),
            unreachable=tuple(unreachable.get(i, ())), departed=i in gone,
        )
        for i in range(1, n + 1)
    }  # fmt: skip


def tables(records: dict[str, PeerRecord]) -> dict[str, dict[str, str]]:
    live = [n for n, r in records.items() if not r.departed]
    return {n: next_hops(n, records) for n in live}


def reference(local: str, records: dict[str, PeerRecord]) -> dict[str, str]:
    """The rule written out naively: all-pairs distances, lowest first hop one step closer."""
    nodes = sorted(n for n, r in records.items() if not r.departed)

    def works(a: str, b: str) -> bool:
        return a != b and b not in records[a].unreachable and a not in records[b].unreachable

    def distances(dest: str) -> dict[str, int]:
        dist, todo = {dest: 0}, deque([dest])
        while todo:
            u = todo.popleft()
            for v in nodes:
                if v not in dist and works(u, v):
                    dist[v] = dist[u] + 1
                    todo.append(v)
        return dist

    hops = {}
    for dest in nodes:
        dist = distances(dest)
        if dest == local or local not in dist:
            continue
        closer = [v for v in nodes if works(local, v) and dist.get(v) == dist[local] - 1]
        hops[dest] = min(closer)
    return hops


# -- hand-drawn topologies -------------------------------------------------------------------


def test_full_mesh_is_all_direct() -> None:
    records = peers(4)
    assert next_hops(A, records) == {B: B, C: C, D: D}


def test_one_broken_pair_relays_via_the_lowest_common_neighbour() -> None:
    records = peers(4, broken=[(1, 2)])
    assert next_hops(A, records) == {B: C, C: C, D: D}
    assert next_hops(B, records) == {A: C, C: C, D: D}  # listed by A only: still symmetric


def test_line_relays_through_the_middle() -> None:
    records = peers(3, broken=[(1, 3)])
    assert next_hops(A, records) == {B: B, C: B}
    assert next_hops(C, records) == {A: B, B: B}


def test_two_relays_pick_the_lowest_first_hop() -> None:
    # A - B - D - E and A - C - D - E: shortest paths to E start at B or C; B wins.
    e = name(5)
    records = peers(5, broken=[(1, 4), (1, 5), (2, 3), (2, 5), (3, 5)])
    assert next_hops(A, records) == {B: B, C: C, D: B, e: B}
    assert next_hops(e, records) == {D: D, A: D, B: D, C: D}


def test_partition_leaves_the_other_side_out() -> None:
    records = peers(4, broken=[(1, 3), (1, 4), (2, 3), (2, 4)])
    assert next_hops(A, records) == {B: B}
    assert next_hops(D, records) == {C: C}


def test_departed_and_dead_peers_are_not_nodes() -> None:
    records = peers(4, broken=[(1, 2)], departed=[3])
    assert next_hops(A, records) == {B: D, D: D}
    assert next_hops(A, records, alive={A, B, C}) == {}
    assert next_hops(A, records, alive={B, D}) == {B: D, D: D}  # local is always a node


def test_unknown_names_in_unreachable_are_ignored() -> None:
    records = peers(2, broken=[(1, 9)])
    assert next_hops(A, records) == {B: B}


# -- invariants ------------------------------------------------------------------------------


def test_check_routes_passes_correct_tables() -> None:
    records = peers(4, broken=[(1, 2), (3, 4)])
    assert check_routes(records, tables(records)) == []


def test_check_routes_reports_a_missing_peer() -> None:
    records = peers(3)
    routes = tables(records)
    del routes[A][C]
    assert check_routes(records, routes) == [f"{A}: no route to reachable {C}"]


def test_check_routes_reports_a_broken_hop_once() -> None:
    records = peers(3, broken=[(2, 3)])
    routes = tables(records)
    routes[A][C] = B  # B cannot reach C directly, and relays A's traffic there anyway
    routes[B][C] = C
    assert check_routes(records, routes) == [f"route to {C}: {B} -> {C} is not a working link"]


def test_check_routes_reports_a_loop_and_a_dead_end() -> None:
    records = peers(4, broken=[(1, 4)])
    routes = tables(records)
    routes[A][D], routes[B][D] = B, A
    routes[C][A] = B
    del routes[B][A]
    problems = check_routes(records, routes)
    assert f"route to {D}: loop {A} -> {B}" in problems
    assert f"route to {A}: {B} has no entry but {C} relays through it" in problems
    assert f"{B}: no route to reachable {A}" in problems


exception_sets = st.integers(2, 8).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), max_size=n * 2),
        st.lists(st.integers(1, n), max_size=2),
    )
)


@given(exception_sets)
def test_routes_match_the_naive_reference(
    case: tuple[int, list[tuple[int, int]], list[int]],
) -> None:
    n, broken, departed = case
    records = peers(n, broken, departed)
    for local in tables(records):
        assert next_hops(local, records) == reference(local, records)


@given(exception_sets)
def test_routes_are_consistent_loop_free_and_complete(
    case: tuple[int, list[tuple[int, int]], list[int]],
) -> None:
    n, broken, departed = case
    records = peers(n, broken, departed)
    routes = tables(records)
    assert check_routes(records, routes) == []
    for source, table in routes.items():
        for dest, hop in table.items():
            path = [source]
            while path[-1] != dest:
                path.append(routes[path[-1]][dest])
                assert len(path) <= n
            if hop != dest:
                assert routes[hop][dest] != source  # y's route to d never goes back through x


def test_three_thousand_nodes_with_a_hundred_exceptions() -> None:
    n = 3000
    broken = [(i, i + 1 + (i * 7) % 50) for i in range(1, 2001, 20)]
    records = peers(n, broken)
    routes = next_hops(name(1), records)
    assert len(routes) == n - 1
    assert routes[name(9)] == name(2)  # 1 - 9 is the first exception
    assert sum(dest != hop for dest, hop in routes.items()) == 1
