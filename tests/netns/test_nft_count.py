"""The fast path's per-peer counters on the real kernel (overlay/nft_count.py): VXLAN-port
datagrams to and from each listed host counted in its set element and exempt from connection
tracking, other ports and other hosts not; ``sync`` keeps every count while it adds and
removes hosts, does nothing when nothing differs, makes the table anew when someone changed
it, and removes it when told."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_DELCHAIN, nft_chain_msg

from overlay import nft_rules, nft_wire
from overlay.netdev import Masquerade, UdpGuard
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
from overlay.nft_count import TrafficCounters
from overlay.sysctl import read_sysctl
from overlay.traffic import Traffic
from tests.netns.test_netlink import _arrivals, _pair, _udp, _vxlan

pytestmark = pytest.mark.netns

A, B, C = IPv4Address("192.168.81.1"), IPv4Address("192.168.81.2"), IPv4Address("192.168.81.9")
PORT = 6784


@pytest.fixture
def two(scratch_netns) -> tuple[str, str]:
    a, b = _pair(scratch_netns, "ca", "cb")
    with Netlink(a) as nl:
        nl.ensure_address("wpu0", IPv4Interface(f"{A}/24"))
    with Netlink(b) as nl:
        nl.ensure_address("wpu1", IPv4Interface(f"{B}/24"))
    return a, b


def _send(a: str, b: str, payloads: list[bytes], port: int = PORT) -> None:
    """Datagrams from A in ``a`` to B in ``b`` (each at most 100 bytes), all arrived."""
    sender = _udp(a, str(A), 40000)
    receiver = _udp(b, str(B), port)
    try:
        for payload in payloads:
            sender.sendto(payload, (str(B), port))
        assert _arrivals(receiver) == set(payloads)
    finally:
        sender.close()
        receiver.close()


def test_datagrams_to_and_from_listed_hosts_are_counted_each_way(two) -> None:
    a, b = two
    sent, received = TrafficCounters(a), TrafficCounters(b)
    assert sent.read() == {}
    assert sent.sync(PORT, {B, C}) is True
    assert received.sync(PORT, {A}) is True
    assert sent.sync(PORT, {B, C}) is False  # nothing differs: nothing done
    _send(a, b, [b"x" * 40, b"y" * 90])
    _send(a, b, [b"other port"], port=PORT + 1)
    ip_udp = 28  # the counters count IPv4 packets
    assert sent.read() == {B: Traffic(2, 130 + 2 * ip_udp, 0, 0), C: Traffic()}
    assert received.read() == {A: Traffic(0, 0, 2, 130 + 2 * ip_udp)}


def test_sync_keeps_counts_while_hosts_change_and_remakes_a_changed_table(two) -> None:
    a, b = two
    counters = TrafficCounters(a)
    counters.sync(PORT, {B})
    _send(a, b, [b"z" * 72])
    assert counters.sync(PORT, {B, C}) is True  # C added, B's count kept
    assert counters.read() == {B: Traffic(1, 100, 0, 0), C: Traffic()}
    assert counters.sync(PORT, {B}) is True
    assert counters.read() == {B: Traffic(1, 100, 0, 0)}
    extra = nft_rules.notrack_expressions(PORT, nft_rules.SADDR, "tx")  # one we never make
    _append(a, nft_wire.rule(counters.table, "count-in", extra))
    assert counters.sync(PORT, {B}) is True  # not our shape: made anew, counts from zero
    assert counters.read() == {B: Traffic()}
    _append(a, nft_wire.message(nft_chain_msg, NFT_MSG_DELCHAIN, 0,
                                NFTA_CHAIN_TABLE=counters.table,
                                NFTA_CHAIN_NAME="count-in"))  # fmt: skip
    assert counters.sync(PORT, {B}) is True
    assert counters.sync(PORT + 1, {B}) is True  # another port: made anew
    assert counters.sync(PORT + 1, {B}) is False
    assert counters.sync(None, set()) is True
    assert counters.read() == {}
    assert counters.sync(None, set()) is False


def _append(ns: str, message: object) -> None:
    nft_wire.run(ns, "append", lambda nft: nft_wire.transaction(nft, [message]))


def test_counted_datagrams_are_not_tracked_other_traffic_is(two) -> None:
    """With masquerade rules the namespace tracks connections; the VXLAN datagrams to and from
    the counted hosts are exempt both ways (count-in, count-out), any other port is not."""
    a, b = two
    with Netlink(b) as nl:
        cluster = IPv4Network("10.32.0.0/12")
        guard = UdpGuard.of(PORT, [(A, IPv4Network("10.40.1.0/24"))])  # A's frames from there
        nl.replace_nat_table("weave-py", [Masquerade(cluster, cluster)], guard)
    TrafficCounters(b).sync(PORT, {A})
    count = "net/netfilter/nf_conntrack_count"
    receivers = [_udp(b, str(B), port) for port in (PORT, PORT + 1)]
    sender = _udp(a, str(A), 40000)
    try:
        before = int(run_in_netns(b, read_sysctl, count))
        sender.sendto(_vxlan(b"vxlan", "10.40.1.7"), (str(B), PORT))
        assert {p[42:] for p in _arrivals(receivers[0])} == {b"vxlan"}
        receivers[0].sendto(b"back", (str(A), PORT))  # leaves by count-out
        assert int(run_in_netns(b, read_sysctl, count)) == before
        sender.sendto(b"other", (str(B), PORT + 1))
        assert _arrivals(receivers[1]) == {b"other"}
        assert int(run_in_netns(b, read_sysctl, count)) == before + 1
    finally:
        for sock in (*receivers, sender):
            sock.close()
