"""The netlink contract: every behaviour the agent relies on, asserted identically on the
in-memory fake (always) and on the real kernel in scratch namespaces (root only)."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable

import pytest

from overlay.kernel import NetlinkHandle
from overlay.netdev import (
    RTPROT_KERNEL,
    RTPROT_WEAVE_PY,
    Bridge,
    FdbEntry,
    Link,
    LinkChange,
    Masquerade,
    NatTable,
    Neighbour,
    NetlinkFailure,
    Route,
    RouteEntry,
    UdpGuard,
    Veth,
    Vxlan,
    VxlanInfo,
)
from tests.overlay import netlink_worlds
from tests.overlay.netlink_worlds import World

world = netlink_worlds.world
NET = ipaddress.IPv4Network
IFACE = ipaddress.IPv4Interface
ADDR = ipaddress.IPv4Address


def refused(code: int, action: Callable[[], object]) -> None:
    with pytest.raises(NetlinkFailure) as err:
        action()
    assert err.value.code == code, err.value


def get(nl: NetlinkHandle, name: str) -> Link:
    link = nl.link(name)
    assert link is not None, f"no link {name}"
    return link


def device(nl: NetlinkHandle, destination: str) -> str:
    link = nl.route_device(ADDR(destination))
    assert link is not None, f"no route to {destination}"
    return link.name


def names(nl: NetlinkHandle) -> list[str]:
    return [link.name for link in nl.list_links()]


def up_bridge(nl: NetlinkHandle, name: str, address: str | None = None) -> int:
    index = nl.ensure_bridge(name).index
    nl.set_link_index(index, LinkChange(up=True))
    if address is not None:
        nl.add_address_index(index, IFACE(address))
    return index


# -- links -----------------------------------------------------------------------------------


def test_a_new_namespace_has_only_its_loopback_down(world: World) -> None:
    _, nl = world.space("a")
    [lo] = nl.list_links()
    assert (lo.index, lo.name, lo.kind, lo.up, lo.mtu) == (1, "lo", "", False, 65536)
    assert nl.link("lo") == lo and nl.link("wpnone") is None
    assert nl.list_route_entries(protocol=None) == []


def test_bridge_is_idempotent_and_kind_checked(world: World) -> None:
    _, nl = world.space("a")
    first = nl.ensure_bridge("wpbr0")
    again = nl.ensure_bridge("wpbr0")
    assert first == again and (again.kind, again.up, again.mtu, again.master) == (
        "bridge",
        False,
        1500,
        0,
    )
    nl.ensure_veth("wpv0", "wpv1")
    refused(errno.EEXIST, lambda: nl.ensure_bridge("wpv0"))
    refused(errno.EEXIST, lambda: nl.ensure_veth("wpbr0", "wpv2"))
    refused(errno.EEXIST, lambda: nl.add_link(Bridge("wpbr0")))
    assert names(nl) == ["lo", "wpbr0", "wpv1", "wpv0"]  # by index: a veth's peer comes first
    assert get(nl, "wpv1").kind == "veth"


def test_veth_born_across_namespaces_in_one_request(world: World) -> None:
    _, node = world.space("node")
    pod_name, pod = world.space("pod")
    fd = world.open(pod_name)
    bridge = node.ensure_bridge("wpbr0").index
    macs = ("02:00:00:00:01:01", "02:00:00:00:01:02")
    node.add_link(Veth("wph0", "eth0", fd, 1376, bridge, True, *macs, 62000))
    host, inside = node.link("wph0"), pod.link("eth0")
    assert host is not None and inside is not None
    assert (host.kind, host.mtu, host.master, host.up, host.mac) == ("veth", 1376, bridge, True,
                                                                     macs[0])  # fmt: skip
    assert (inside.kind, inside.mtu, inside.up, inside.mac, inside.gso_max_size) == (
        "veth",
        1376,
        False,
        macs[1],
        62000,
    )
    assert node.link("eth0") is None and pod.link("wph0") is None
    node.remove_link_index(host.index)
    assert pod.link("eth0") is None  # the peer goes with it
    refused(errno.ENODEV, lambda: node.remove_link_index(host.index))


def test_veth_by_namespace_name_and_deleted_from_either_end(world: World) -> None:
    _, a = world.space("a")
    b_name, b = world.space("b")
    a.ensure_veth("wpv0", "wpv1", b_name)
    assert a.ensure_veth("wpv0", "wpv1", b_name) == a.link("wpv0")  # idempotent
    assert b.remove_link("wpv1") is True
    assert a.link("wpv0") is None
    assert b.remove_link("wpv1") is False


def test_veth_names_taken_on_either_side_refuse_and_leave_nothing(world: World) -> None:
    _, node = world.space("node")
    pod_name, pod = world.space("pod")
    fd = world.open(pod_name)
    pod.ensure_bridge("eth0")  # any link will do
    refused(errno.EEXIST, lambda: node.add_link(Veth("wph0", "eth0", fd)))
    assert names(node) == ["lo"]
    node.ensure_bridge("wph0")
    refused(errno.EEXIST, lambda: node.add_link(Veth("wph0", "eth1", fd)))
    assert names(pod) == ["lo", "eth0"]


def test_unknown_master_is_einval_and_leaves_nothing(world: World) -> None:
    _, node = world.space("node")
    pod_name, pod = world.space("pod")
    fd = world.open(pod_name)
    refused(errno.EINVAL, lambda: node.add_link(Veth("wph0", "eth0", fd, 1400, 999, True)))
    assert names(node) == ["lo"] and names(pod) == ["lo"]


def test_link_changes_by_index(world: World) -> None:
    _, nl = world.space("a")
    bridge = nl.ensure_bridge("wpbr0").index
    veth = nl.ensure_veth("wpv0", "wpv1").index
    nl.set_link_index(veth, LinkChange(mtu=1400, up=True, master=bridge, gso_max_size=32000))
    link = get(nl, "wpv0")
    assert (link.mtu, link.up, link.master, link.gso_max_size) == (1400, True, bridge, 32000)
    refused(errno.EINVAL, lambda: nl.set_link_index(veth, LinkChange(master=999)))
    refused(errno.ENODEV, lambda: nl.set_link_index(999, LinkChange(up=True)))
    nl.set_link_index(veth, LinkChange(master=0, up=False))
    assert (get(nl, "wpv0").master, get(nl, "wpv0").up) == (0, False)


def test_set_link_by_name_changes_only_what_differs(world: World) -> None:
    _, nl = world.space("a")
    nl.ensure_bridge("wpbr0")
    nl.ensure_veth("wpv0", "wpv1")
    nl.set_link("wpv0", mtu=1400, master="wpbr0", up=True)
    nl.set_link("wpv0", mtu=1400, master="wpbr0", up=True)
    link = nl.link("wpv0")
    assert link is not None and (link.mtu, link.up, link.master) == (1400, True, nl.index("wpbr0"))
    refused(errno.ENODEV, lambda: nl.set_link("wpmissing", up=True))
    refused(errno.ENODEV, lambda: nl.set_link("wpv0", master="wpmissing"))


def test_deleting_a_bridge_frees_its_ports(world: World) -> None:
    _, nl = world.space("a")
    nl.ensure_bridge("wpbr0")
    nl.ensure_veth("wpv0", "wpv1")
    nl.set_link("wpv0", master="wpbr0")
    assert nl.remove_link("wpbr0") is True
    assert get(nl, "wpv0").master == 0
    assert nl.remove_link("wpbr0") is False


def test_vxlan(world: World) -> None:
    _, nl = world.space("a")
    link = nl.ensure_vxlan("wpvx0", 42, ADDR("192.168.1.7"), ADDR("192.168.1.8"), 6784)
    assert link.kind == "vxlan" and link.mtu == 1500
    assert link.vxlan == VxlanInfo(42, ADDR("192.168.1.7"), 6784, True)
    refused(errno.EEXIST, lambda: nl.add_link(Vxlan("wpvx0", 42, ADDR("1.1.1.1"),
                                                    ADDR("1.1.1.2"), 6784)))  # fmt: skip
    refused(errno.EEXIST, lambda: nl.ensure_bridge("wpvx0"))
    # point to point: the kernel holds the remote as the all-zeros MAC's entry
    assert nl.list_fdb_index(link.index) == [FdbEntry(ZERO_MAC, ADDR("192.168.1.8"))]
    assert get(nl, "lo").vxlan is None


def test_vxlan_driven_by_forwarding_entries(world: World) -> None:
    _, nl = world.space("a")
    new = Vxlan("wpvx0", 6784, ADDR("192.168.1.7"), None, 6784, False, "02:AA:00:00:00:01", 1376)
    nl.add_link(new)
    link = get(nl, "wpvx0")
    assert (link.kind, link.mtu, link.mac, link.up) == ("vxlan", 1376, "02:aa:00:00:00:01", False)
    assert link.vxlan == VxlanInfo(6784, ADDR("192.168.1.7"), 6784, False)
    assert nl.list_fdb_index(link.index) == []
    nl.set_link_index(link.index, LinkChange(mac="02:BB:00:00:00:02", up=True))
    assert (get(nl, "wpvx0").mac, get(nl, "wpvx0").up) == ("02:bb:00:00:00:02", True)
    assert get(nl, "wpvx0").vxlan == link.vxlan  # a MAC change leaves the rest alone


def test_hairpin_only_on_a_bridge_port_and_lost_when_it_leaves(world: World) -> None:
    _, nl = world.space("a")
    bridge = nl.ensure_bridge("wpbr0").index
    veth = nl.ensure_veth("wpv0", "wpv1").index
    assert get(nl, "wpv0").hairpin is False
    refused(errno.EOPNOTSUPP, lambda: nl.set_link_index(veth, LinkChange(hairpin=True)))
    # the port's part of a request is read before its master changes: refused as a whole
    both = LinkChange(master=bridge, hairpin=True)
    refused(errno.EOPNOTSUPP, lambda: nl.set_link_index(veth, both))
    assert get(nl, "wpv0").master == 0
    nl.set_link_index(veth, LinkChange(master=bridge))
    nl.set_link_by_name("wpv0", LinkChange(hairpin=True))
    assert [link.name for link in nl.list_links() if link.hairpin] == ["wpv0"]
    nl.set_link_index(veth, LinkChange(hairpin=False, mtu=1400))
    assert (get(nl, "wpv0").hairpin, get(nl, "wpv0").mtu) == (False, 1400)
    nl.set_link_index(veth, LinkChange(hairpin=True))
    nl.set_link_index(veth, LinkChange(master=0))
    nl.set_link_index(veth, LinkChange(master=bridge))
    assert get(nl, "wpv0").hairpin is False  # a new port starts without it
    nl.set_link_by_name("wpv0", LinkChange(hairpin=True))
    nl.remove_link("wpbr0")
    assert get(nl, "wpv0").hairpin is False
    refused(errno.ENODEV, lambda: nl.set_link_by_name("wpmissing", LinkChange(up=True)))


# -- neighbours and forwarding entries -----------------------------------------------------------

ZERO_MAC = "00:00:00:00:00:00"
VTEP, VTEP2 = ADDR("10.40.1.1"), ADDR("10.40.2.1")
MAC, MAC2 = "02:11:00:00:00:01", "02:11:00:00:00:02"
HOST, HOST2 = ADDR("192.168.1.8"), ADDR("192.168.1.9")


def fast_device(nl: NetlinkHandle, up: bool = True) -> int:
    """A VXLAN device as the fast path makes it (no remote, no learning), up by default, in a
    namespace whose loopback is up, as a node's is."""
    nl.set_link_index(1, LinkChange(up=True))
    nl.add_link(Vxlan("wpvx0", 6784, ADDR("192.168.1.7"), None, 6784, learning=False))
    index = get(nl, "wpvx0").index
    if up:
        nl.set_link_index(index, LinkChange(up=True))
    return index


