"""Totals of the fast path's kernel counters (overlay/traffic.py): the VXLAN headers taken off
per datagram, a counter that starts again from zero never takes a total down, hosts no longer
kept forgotten."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from overlay.traffic import VXLAN_FRAME, Dropped, Totals, Traffic, inner

H1, H2 = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")


def test_inner_takes_the_headers_off_each_datagram() -> None:
    outer = Traffic(2, 2 * VXLAN_FRAME + 1000, 1, VXLAN_FRAME + 84)
    assert inner(outer) == Traffic(2, 1000, 1, 84)
    assert inner(Traffic(1, 10, 0, 0)) == Traffic(1, 0, 0, 0)  # never below zero


def test_a_counter_that_starts_again_keeps_what_it_counted() -> None:
    totals = Totals()
    totals.update({H1: Traffic(1, 100 + VXLAN_FRAME)}, {H1})
    assert totals.get(H1) == Traffic(1, 100)
    totals.update({H1: Traffic(1, 30 + VXLAN_FRAME)}, {H1})  # made again: from zero
    assert totals.get(H1) == Traffic(2, 130)
    totals.update({}, {H1})  # missing from one reading (the table being made): kept
    totals.update({H1: Traffic(2, 60 + 2 * VXLAN_FRAME)}, {H1})
    assert totals.get(H1) == Traffic(3, 160)
    totals.update({H1: Traffic(4, 10 + 4 * VXLAN_FRAME)}, {H1})  # more datagrams but fewer
    assert totals.get(H1) == Traffic(7, 170)  # inner bytes: made again, what it had is kept
    totals.update({H2: Traffic(0, 0, 1, VXLAN_FRAME)}, {H2})  # H1 no longer a peer
    assert totals.get(H1) == Traffic()
    assert totals.get(H2) == Traffic(0, 0, 1, 0)


steps = st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 10**5)), max_size=30)


@given(steps)
def test_totals_never_go_down(changes: list[tuple[bool, int, int]]) -> None:
    """Each step the kernel counts more datagrams (each at least VXLAN_FRAME bytes) or, made
    again, counts from zero."""
    totals, last, counter = Totals(), Traffic(), Traffic()
    for again, packets, extra in changes:
        more = Traffic(packets, VXLAN_FRAME * packets + extra)
        counter = more if again else counter + more
        totals.update({H1: counter}, {H1})
        now = totals.get(H1)
        assert not now.fell_from(last)
        last = now


def test_the_guards_drops_add_up_across_a_remade_table_and_are_told_once() -> None:
    dropped = Dropped()
    for reading in (0, 3, None, 5, 2, 2):  # None: unreadable; 2 after 5: the table was remade
        dropped.update(reading)
    assert dropped.total == 7
    assert dropped.untold() == 7
    assert dropped.untold() == 0
    dropped.update(4)
    assert (dropped.total, dropped.untold()) == (9, 2)
