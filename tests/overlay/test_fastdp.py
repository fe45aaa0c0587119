"""The fast path's node state executed: ``Reconciler.run`` with ``NodeSpec.fastdp`` on the fake
kernel and (root only) the real one, what a restarted agent finds (``kept_fastdp``), and what
a run costs in netlink requests."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from overlay import node
from overlay.actions import NAT_TABLE, SetLink
from overlay.fake_kernel import FakeKernel
from overlay.fastdp import (
    CreateVxlan,
    Fastdp,
    KeptFastdp,
    RemoveFdb,
    RemoveLink,
    ReplaceFdb,
    ReplaceNeighbour,
    kept_fastdp,
)
from overlay.kernel import NetlinkHandle
from overlay.netdev import FdbEntry, Neighbour, Route, UdpGuard, VxlanInfo
from overlay.node import NodeSpec
from overlay.routes import AddRoute, RemoveRoute
from overlay.vtep import FASTDP_PORT, FASTDP_VNI, Vtep
from tests.overlay import netlink_worlds
from tests.overlay.netlink_worlds import World

world = netlink_worlds.world
NET = ipaddress.IPv4Network
ADDR = ipaddress.IPv4Address
IFACE = ipaddress.IPv4Interface
BR, TUN, VX = "wpbr", "wptun", "wpvx"
LOCAL = ADDR("192.168.7.1")
MAC = "02:00:00:00:07:01"
V2 = Vtep(ADDR("10.244.2.1"), "02:00:00:00:07:02", ADDR("192.168.7.2"))
V3 = Vtep(ADDR("10.244.3.1"), "02:00:00:00:07:03", ADDR("192.168.7.3"))
B2, B3 = NET("10.244.2.0/24"), NET("10.244.3.0/24")


def spec(
    vteps: tuple[Vtep, ...] = (V2, V3),
    fast: tuple[tuple[NET, Vtep], ...] = ((B2, V2),),
    vni: int = FASTDP_VNI,
) -> NodeSpec:
    fastdp = Fastdp(
        VX,
        vni,
        FASTDP_PORT,
        LOCAL,
        MAC,
        frozenset(vteps),
        frozenset((block, vtep.address) for block, vtep in fast),
        frozenset({(V2.host, B2), (V2.host, NET("10.244.9.0/25")), (V3.host, B3)}),
    )
    return NodeSpec(BR, TUN, 1376, 64000, (IFACE("10.244.1.1/24"),), frozenset({B2, B3}),
                    fastdp=fastdp)  # fmt: skip


def state(nl: NetlinkHandle) -> tuple[object, ...]:
    """The fast path's kernel state: device settings, neighbours, entries, our routes."""
    link = nl.link(VX)
    assert link is not None
    return (
        (link.kind, link.vxlan, link.mtu, link.up, link.mac),
        sorted(nl.list_neighbours_index(link.index), key=lambda n: n.address),
        sorted(nl.list_fdb_index(link.index), key=lambda e: e.mac),
        sorted(nl.list_routes(), key=lambda r: r.destination),
    )