def test_neighbours_are_replaced_in_place_and_removed(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl, up=False)  # a link need not be up to hold them
    nl.replace_neighbour_index(index, Neighbour(VTEP, MAC))
    nl.replace_neighbour_index(index, Neighbour(VTEP2, MAC2.upper()))
    assert set(nl.list_neighbours_index(index)) == {Neighbour(VTEP, MAC), Neighbour(VTEP2, MAC2)}
    nl.replace_neighbour_index(index, Neighbour(VTEP, MAC2))  # replaced, not a second one
    assert set(nl.list_neighbours_index(index)) == {Neighbour(VTEP, MAC2), Neighbour(VTEP2, MAC2)}
    nl.remove_neighbour_index(index, VTEP2)
    assert nl.list_neighbours_index(index) == [Neighbour(VTEP, MAC2)]
    refused(errno.ENOENT, lambda: nl.remove_neighbour_index(index, VTEP2))
    refused(errno.ENODEV, lambda: nl.replace_neighbour_index(999, Neighbour(VTEP, MAC)))
    assert nl.list_neighbours_index(999) == []
    other = up_bridge(nl, "wpd0")
    assert nl.list_neighbours_index(other) == []  # per link


def test_neighbours_go_when_their_link_goes_down_or_away(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl)
    nl.replace_neighbour_index(index, Neighbour(VTEP, MAC))
    nl.set_link_index(index, LinkChange(up=False))  # even permanent ones, not back when up
    nl.set_link_index(index, LinkChange(up=True))
    assert nl.list_neighbours_index(index) == []
    nl.replace_neighbour_index(index, Neighbour(VTEP, MAC))
    nl.remove_link_index(index)
    assert nl.list_neighbours_index(index) == []


