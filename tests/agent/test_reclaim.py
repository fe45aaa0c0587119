"""The reclaim core: which step comes due for a deleted Node, on a virtual clock."""

from __future__ import annotations

from agent.peers import reclaim
from agent.peers.nodes import NodeInfo
from agent.peers.reclaim import DELETE, DONE, GAVE_UP, REMOVE, RETRY, TAKE, Reclaims, lease_name

GONE = NodeInfo("node-3", "0a1b2c3d-4e5f")


def kinds(r: Reclaims, now: float) -> list[tuple[str, str]]:
    return [(s.kind, s.node) for s in r.due(now)]


def test_the_winner_removes_the_peer_keeps_the_lease_then_deletes_it() -> None:
    r = Reclaims("node-1", retry_interval=5, give_up_timeout=60, retention=100)
    r.node_deleted(GONE, 0.0)
    assert kinds(r, 0.0) == [(TAKE, "node-3")]
    assert kinds(r, 0.0) == []  # in flight until reported
    r.lease_taken("node-3", True, 1.0)
    assert kinds(r, 1.0) == [(REMOVE, "node-3")]
    assert r.removed("node-3", False, 2.0) == RETRY  # the peer is still reachable
    assert r.next_at == 7.0 and kinds(r, 6.9) == []
    assert kinds(r, 7.0) == [(REMOVE, "node-3")]
    assert r.removed("node-3", True, 8.0) == DONE
    assert r.next_at == 108.0
    assert kinds(r, 108.0) == [(DELETE, "node-3")]
    r.lease_deleted("node-3", True, 109.0)
    assert r.steps == {} and r.known == {} and r.next_at == float("inf")


def test_the_losers_do_nothing_more() -> None:
    r = Reclaims("node-2")
    r.node_deleted(GONE, 0.0)
    r.due(0.0)
    r.lease_taken("node-3", False, 1.0)
    assert r.steps == {} and r.due(1e9) == []


def test_a_failed_create_is_tried_again() -> None:
    r = Reclaims("node-2", retry_interval=5)
    r.node_deleted(GONE, 0.0)
    r.due(0.0)
    r.lease_taken("node-3", None, 1.0)
    assert kinds(r, 6.0) == [(TAKE, "node-3")]


def test_the_winner_gives_up_after_its_timeout() -> None:
    r = Reclaims("node-1", retry_interval=5, give_up_timeout=10, retention=100)
    r.node_deleted(GONE, 0.0)
    r.due(0.0)
    r.lease_taken("node-3", True, 0.0)
    r.due(0.0)
    assert r.removed("node-3", False, 5.0) == RETRY
    r.due(10.0)
    assert r.removed("node-3", False, 10.0) == GAVE_UP
    assert r.steps["node-3"].kind == DELETE


def test_a_node_back_under_its_name_stops_the_reclaim_and_deletes_the_lease() -> None:
    r = Reclaims("node-1")
    r.node_deleted(GONE, 0.0)
    r.due(0.0)
    r.lease_taken("node-3", True, 0.0)
    r.due(0.0)  # rmpeer in flight
    r.node_added(NodeInfo("node-3", "new-uid"), 1.0)
    assert r.removed("node-3", True, 1.5) == DONE  # the late answer changes nothing
    steps = r.due(2.0)
    assert [(s.kind, s.lease) for s in steps] == [(DELETE, lease_name(GONE))]


def test_a_node_this_agent_never_saw_deleted_touches_no_lease() -> None:
    r = Reclaims("node-1")
    r.node_added(NodeInfo("node-3", "uid"), 0.0)  # say, every Node of the first list
    assert r.steps == {}


def test_this_node_never_reclaims_itself() -> None:
    r = Reclaims("node-3")
    r.node_deleted(GONE, 0.0)
    assert r.steps == {}


def test_lease_names_are_per_node_object_and_valid() -> None:
    first = lease_name(GONE)
    assert first == "weave-py-reclaim.node-3.0a1b2c3d"
    assert lease_name(NodeInfo("node-3", "ffff0000-1")) != first
    long = lease_name(NodeInfo("n" * 253, "0a1b2c3d"))
    assert len(long) <= reclaim.MAX_NAME and long.endswith(".0a1b2c3d")
    assert long != lease_name(NodeInfo("n" * 252 + "m", "0a1b2c3d"))


def test_refusals_space_the_tries_out_to_a_minute() -> None:
    r = Reclaims("node-1", retry_interval=5, give_up_timeout=3600)
    r.node_deleted(GONE, 0.0)
    r.due(0.0)
    r.lease_taken("node-3", True, 0.0)
    now, waits = 0.0, []
    for _ in range(6):
        (step,) = r.due(now)
        assert step.kind == REMOVE
        r.removed("node-3", False, now)
        waits.append(r.next_at - now)
        now = r.next_at
    assert waits == [5, 10, 20, 40, 60, 60]