def test_the_fast_path_converges_and_a_restart_finds_it(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    assert rec.run(spec())
    assert rec.run(spec()) == []
    assert state(nl) == (
        ("vxlan", VxlanInfo(FASTDP_VNI, LOCAL, FASTDP_PORT, False), 1376, True, MAC),
        [Neighbour(V2.address, V2.mac), Neighbour(V3.address, V3.mac)],
        [FdbEntry(V2.mac, V2.host), FdbEntry(V3.mac, V3.host)],
        [
            Route(B2, VX, V2.address, onlink=True),
            Route(NET("10.244.2.1/32"), VX),
            Route(B3, TUN),
            Route(NET("10.244.3.1/32"), VX),
        ],
    )
    assert rec.routes == tuple(spec().routes)
    table = nl.nat_table(NAT_TABLE)
    hosts = {(v.host, NET(v.host)) for v in (V2, V3)}
    spaces = {(V2.host, B2), (V2.host, NET("10.244.9.0/25")), (V3.host, B3)}
    assert table is not None and table.guard == UdpGuard(FASTDP_PORT, frozenset(hosts | spaces))
    assert kept_fastdp(nl, VX) == KeptFastdp({B2: V2.address}, frozenset({V2, V3}))
    assert node.Reconciler(nl).run(spec()) == []  # a restarted agent changes nothing


def test_nothing_kept_without_a_device(world: World) -> None:
    _, nl = world.space("node")
    assert kept_fastdp(nl, VX) == KeptFastdp({}, frozenset())


def test_path_switches_and_vtep_changes_apply_in_place(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec())
    both = spec(fast=((B2, V2), (B3, V3)))
    assert rec.run(both) == [AddRoute(Route(B3, VX, V3.address, onlink=True))]
    assert rec.run(spec(fast=())) == [AddRoute(Route(B2, TUN)), AddRoute(Route(B3, TUN))]
    assert {r.destination: r.device for r in nl.list_routes()}[B2] == TUN  # one route each
    moved = replace(V2, mac="02:00:00:00:07:22", host=ADDR("192.168.7.22"))
    actions = rec.run(spec(vteps=(moved, V3), fast=((B2, moved),)))
    assert actions[:3] == [
        ReplaceNeighbour(VX, Neighbour(V2.address, moved.mac)),
        ReplaceFdb(VX, FdbEntry(moved.mac, moved.host)),
        RemoveFdb(VX, FdbEntry(V2.mac, V2.host)),
    ]
    assert rec.run(spec(vteps=(moved, V3), fast=((B2, moved),))) == []
    assert kept_fastdp(nl, VX).vteps == {moved, V3}


def test_a_device_made_otherwise_is_made_again(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec())
    actions = rec.run(spec(vni=42))
    assert actions[:3] == [RemoveLink(VX), actions[1], SetLink(VX, up=True)]
    assert isinstance(actions[1], CreateVxlan)
    assert rec.run(spec(vni=42)) == []
    link = nl.link(VX)
    assert link is not None and link.vxlan is not None and link.vxlan.vni == 42
    assert len([r for r in nl.list_routes() if r.device == VX]) == 3


def test_drift_by_hand_is_repaired(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec())
    index = nl.index(VX)
    nl.remove_neighbour_index(index, V3.address)
    nl.replace_fdb_index(index, FdbEntry(V2.mac, ADDR("192.168.7.99")))
    nl.remove_route(Route(NET("10.244.2.1/32"), VX))
    nl.set_link(VX, up=False)  # which also flushes its neighbours
    assert rec.run(spec())
    assert rec.run(spec()) == []
    assert state(nl)[1:] == (
        [Neighbour(V2.address, V2.mac), Neighbour(V3.address, V3.mac)],
        [FdbEntry(V2.mac, V2.host), FdbEntry(V3.mac, V3.host)],
        sorted(spec().routes, key=lambda r: r.destination),
    )


def test_turning_the_fast_path_off_leaves_the_device_but_not_its_routes(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec())
    actions = rec.run(replace(spec(), fastdp=None))
    assert RemoveRoute(Route(NET("10.244.2.1/32"), VX)) in actions
    assert {r.device for r in nl.list_routes()} == {TUN}
    assert nl.link(VX) is not None and nl.nat_table(NAT_TABLE) is None


def test_a_run_with_the_fast_path_costs_two_more_dumps_and_the_guard() -> None:
    kernel = FakeKernel()
    nl = kernel.host
    nl.add_device(TUN, "tun")
    rec = node.Reconciler(nl)
    rec.run(spec())
    nl.requests = 0
    assert rec.run(spec()) == []
    # links, the bridge's addresses, our routes, the table with its guard (five), the anchors
    # of TUN and device, neighbours and forwarding entries of the device
    assert nl.requests == 3 + 5 + 2 + 2