def test_forwarding_entries_one_host_per_mac(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl, up=False)
    nl.replace_fdb_index(index, FdbEntry(MAC, HOST))
    nl.replace_fdb_index(index, FdbEntry(MAC2, HOST))
    assert set(nl.list_fdb_index(index)) == {FdbEntry(MAC, HOST), FdbEntry(MAC2, HOST)}
    nl.replace_fdb_index(index, FdbEntry(MAC, HOST2))  # the host of a MAC is replaced
    assert set(nl.list_fdb_index(index)) == {FdbEntry(MAC, HOST2), FdbEntry(MAC2, HOST)}
    nl.remove_fdb_index(index, FdbEntry(MAC, HOST))  # another host's: nothing, and no error
    assert FdbEntry(MAC, HOST2) in nl.list_fdb_index(index)
    nl.remove_fdb_index(index, FdbEntry(MAC, HOST2))
    assert nl.list_fdb_index(index) == [FdbEntry(MAC2, HOST)]
    refused(errno.ENOENT, lambda: nl.remove_fdb_index(index, FdbEntry(MAC, HOST2)))
    refused(errno.ENODEV, lambda: nl.replace_fdb_index(999, FdbEntry(MAC, HOST)))
    refused(errno.ENODEV, lambda: nl.remove_fdb_index(999, FdbEntry(MAC, HOST)))


