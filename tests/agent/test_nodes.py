"""The Node table core: lists and watch events in, dial targets and changes out."""

from __future__ import annotations

import ipaddress
import random

from agent.peers.nodes import ADDED, DELETED, MODIFIED, Backoff, Changes, NodeInfo, NodeTable

A = NodeInfo("a", "uid-a", "192.168.1.7")
B = NodeInfo("b", "uid-b", "192.168.1.8")
C = NodeInfo("c", "uid-c", "192.168.1.9", ipaddress.IPv4Network("10.244.2.0/24"))


def table() -> NodeTable:
    t = NodeTable("a", 6783)
    t.listed([A, B], "10")
    return t


def test_a_list_fills_the_table_and_the_targets_leave_out_this_node() -> None:
    t = NodeTable("a", 6783)
    changes = t.listed([A, B, C], "10")
    assert changes == Changes((A, B, C), (), True)
    assert t.targets() == (("192.168.1.8", 6783), ("192.168.1.9", 6783))
    assert (t.count, t.mine, t.version) == (3, A, "10")


def test_watch_events_add_modify_and_delete() -> None:
    t = table()
    assert t.event(ADDED, C, "11") == Changes(added=(C,), targets_changed=True)
    moved = NodeInfo("c", "uid-c", "192.168.1.99")
    assert t.event(MODIFIED, moved, "12") == Changes(targets_changed=True)
    assert t.event(MODIFIED, moved, "13") == Changes()  # nothing the agent uses changed
    assert not t.event(MODIFIED, moved, "13")
    assert t.event(DELETED, moved, "14") == Changes(removed=(moved,), targets_changed=True)
    assert t.version == "14" and "c" not in t.nodes


def test_a_node_without_an_address_is_no_target_until_it_has_one() -> None:
    t = table()
    bare = NodeInfo("c", "uid-c")
    assert t.event(ADDED, bare, "11") == Changes(added=(bare,))
    assert t.event(MODIFIED, C, "12") == Changes(targets_changed=True)


def test_a_name_created_again_is_a_removal_and_an_addition() -> None:
    t = table()
    again = NodeInfo("b", "uid-b2", "192.168.1.8")
    assert t.event(ADDED, again, "11") == Changes(added=(again,), removed=(B,))
    assert t.event(DELETED, B, "12") == Changes()  # the old object's late deletion
    assert t.nodes["b"] == again


def test_a_relist_sees_what_the_watch_missed() -> None:
    t = table()
    t.expire()
    assert t.version is None
    changes = t.listed([A, C], "20")  # b went and c came while nobody watched
    assert changes == Changes(added=(C,), removed=(B,), targets_changed=True)
    assert t.listed([A, C], "21") == Changes()


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(1.0, 2.0, 8.0, random.Random(1))
    delays = [b.failed() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.75 * nominal <= delay <= nominal
    b.succeeded()
    assert b.failed() <= 1.0
