"""``Pods``: veth pairs from the node's bridge into pod namespaces, on the fake kernel and (root
only) the real one; what a pod start costs in netlink requests."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, replace

import pytest

from overlay import pods
from overlay.fake_kernel import FakeKernel
from overlay.kernel import NetlinkHandle
from overlay.netdev import Link, LinkChange, NetlinkFailure, Route
from overlay.pods import Attachment, Expected, InterfaceExists, Pods
from tests.overlay import netlink_worlds
from tests.overlay.netlink_worlds import World

world = netlink_worlds.world
NET = ipaddress.IPv4Network
IFACE = ipaddress.IPv4Interface
GATEWAY = IFACE("10.77.0.1/24")
BR = "wpbr"


@dataclass
class Node:
    """A node namespace with its bridge, a pod namespace (and its fd), and ``Pods`` on them."""

    nl: NetlinkHandle
    pod: NetlinkHandle
    fd: int
    pods: Pods

    def attachment(
        self,
        cid: str = "c1",
        ifname: str = "eth0",
        bridge: str = BR,
        routes: tuple[tuple[NET, ipaddress.IPv4Address], ...] = (),
        mac: str | None = None,
    ) -> Attachment:
        address = IFACE("10.77.0.2/24")
        return Attachment(self.fd, cid, ifname, bridge, address, GATEWAY.ip, 1376, 62000, routes,
                          mac)  # fmt: skip

    def expected(self, a: Attachment, mac: str | None = None) -> Expected:
        routes = ((pods.DEFAULT_ROUTE, a.gateway),)
        return Expected(a.netns, a.container_id, a.ifname, a.bridge, (a.address,), routes, mac)


def make_node(world: World) -> Node:
    _, nl = world.space("node")
    pod_name, pod = world.space("pod")
    nl.ensure_bridge(BR)
    nl.set_link(BR, up=True)
    nl.ensure_address(BR, GATEWAY)
    return Node(nl, pod, world.open(pod_name), Pods(nl, world.enter))


def get(nl: NetlinkHandle, name: str) -> Link:
    link = nl.link(name)
    assert link is not None, f"no link {name}"
    return link


def test_attach_wires_the_pod_to_the_bridge(world: World) -> None:
    n = make_node(world)
    extra = (NET("10.96.0.0/12"), GATEWAY.ip)
    a = n.attachment(mac="0a:58:0a:4d:00:09", routes=(extra,))
    assert n.pods.has_link(n.fd, "eth0") is False
    attached = n.pods.attach(a)
    assert attached.host == pods.host_ifname("c1") and attached.pod_mac == "0a:58:0a:4d:00:09"
    host, inside = get(n.nl, attached.host), get(n.pod, "eth0")
    bridge = n.nl.index(BR)
    assert (host.master, host.mtu, host.up, host.mac) == (bridge, 1376, True, attached.host_mac)
    assert host.hairpin  # a pod reaches itself through a Service
    pod_side = (inside.mtu, inside.gso_max_size, inside.up, inside.mac)
    assert pod_side == (1376, 62000, True, attached.pod_mac)
    assert n.pod.list_addresses("eth0") == [a.address]
    routes = n.pod.list_routes(protocol=None)
    assert Route(pods.DEFAULT_ROUTE, "eth0", GATEWAY.ip) in routes
    assert Route(extra[0], "eth0", extra[1]) in routes
    assert n.pods.has_link(n.fd, "eth0") is True
    assert not get(n.pod, "lo").up  # the loopback is the runtime's


def test_attach_twice_is_interface_exists_and_keeps_the_pod(world: World) -> None:
    n = make_node(world)
    n.pods.attach(n.attachment())
    with pytest.raises(InterfaceExists):
        n.pods.attach(n.attachment())
    assert n.pod.list_addresses("eth0") == [IFACE("10.77.0.2/24")]
    assert n.nl.link(pods.host_ifname("c1")) is not None
    with pytest.raises(InterfaceExists):  # another container, same pod interface name
        n.pods.attach(n.attachment(cid="c2"))
    assert n.nl.link(pods.host_ifname("c2")) is None


def test_a_stale_host_side_is_replaced(world: World) -> None:
    n = make_node(world)
    stale = pods.host_ifname("c1")
    n.nl.ensure_veth(stale, "wpstale")  # left by an ADD that died half way
    attached = n.pods.attach(n.attachment())
    assert get(n.nl, stale).mac == attached.host_mac and n.nl.link("wpstale") is None


def test_a_recreated_bridge_is_looked_up_again(world: World) -> None:
    n = make_node(world)
    n.pods.attach(n.attachment())
    n.nl.remove_link(BR)
    n.nl.ensure_bridge("wpother")  # the bridge's old index is taken or gone
    new = n.nl.ensure_bridge(BR)
    attached = n.pods.attach(n.attachment(cid="c2", ifname="eth1"))
    assert get(n.nl, attached.host).master == new.index


def test_a_missing_bridge_refuses_and_leaves_nothing(world: World) -> None:
    n = make_node(world)
    with pytest.raises(NetlinkFailure) as err:
        n.pods.attach(n.attachment(bridge="wpnobr"))
    assert err.value.code == errno.ENODEV
    assert n.nl.link(pods.host_ifname("c1")) is None and n.pod.link("eth0") is None


def test_a_failure_inside_the_pod_removes_the_pair(world: World) -> None:
    n = make_node(world)
    unreachable = ((NET("10.96.0.0/12"), ipaddress.IPv4Address("10.5.5.5")),)
    with pytest.raises(NetlinkFailure) as err:
        n.pods.attach(n.attachment(routes=unreachable))
    assert err.value.code == errno.ENETUNREACH
    assert n.nl.link(pods.host_ifname("c1")) is None and n.pod.link("eth0") is None


def test_detach_is_idempotent(world: World) -> None:
    n = make_node(world)
    n.pods.attach(n.attachment())
    assert n.pods.detach("c1", "eth0") is True
    assert n.pod.link("eth0") is None
    assert n.pods.detach("c1", "eth0") is False


def test_check_names_what_is_missing(world: World) -> None:
    n = make_node(world)
    a = n.attachment()
    attached = n.pods.attach(a)
    assert n.pods.check(n.expected(a, attached.pod_mac.upper())) == []
    assert n.pods.check(n.expected(a, "02:00:00:00:00:99")) == [
        f"interface eth0 has MAC {attached.pod_mac}, expected 02:00:00:00:00:99"
    ]
    n.pod.remove_address("eth0", a.address)
    assert n.pods.check(n.expected(a)) == [
        "address 10.77.0.2/24 is missing on eth0",
        "route 0.0.0.0/0 via 10.77.0.1 is missing in the pod's netns",  # went with the address
    ]
    n.nl.set_link_index(get(n.nl, attached.host).index, LinkChange(master=0))
    assert f"host veth {attached.host} is not on bridge {BR}" in n.pods.check(n.expected(a))
    n.pods.detach("c1", "eth0")
    assert n.pods.check(n.expected(a)) == [
        f"host veth {attached.host} is missing",
        "interface eth0 is missing in the pod's netns",
    ]


def test_a_pod_start_costs_one_node_request_and_no_read_before_write() -> None:
    kernel = FakeKernel()
    node = kernel.host
    node.ensure_bridge(BR)
    node.set_link(BR, up=True)
    node.ensure_address(BR, GATEWAY)
    kernel.ensure_netns("wppod")
    pod = kernel.netns("wppod")
    p = Pods(node, kernel.enter)
    fd = kernel.open_netns("wppod")
    a = Attachment(fd, "c1", "eth0", BR, IFACE("10.77.0.2/24"), GATEWAY.ip, 1376, 62000)
    p.attach(replace(a, container_id="c0", ifname="eth9"))  # the bridge's index, once
    node.requests = pod.requests = 0
    p.attach(a)
    assert node.requests == 2  # the veth pair, pod side born in the pod; hairpin on its port
    assert pod.requests == 4  # find the pod side; up; address; default route
    node.requests = 0
    p.attach(replace(a, container_id="c2", ifname="eth1", hairpin=False))
    assert node.requests == 1
    plain = node.link(pods.host_ifname(pods.pod_key("c2", "eth1")))
    assert plain is not None and not plain.hairpin


def test_names_fit_and_differ() -> None:
    seen = set()
    for cid in ("a", "a.b", "x" * 255):
        assert pods.host_ifname(pods.pod_key(cid, "eth0")) == pods.host_ifname(cid)
        for ifname in ("eth0", "eth1", "net1"):
            host = pods.host_ifname(pods.pod_key(cid, ifname))
            assert len(host) <= 15 and host.startswith("wp")
            seen.add(host)
    assert len(seen) == 3 * 3


def test_random_macs_are_unicast_and_local() -> None:
    for _ in range(50):
        first = int(pods.random_mac().split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02 == 2