def test_forwarding_entries_outlive_down_not_the_device(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl)
    nl.replace_fdb_index(index, FdbEntry(MAC, HOST))
    nl.set_link_index(index, LinkChange(up=False))
    nl.set_link_index(index, LinkChange(up=True))
    assert nl.list_fdb_index(index) == [FdbEntry(MAC, HOST)]
    nl.remove_link_index(index)
    fast_device(nl)  # a new device of the same name starts empty
    assert nl.list_fdb_index(nl.index("wpvx0")) == []


# -- onlink routes (the fast path's: a peer's blocks via its VTEP) -------------------------------


def test_onlink_routes_reach_a_gateway_off_every_subnet(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl)  # no address at all
    block = NET("10.40.2.0/24")
    nl.replace_route_index(NET(f"{VTEP}/32"), index)
    refused(errno.ENETUNREACH, lambda: nl.replace_route_index(block, index, VTEP))
    nl.replace_route_index(block, index, VTEP, onlink=True)
    assert set(nl.list_route_entries()) == {
        RouteEntry(NET(f"{VTEP}/32"), index, None, RTPROT_WEAVE_PY),
        RouteEntry(block, index, VTEP, RTPROT_WEAVE_PY, onlink=True),
    }
    assert Route(block, "wpvx0", VTEP, onlink=True) in nl.list_routes()
    assert device(nl, "10.40.2.9") == "wpvx0"
    tun = up_bridge(nl, "wpd0")
    nl.replace_route_index(block, tun)  # back to another link: the flag goes with it
    assert RouteEntry(block, tun, None, RTPROT_WEAVE_PY) in nl.list_route_entries()
    nl.set_link_index(index, LinkChange(up=False))
    assert nl.list_route_entries() == [RouteEntry(block, tun, None, RTPROT_WEAVE_PY)]


