"""The fast path's node state on the real kernel, end to end: two scratch node namespaces joined
by a veth underlay, each reconciled by ``node.Reconciler`` with a ``Fastdp`` for the other, a
pod namespace on each bridge. Pod-to-pod pings go through the VXLAN devices (their counters
count them; nobody reads the TUNs, so nothing else could carry them); a block switched to the
sleeve stops reaching the VXLAN device, and back again; the UDP guard drops VXLAN from a host
that is not a peer's, and frames from a peer's host with an inner source outside its space."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from agent.lab.probe import ping
from overlay import node, tun
from overlay.actions import NAT_TABLE, ReplaceNat
from overlay.fastdp import Fastdp
from overlay.netdev import Route, UdpGuard, Veth
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
from overlay.node import NodeSpec
from overlay.routes import AddRoute
from overlay.vtep import FASTDP_PORT, FASTDP_VNI, Vtep, vtep_mac

pytestmark = pytest.mark.netns

NET = ipaddress.IPv4Network
ADDR = ipaddress.IPv4Address
IFACE = ipaddress.IPv4Interface
BR, TUN, VX, UNDERLAY = "wpbr", "wptun", "wpvx", "wpu"
NAMES = {"a": "02:00:00:00:0a:01", "b": "02:00:00:00:0b:01"}
HOSTS = {"a": ADDR("198.51.100.1"), "b": ADDR("198.51.100.2")}
BLOCKS = {"a": NET("10.46.1.0/24"), "b": NET("10.46.2.0/24")}
PODS = {"a": IFACE("10.46.1.5/24"), "b": IFACE("10.46.2.5/24")}


def gateway(me: str) -> IFACE:
    return IFACE(f"{BLOCKS[me][1]}/{BLOCKS[me].prefixlen}")


def vtep(me: str) -> Vtep:
    return Vtep(gateway(me).ip, vtep_mac(NAMES[me]), HOSTS[me])


def spec(me: str, other: str, fast: bool = True) -> NodeSpec:
    fastdp = Fastdp(
        VX,
        FASTDP_VNI,
        FASTDP_PORT,
        HOSTS[me],
        vtep_mac(NAMES[me]),
        frozenset({vtep(other)}),
        frozenset({(BLOCKS[other], vtep(other).address)}) if fast else frozenset(),
        frozenset({(HOSTS[other], BLOCKS[other])}),
    )
    return NodeSpec(BR, TUN, 1400, 64000, (gateway(me),), frozenset({BLOCKS[other]}),
                    fastdp=fastdp)  # fmt: skip


@dataclass
class Pair:
    ns: dict[str, str]  # node -> namespace
    pods: dict[str, str]  # node -> its pod's namespace
    handles: dict[str, Netlink]

    def reconcile(self, me: str, desired: NodeSpec) -> list[node.Action]:
        return node.Reconciler(self.handles[me]).run(desired)


def _pod(nl: Netlink, pod_ns: str, me: str) -> None:
    """A pod on node ``me``'s bridge: veth, address, default route via the gateway."""
    nl.add_link(Veth(f"wpp{me}", "eth0", pod_ns, master=nl.index(BR), up=True))
    with Netlink(pod_ns) as pod:
        pod.set_link("lo", up=True)
        pod.set_link("eth0", up=True)
        pod.ensure_address("eth0", PODS[me])
        pod.replace_route_index(NET("0.0.0.0/0"), pod.index("eth0"), gateway(me).ip)


@pytest.fixture
def pair(scratch_netns) -> Iterator[Pair]:
    ns = {me: scratch_netns(me) for me in "ab"}
    pods = {me: scratch_netns(f"pod{me}") for me in "ab"}
    handles = {me: Netlink(ns[me]) for me in "ab"}
    tuns = [run_in_netns(ns[me], tun.open_tun, TUN, True, True) for me in "ab"]
    try:
        handles["a"].add_link(Veth(UNDERLAY, UNDERLAY, ns["b"], up=True))
        for me in "ab":
            nl = handles[me]
            nl.set_link("lo", up=True)
            nl.set_link(UNDERLAY, up=True)
            nl.ensure_address(UNDERLAY, IFACE(f"{HOSTS[me]}/24"))
        for me, other in ("ab", "ba"):
            pair = Pair(ns, pods, handles)
            assert pair.reconcile(me, spec(me, other))
            run_in_netns(ns[me], node.ensure_forwarding, spec(me, other))
            _pod(handles[me], pods[me], me)
        yield Pair(ns, pods, handles)
    finally:
        for device in tuns:
            device.close()
        for handle in handles.values():
            handle.close()


def counters(netns: str, name: str) -> tuple[int, int]:
    """(rx, tx) packets of link ``name`` in ``netns``."""

    def read() -> tuple[int, int]:
        with IPRoute() as ipr:
            stats = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_attr("IFLA_STATS64")
            return stats["rx_packets"], stats["tx_packets"]

    return run_in_netns(netns, read)


def pings(pair: Pair, count: int = 5) -> int:
    """Echoes pod a -> pod b answered out of ``count``."""
    answered = [ping(pair.pods["a"], str(PODS["b"].ip), timeout=1.0) for _ in range(count)]
    return sum(rtt is not None for rtt in answered)


def test_pods_reach_each_other_through_the_vxlan_devices(pair: Pair) -> None:
    before = {me: counters(pair.ns[me], VX) for me in "ab"}
    assert pings(pair) == 5
    after = {me: counters(pair.ns[me], VX) for me in "ab"}
    for me in "ab":  # each echo and each answer crossed both devices once
        assert after[me][0] - before[me][0] >= 5 and after[me][1] - before[me][1] >= 5
    for me, other in ("ab", "ba"):
        found = pair.handles[me].route_device(PODS[other].ip)
        assert found is not None and found.name == VX
    for me, other in ("ab", "ba"):
        assert pair.reconcile(me, spec(me, other)) == []  # converged, nothing redone


def test_a_block_switched_to_the_sleeve_leaves_the_vxlan_device(pair: Pair) -> None:
    assert pings(pair, 2) == 2
    assert pair.reconcile("a", spec("a", "b", fast=False)) == [AddRoute(Route(BLOCKS["b"], TUN))]
    tx = counters(pair.ns["a"], VX)[1]
    assert pings(pair, 2) == 0  # into the TUN, which nobody reads here
    assert counters(pair.ns["a"], VX)[1] == tx
    found = pair.handles["a"].route_device(PODS["b"].ip)
    assert found is not None and found.name == TUN
    pair.reconcile("a", spec("a", "b"))
    assert pings(pair, 3) == 3


def test_the_guard_drops_vxlan_from_hosts_that_are_not_peers(pair: Pair) -> None:
    assert pings(pair, 2) == 2
    desired = spec("b", "a")
    own = (HOSTS["a"], NET(HOSTS["a"]))
    assert desired.guard == UdpGuard.of(FASTDP_PORT, [own, (HOSTS["a"], BLOCKS["a"])])
    stranger = UdpGuard.of(FASTDP_PORT, [(ADDR("198.51.100.9"), BLOCKS["a"])])
    pair.handles["b"].replace_nat_table(NAT_TABLE, (), stranger)  # b trusts only .9
    assert pings(pair, 2) == 0
    elsewhere = UdpGuard.of(FASTDP_PORT, [own, (HOSTS["a"], NET("10.99.0.0/24"))])
    pair.handles["b"].replace_nat_table(NAT_TABLE, (), elsewhere)  # a's host, not its pods
    assert pings(pair, 2) == 0
    assert pair.reconcile("b", desired) == [ReplaceNat((), desired.guard)]
    assert pings(pair, 2) == 2
