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
    Bridge,
    Link,
    LinkChange,
    Masquerade,
    NatTable,
    NetlinkFailure,
    Route,
    RouteEntry,
    Veth,
    Vxlan,
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
    assert link.kind == "vxlan"
    refused(errno.EEXIST, lambda: nl.add_link(Vxlan("wpvx0", 42, ADDR("1.1.1.1"),
                                                    ADDR("1.1.1.2"), 6784)))  # fmt: skip
    refused(errno.EEXIST, lambda: nl.ensure_bridge("wpvx0"))


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