def test_onlink_needs_the_local_table_a_node_always_has(world: World) -> None:
    _, nl = world.space("a")
    nl.add_link(Vxlan("wpvx0", 6784, ADDR("192.168.1.7"), None, 6784, learning=False))
    index = nl.index("wpvx0")
    nl.set_link_index(index, LinkChange(up=True))
    block = NET("10.40.2.0/24")
    # nothing local in the namespace yet: the kernel has no local table to judge the gateway
    refused(errno.EINVAL, lambda: nl.replace_route_index(block, index, VTEP, onlink=True))
    nl.set_link_index(1, LinkChange(up=True))
    nl.replace_route_index(block, index, VTEP, onlink=True)
    assert nl.list_route_entries() == [RouteEntry(block, index, VTEP, RTPROT_WEAVE_PY, True)]


def test_onlink_route_errors(world: World) -> None:
    _, nl = world.space("a")
    index = fast_device(nl)
    down = fast_device_named(nl, "wpvx1")
    bridge = up_bridge(nl, "wpd0", "10.99.1.1/24")
    block = NET("10.40.2.0/24")
    refused(errno.EINVAL, lambda: nl.replace_route_index(block, index, None, onlink=True))
    refused(errno.EINVAL, lambda: nl.replace_route_index(block, index, ADDR("10.99.1.1"),
                                                         onlink=True))  # fmt: skip
    refused(errno.ENETDOWN, lambda: nl.replace_route_index(block, down, VTEP, onlink=True))
    refused(errno.ENODEV, lambda: nl.replace_route_index(block, 999, VTEP, onlink=True))
    assert nl.list_route_entries() == []
    nl.replace_route_index(block, bridge, ADDR("10.99.1.9"), onlink=True)  # on a subnet too
    assert nl.list_route_entries() == [
        RouteEntry(block, bridge, ADDR("10.99.1.9"), RTPROT_WEAVE_PY, onlink=True)
    ]


def test_onlink_routes_are_idempotent_by_name(world: World) -> None:
    _, nl = world.space("a")
    fast_device(nl)
    route = Route(NET("10.40.2.0/24"), "wpvx0", VTEP, onlink=True)
    assert nl.ensure_route(route) is True
    assert nl.ensure_route(route) is False
    assert nl.list_routes() == [route]
    assert nl.remove_route(route) is True
    assert nl.list_routes() == []


def fast_device_named(nl: NetlinkHandle, name: str) -> int:
    """A second VXLAN device, down (another VNI and port: the kernel keeps them apart)."""
    nl.add_link(Vxlan(name, 6785, ADDR("192.168.1.7"), None, 6785, learning=False))
    return get(nl, name).index


# -- our nftables table ------------------------------------------------------------------------


