"""Node reconciliation executed: ``Reconciler.run`` on the fake kernel and (root only) the real
one, and what it costs in netlink requests."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from overlay import node
from overlay.actions import (
    NAT_TABLE,
    Hairpin,
    RemoveNat,
    ReplaceNat,
    SetLink,
)
from overlay.fake_kernel import FakeKernel
from overlay.netdev import Masquerade, NatTable, NetlinkFailure, Route
from overlay.node import NodeSpec
from overlay.routes import AddRoute, RemoveRoute
from tests.overlay import netlink_worlds
from tests.overlay.netlink_worlds import World

world = netlink_worlds.world
NET = ipaddress.IPv4Network
IFACE = ipaddress.IPv4Interface
BR, TUN = "wpbr", "wptun"
OBSERVATION = 5  # links, the addresses of bridge and TUN, our routes, our NAT table (none)
CLUSTER = NET("10.244.0.0/16")


def spec(
    remote: set[str],
    mtu: int = 1436,
    gateways: tuple[str, ...] = ("10.244.1.1/24",),
    hairpin: bool = False,
    masquerade: NET | None = None,
) -> NodeSpec:
    return NodeSpec(
        bridge=BR,
        tun=TUN,
        mtu=mtu,
        gso_max_size=64000,
        gateways=tuple(IFACE(g) for g in gateways),
        remote_blocks=frozenset(NET(b) for b in remote),
        hairpin=hairpin,
        masquerade=masquerade,
    )


def test_reconcile_converges_and_repairs_drift(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    desired = spec({"10.244.2.0/24", "10.244.3.0/24"})
    assert rec.run(desired)  # first run changes things
    assert rec.run(desired) == []  # then nothing
    assert sorted(str(r.destination) for r in nl.list_routes()) == [
        "10.244.2.0/24",
        "10.244.3.0/24",
    ]
    assert nl.list_addresses(BR) == [IFACE("10.244.1.1/24")]
    tun = nl.link(TUN)
    assert tun is not None and (tun.mtu, tun.gso_max_size, tun.up) == (1436, 64000, True)
    # drift: a route removed by hand, an MTU changed, a stray address
    nl.remove_route(Route(NET("10.244.2.0/24"), TUN))
    nl.set_link(BR, mtu=1300)
    nl.ensure_address(BR, IFACE("10.244.1.77/24"))
    assert len(rec.run(desired)) == 3
    assert rec.run(desired) == []
    # a peer leaves: its route goes, nothing else changes
    smaller = spec({"10.244.3.0/24"})
    assert rec.run(smaller) == [RemoveRoute(Route(NET("10.244.2.0/24"), TUN))]
    assert nl.list_routes() == [Route(NET("10.244.3.0/24"), TUN)]
    assert rec.routes == (Route(NET("10.244.3.0/24"), TUN),)


def test_a_route_on_the_wrong_device_moves_to_the_tun(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec(set()))
    nl.ensure_route(Route(NET("10.244.2.0/24"), BR))
    assert rec.run(spec({"10.244.2.0/24"})) == [AddRoute(Route(NET("10.244.2.0/24"), TUN))]
    assert nl.list_routes() == [Route(NET("10.244.2.0/24"), TUN)]  # replaced: one route


def test_a_new_block_moves_the_gateway(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec(set(), gateways=("10.244.1.1/24",)))
    rec.run(spec(set(), gateways=("10.244.1.1/24", "10.244.9.1/24")))
    rec.run(spec(set(), gateways=("10.244.9.1/24",)))
    assert nl.list_addresses(BR) == [IFACE("10.244.9.1/24")]
    assert rec.run(spec(set(), gateways=("10.244.9.1/24",))) == []


def test_hairpin_on_every_port_of_the_bridge(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec(set(), hairpin=True))
    for i in (1, 2):
        nl.ensure_veth(f"wpport{i}", f"wppeer{i}")
        nl.set_link(f"wpport{i}", master=BR)
    nl.ensure_veth("wploose", "wploosep")  # on no bridge: left alone
    assert rec.run(spec(set(), hairpin=True)) == [Hairpin("wpport1"), Hairpin("wpport2")]
    assert rec.run(spec(set(), hairpin=True)) == []
    hairpins = {link.name: link.hairpin for link in nl.list_links()}
    assert hairpins["wpport1"] and hairpins["wpport2"] and not hairpins["wploose"]
    nl.remove_link("wpport2")  # a pod deleted, another one attached under the same name
    nl.ensure_veth("wpport2", "wppeer2")
    nl.set_link("wpport2", master=BR)
    assert rec.run(spec(set(), hairpin=True)) == [Hairpin("wpport2")]


def test_a_port_gone_between_look_and_change_is_no_error(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    rec = node.Reconciler(nl)
    rec.run(spec(set()))
    nl.ensure_veth("wpport1", "wppeer1")
    nl.set_link("wpport1", master=BR)
    observed = node.observe(nl, spec(set(), hairpin=True))
    nl.remove_link("wpport1")  # a pod deleted meanwhile
    node.apply(nl, observed, [Hairpin("wpport1")])


def test_the_nat_table_converges_and_leaves_other_tables_alone(world: World) -> None:
    name, nl = world.space("node")
    world.add_tun(name, TUN)
    foreign = [Masquerade(NET("192.168.0.0/16"), NET("192.168.0.0/16"))]
    nl.replace_nat_table("wpforeign", foreign)
    rec = node.Reconciler(nl)
    rules = (Masquerade(CLUSTER, CLUSTER),)
    assert ReplaceNat(rules) in rec.run(spec(set(), masquerade=CLUSTER))
    assert rec.run(spec(set(), masquerade=CLUSTER)) == []
    assert nl.nat_table(NAT_TABLE) == NatTable(True, rules)
    nl.replace_nat_table(NAT_TABLE, [*rules, Masquerade(NET("10.0.0.0/8"), CLUSTER)])  # drift
    assert rec.run(spec(set(), masquerade=CLUSTER)) == [ReplaceNat(rules)]
    assert nl.nat_table(NAT_TABLE) == NatTable(True, rules)
    assert rec.run(spec(set())) == [RemoveNat()]  # masquerading turned off
    assert nl.nat_table(NAT_TABLE) is None and rec.run(spec(set())) == []
    assert nl.nat_table("wpforeign") == NatTable(True, tuple(foreign))


def test_a_missing_tun_is_refused(world: World) -> None:
    _, nl = world.space("node")
    with pytest.raises(NetlinkFailure) as err:
        node.Reconciler(nl).run(spec({"10.244.2.0/24"}))
    assert err.value.code == errno.ENODEV
    bridge = nl.link(BR)  # what came before the TUN's settings is done
    assert bridge is not None and (bridge.mtu, bridge.up) == (1436, True)


def test_a_run_costs_one_observation_and_one_request_per_change() -> None:
    kernel = FakeKernel()
    nl = kernel.host
    nl.add_device(TUN, "tun")
    rec = node.Reconciler(nl)
    many = {f"10.{i // 256}.{i % 256}.0/24" for i in range(300)}
    actions = rec.run(spec(many))
    # bridge created and set, TUN set, the gateway, the TUN's anchor, routes
    assert len(actions) == 3 + 1 + 1 + 300
    # no bridge, so no addresses to list; the new bridge is read back once, for its index
    assert nl.requests == (OBSERVATION - 1) + len(actions) + 1
    nl.requests = 0
    assert rec.run(spec(many)) == []
    assert nl.requests == OBSERVATION
    nl.requests = 0
    fewer = set(sorted(many)[:100])
    assert len(rec.run(spec(fewer))) == 200
    assert nl.requests == OBSERVATION + 200
    assert len(rec.routes) == 100 and set(nl.list_routes()) == set(rec.routes)
    nl.requests = 0
    rec.run(spec(fewer, masquerade=CLUSTER))
    assert nl.requests == OBSERVATION + 1  # the table, made in one transaction
    nl.requests = 0
    assert rec.run(spec(fewer, masquerade=CLUSTER)) == []
    assert nl.requests == OBSERVATION + 2  # reading a table that is there: table, chain, rules


def test_apply_executes_by_the_observed_indexes() -> None:
    kernel = FakeKernel()
    nl = kernel.host
    nl.add_device(TUN, "tun")
    desired = spec(set())
    observed = node.observe(nl, desired)
    tun_index = observed.links[TUN].index
    nl.requests = 0
    node.apply(nl, observed, [SetLink(TUN, mtu=1400, up=True)])
    assert nl.requests == 1
    link = nl.link(TUN)
    assert link is not None and (link.index, link.mtu, link.up) == (tun_index, 1400, True)


def test_forwarding_sysctls() -> None:
    values = {"net.ipv4.ip_forward": "0"}

    def ensure(key: str, value: str) -> bool:
        changed = values.get(key) != value
        values[key] = value
        return changed

    desired = spec(set())
    assert node.ensure_forwarding(desired, ensure) == [
        "net.ipv4.ip_forward=1",
        f"net/ipv4/conf/{TUN}/rp_filter=2",
        f"net/ipv4/conf/{BR}/rp_filter=2",
    ]
    assert node.ensure_forwarding(desired, ensure) == []