def test_nat_tables_by_name_read_back_exactly(world: World) -> None:
    _, nl = world.space("a")
    assert nl.nat_table("wpnat") is None
    refused(errno.ENOENT, lambda: nl.remove_nat_table("wpnat"))
    rules = [  # prefixes not on byte boundaries too (pyroute2's own helper packs those wrongly)
        Masquerade(NET("10.32.0.0/12"), NET("10.32.0.0/12")),
        Masquerade(NET("172.16.4.0/23"), NET("0.0.0.0/0")),
        Masquerade(NET("10.1.2.3/32"), NET("10.0.0.0/8")),
    ]
    nl.replace_nat_table("wpnat", rules)
    assert nl.nat_table("wpnat") == NatTable(True, tuple(rules))
    nl.replace_nat_table("wpnat", rules[:1])  # what was there before is gone
    assert nl.nat_table("wpnat") == NatTable(True, tuple(rules[:1]))
    nl.replace_nat_table("wpnat", [])
    assert nl.nat_table("wpnat") == NatTable(True, ())


def test_a_guard_shares_the_table_and_its_transaction(world: World) -> None:
    _, nl = world.space("a")
    masquerade = (Masquerade(NET("10.32.0.0/12"), NET("10.32.0.0/12")),)
    guard = UdpGuard.of(6784, [
        (ADDR("192.168.1.8"), NET("192.168.1.8/32")), (ADDR("192.168.1.8"), NET("10.32.0.0/19")),
        (ADDR("192.168.1.8"), NET("10.32.32.0/19")), (ADDR("192.168.1.9"), NET("10.32.64.0/24")),
    ])  # fmt: skip
    assert (ADDR("192.168.1.8"), NET("10.32.0.0/18")) in guard.spaces  # a host's blocks merged
    nl.replace_nat_table("wpnat", masquerade, guard)
    assert nl.nat_table("wpnat") == NatTable(True, masquerade, guard)
    nobody = UdpGuard(6784, frozenset())  # drops every datagram to the port
    nl.replace_nat_table("wpnat", (), nobody)  # a guard alone is a table of ours too
    assert nl.nat_table("wpnat") == NatTable(True, (), nobody)
    nl.replace_nat_table("wpnat", masquerade)  # no guard: its chain and set are gone
    assert nl.nat_table("wpnat") == NatTable(True, masquerade, None)
    many = UdpGuard.of(4789, [(ADDR(0xC0A80000 + i), NET((0x0A000000 + (i << 8), 24)))
                              for i in range(600)])  # fmt: skip
    nl.replace_nat_table("wpnat", masquerade, many)  # elements sent in more than one message
    assert nl.nat_table("wpnat") == NatTable(True, masquerade, many)
    nl.remove_nat_table("wpnat")
    assert nl.nat_table("wpnat") is None


def test_a_nat_table_is_changed_and_removed_alone(world: World) -> None:
    _, nl = world.space("a")
    mine = [Masquerade(NET("10.32.0.0/12"), NET("10.32.0.0/12"))]
    theirs = [Masquerade(NET("192.168.0.0/16"), NET("192.168.0.0/16"))]
    nl.replace_nat_table("wpother", theirs)
    nl.replace_nat_table("wpnat", mine)
    nl.remove_nat_table("wpnat")
    assert nl.nat_table("wpnat") is None
    assert nl.nat_table("wpother") == NatTable(True, tuple(theirs))


# -- addresses -------------------------------------------------------------------------------


def test_addresses_are_idempotent(world: World) -> None:
    _, nl = world.space("a")
    nl.ensure_bridge("wpd0")
    addr = IFACE("10.99.1.1/24")
    assert nl.ensure_address("wpd0", addr) is True
    assert nl.ensure_address("wpd0", addr) is False
    assert nl.list_addresses("wpd0") == [addr]
    assert nl.remove_address("wpd0", addr) is True
    assert nl.remove_address("wpd0", addr) is False
    assert nl.list_addresses("wpd0") == []
    refused(errno.ENODEV, lambda: nl.list_addresses("wpmissing"))
    refused(errno.ENODEV, lambda: nl.ensure_address("wpmissing", addr))


def test_address_primitives_and_their_errors(world: World) -> None:
    _, nl = world.space("a")
    index = nl.ensure_bridge("wpd0").index
    nl.add_address_index(index, IFACE("10.99.1.1/24"))
    refused(errno.EEXIST, lambda: nl.add_address_index(index, IFACE("10.99.1.1/24")))
    nl.add_address_index(index, IFACE("10.99.1.1/16"))  # another prefix: another address
    refused(errno.ENODEV, lambda: nl.add_address_index(999, IFACE("10.99.1.1/24")))
    refused(errno.EADDRNOTAVAIL, lambda: nl.remove_address_index(index, IFACE("10.99.1.2/24")))
    refused(errno.ENODEV, lambda: nl.remove_address_index(999, IFACE("10.99.1.1/24")))
    assert sorted(nl.list_addresses_index(index)) == [IFACE("10.99.1.1/16"), IFACE("10.99.1.1/24")]
    assert nl.list_addresses_index(999) == []


def test_deleting_a_primary_address_takes_its_secondaries(world: World) -> None:
    _, nl = world.space("a")
    index = nl.ensure_bridge("wpd0").index
    for a in ("10.99.1.1/24", "10.99.1.7/24", "10.98.0.1/24"):
        nl.add_address_index(index, IFACE(a))
    nl.remove_address_index(index, IFACE("10.99.1.7/24"))  # a secondary goes alone
    assert sorted(nl.list_addresses_index(index)) == [IFACE("10.98.0.1/24"), IFACE("10.99.1.1/24")]
    nl.add_address_index(index, IFACE("10.99.1.7/24"))
    nl.remove_address_index(index, IFACE("10.99.1.1/24"))
    assert nl.list_addresses_index(index) == [IFACE("10.98.0.1/24")]


# -- routes ----------------------------------------------------------------------------------


def test_connected_routes_are_the_kernels(world: World) -> None:
    _, nl = world.space("a")
    index = nl.ensure_bridge("wpd0").index
    nl.add_address_index(index, IFACE("10.99.1.1/24"))
    nl.add_address_index(index, IFACE("10.97.0.1/32"))
    assert nl.list_route_entries(protocol=None) == []  # down: none yet
    nl.set_link_index(index, LinkChange(up=True))
    connected = RouteEntry(NET("10.99.1.0/24"), index, None, RTPROT_KERNEL)
    assert nl.list_route_entries(protocol=None) == [connected]  # none for a /32
    assert nl.list_route_entries() == []  # not ours
    assert nl.list_routes(protocol=None) == [Route(NET("10.99.1.0/24"), "wpd0")]
    nl.set_link_index(index, LinkChange(up=False))
    assert nl.list_route_entries(protocol=None) == []


def test_routes_only_ours_and_idempotent(world: World) -> None:
    _, nl = world.space("a")
    up_bridge(nl, "wpd0", "10.99.1.1/24")
    up_bridge(nl, "wpd1")
    route = Route(NET("10.98.0.0/24"), "wpd0")
    assert nl.ensure_route(route) is True
    assert nl.ensure_route(route) is False
    assert nl.list_routes() == [route]
    moved = Route(NET("10.98.0.0/24"), "wpd1")
    assert nl.ensure_route(moved) is True  # replaced, not duplicated
    assert nl.list_routes() == [moved]
    via = Route(NET("0.0.0.0/0"), "wpd0", ADDR("10.99.1.254"))
    assert nl.ensure_route(via) is True
    assert sorted(nl.list_routes(), key=str) == sorted([moved, via], key=str)
    assert nl.remove_route(moved) is True
    assert nl.remove_route(moved) is False
    assert nl.list_routes() == [via]


def test_route_primitives_and_their_errors(world: World) -> None:
    _, nl = world.space("a")
    up = up_bridge(nl, "wpd0", "10.99.1.1/24")
    down = nl.ensure_bridge("wpd1").index
    dst = NET("10.98.0.0/24")
    refused(errno.ENODEV, lambda: nl.replace_route_index(dst, 999))
    refused(errno.ENETDOWN, lambda: nl.replace_route_index(dst, down))
    refused(errno.ENETUNREACH, lambda: nl.replace_route_index(dst, up, ADDR("10.5.5.5")))
    nl.replace_route_index(NET("10.96.0.0/24"), up)
    # a gateway must be on the link: one of our (universe-scope) routes does not make it so
    refused(errno.ENETUNREACH, lambda: nl.replace_route_index(dst, up, ADDR("10.96.0.1")))
    nl.replace_route_index(dst, up, ADDR("10.99.1.9"))
    assert RouteEntry(dst, up, ADDR("10.99.1.9"), 119) in nl.list_route_entries()
    refused(errno.ESRCH, lambda: nl.remove_route_index(NET("10.95.0.0/24"), up))
    refused(errno.ESRCH, lambda: nl.remove_route_index(dst, up, protocol=5))
    refused(errno.ESRCH, lambda: nl.remove_route_index(dst, down))
    nl.remove_route_index(dst, up)
    assert nl.list_route_entries() == [RouteEntry(NET("10.96.0.0/24"), up, None, 119)]


def test_routes_go_with_their_link(world: World) -> None:
    _, nl = world.space("a")
    index = up_bridge(nl, "wpd0", "10.99.1.1/24")
    nl.replace_route_index(NET("10.98.0.0/24"), index)
    nl.set_link_index(index, LinkChange(up=False))  # down: flushed, and not back when up
    nl.set_link_index(index, LinkChange(up=True))
    assert nl.list_route_entries() == []
    nl.replace_route_index(NET("10.98.0.0/24"), index, ADDR("10.99.1.9"))
    nl.remove_address_index(index, IFACE("10.99.1.1/24"))  # the last address: flushed
    assert nl.list_route_entries(protocol=None) == []
    nl.replace_route_index(NET("10.98.0.0/24"), index)  # no address needed without gateway
    nl.remove_link_index(index)
    assert nl.list_route_entries(protocol=None) == []


def test_route_lookup(world: World) -> None:
    _, nl = world.space("a")
    up_bridge(nl, "wpd0", "10.99.1.1/24")
    wide = up_bridge(nl, "wpd1")
    narrow = up_bridge(nl, "wpd2")
    assert nl.route_device(ADDR("192.0.2.1")) is None
    nl.replace_route_index(NET("10.0.0.0/8"), wide)
    nl.replace_route_index(NET("10.98.0.0/16"), narrow)
    assert device(nl, "10.99.1.7") == "wpd0"
    assert device(nl, "10.98.3.3") == "wpd2"
    assert device(nl, "10.5.0.1") == "wpd1"
    assert device(nl, "10.99.1.1") == "lo"
    assert nl.route_index(ADDR("192.0.2.1")) is None


# -- namespaces ------------------------------------------------------------------------------


def test_enter_runs_with_a_handle_inside_the_namespace(world: World) -> None:
    name, inside = world.space("pod")
    inside.ensure_bridge("wpin0")
    fd = world.open(name)
    assert world.enter(fd, lambda nl: [link.name for link in nl.list_links()]) == ["lo", "wpin0"]
    world.enter(fd, lambda nl: nl.ensure_bridge("wpin1"))
    assert inside.link("wpin1") is not None


def test_a_removed_namespace_lives_while_an_fd_holds_it(world: World) -> None:
    name, _ = world.space("pod")
    fd = world.open(name)
    assert world.remove_netns(name) is True
    assert name not in world.netns_names()
    assert world.remove_netns(name) is False
    assert world.enter(fd, lambda nl: nl.ensure_bridge("wpin0").kind) == "bridge"
