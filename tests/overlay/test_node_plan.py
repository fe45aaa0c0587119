"""``node.plan``: a pure diff of desired against observed host state, checked against an
in-memory model of the kernel so that plan-apply-plan converges to nothing."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import node
from overlay.actions import (
    Action,
    AddAddress,
    CreateBridge,
    Hairpin,
    RemoveAddress,
    RemoveNat,
    ReplaceNat,
    SetLink,
)
from overlay.netdev import RT_SCOPE_HOST, Link, Masquerade, NatTable, Route
from overlay.node import NodeSpec, Observed
from overlay.routes import AddRoute, RemoveRoute

NET = ipaddress.IPv4Network
IFACE = ipaddress.IPv4Interface
BR, TUN = "weave", "weave-tun"
ETH0 = Link(2, "eth0", "", 1500, True, 0, 65536)
CLUSTER = NET("10.32.0.0/12")


def spec(
    blocks: tuple[str, ...] = ("10.32.2.0/24", "10.32.3.0/24"),
    gateways: tuple[str, ...] = ("10.32.1.1/24",),
    mtu: int = 1376,
    gso: int = 64000,
    hairpin: bool = False,
    masquerade: NET | None = None,
) -> NodeSpec:
    return NodeSpec(
        bridge=BR,
        tun=TUN,
        mtu=mtu,
        gso_max_size=gso,
        gateways=tuple(IFACE(g) for g in gateways),
        remote_blocks=frozenset(NET(b) for b in blocks),
        hairpin=hairpin,
        masquerade=masquerade,
    )


def fresh_tun(index: int = 5) -> Link:
    """What open_tun leaves behind: default MTU, down, kernel's default GSO size."""
    return Link(index, TUN, "tun", 1500, False, 0, 65536)


def local(desired: NodeSpec, block: ipaddress.IPv4Network) -> bool:
    """Whether ``block`` lies inside a block of the bridge (no route into the TUN for it)."""
    return any(block.subnet_of(g.network) for g in desired.gateways)


def converged(desired: NodeSpec) -> Observed:
    return Observed(
        links={
            "eth0": ETH0,
            BR: Link(4, BR, "bridge", desired.mtu, True, 0, 65536),
            TUN: Link(5, TUN, "tun", desired.mtu, True, 0, desired.gso_max_size),
        },
        bridge_addresses=desired.gateways,
        routes=tuple(Route(b, TUN) for b in sorted(desired.remote_blocks) if not local(desired, b)),
        nat=NatTable(True, desired.nat_rules) if desired.nat_rules else None,
        anchors={device: tuple(sorted(want)) for device, want in desired.anchors.items()},
    )


def anchor(gateway: str = "10.32.1.1", device: str = TUN) -> AddAddress:
    """The anchor address the plan gives ``device`` (overlay/node.py)."""
    return AddAddress(device, IFACE(gateway), RT_SCOPE_HOST)


class KernelError(Exception):
    pass


def apply_to(observed: Observed, actions: list[Action]) -> Observed:
    """What the kernel would report after ``node.apply`` of ``actions`` (routes: ours only)."""
    links = dict(observed.links)
    addresses = list(observed.bridge_addresses)
    anchors = {device: list(held) for device, held in observed.anchors.items()}
    routes = list(observed.routes)
    nat = observed.nat
    for action in actions:
        if isinstance(action, CreateBridge):
            if action.name in links:
                raise KernelError(f"{action.name} exists")
            index = max((link.index for link in links.values()), default=1) + 1
            links[action.name] = Link(index, action.name, "bridge", 1500, False, 0, 65536)
        elif isinstance(action, SetLink):
            link = links.get(action.name)
            if link is None:
                raise KernelError(f"no device {action.name}")
            if action.mtu is not None:
                link = replace(link, mtu=action.mtu)
            if action.up is not None:
                link = replace(link, up=action.up)
            if action.gso_max_size is not None:
                link = replace(link, gso_max_size=action.gso_max_size)
            links[action.name] = link
        elif isinstance(action, AddAddress):
            if action.device not in links:
                raise KernelError(f"no device {action.device}")
            held = addresses if action.device == BR else anchors.setdefault(action.device, [])
            if action.address not in held:
                held.append(action.address)
        elif isinstance(action, RemoveAddress):
            if action.device == BR:
                addresses = [a for a in addresses if a != action.address]
            else:
                anchors[action.device].remove(action.address)
        elif isinstance(action, Hairpin):
            port = links[action.port]
            if not port.master:
                raise KernelError(f"{action.port} is not a bridge port")
            links[action.port] = replace(port, hairpin=True)
        elif isinstance(action, ReplaceNat):
            nat = NatTable(True, action.rules)
        elif isinstance(action, RemoveNat):
            if nat is None:
                raise KernelError("no table")
            nat = None
        elif isinstance(action, AddRoute):
            if action.route.device not in links:
                raise KernelError(f"no device {action.route.device}")
            # ensure_route replaces any route of ours to the same destination.
            dst = action.route.destination
            routes = [r for r in routes if r.destination != dst] + [action.route]
        else:
            assert isinstance(action, RemoveRoute)
            r = action.route
            routes = [x for x in routes if (x.destination, x.device) != (r.destination, r.device)]
    bridge_addresses = tuple(addresses) if BR in links else ()
    held = {device: tuple(a) for device, a in anchors.items() if device in links}
    return Observed(links, bridge_addresses, tuple(routes), nat, anchors=held)


# -- examples --------------------------------------------------------------------------------


def test_empty_node() -> None:
    desired = spec()
    actions = node.plan(desired, Observed({"eth0": ETH0, TUN: fresh_tun()}, (), ()))
    assert actions == [
        CreateBridge(BR),
        SetLink(BR, mtu=1376, up=True, gso_max_size=None),
        SetLink(TUN, mtu=1376, up=True, gso_max_size=64000),
        AddAddress(BR, IFACE("10.32.1.1/24")),
        anchor(),
        AddRoute(Route(NET("10.32.2.0/24"), TUN)),
        AddRoute(Route(NET("10.32.3.0/24"), TUN)),
    ]


def test_missing_tun_gets_every_setting() -> None:
    actions = node.plan(spec(blocks=()), Observed({"eth0": ETH0}, (), ()))
    assert SetLink(TUN, mtu=1376, up=True, gso_max_size=64000) in actions
    assert not any(isinstance(a, CreateBridge) and a.name == TUN for a in actions)


def test_routes_follow_address_order() -> None:
    blocks = ("10.32.10.0/24", "10.32.9.0/24", "10.32.0.0/16", "10.32.200.0/24", "10.33.0.0/24")
    actions = node.plan(spec(blocks=blocks), converged(spec(blocks=())))
    assert actions == [
        AddRoute(Route(NET(b), TUN))
        for b in ("10.32.0.0/16", "10.32.9.0/24", "10.32.10.0/24", "10.32.200.0/24", "10.33.0.0/24")
    ]


def test_a_remote_block_inside_a_local_block_is_never_routed_into_the_tun() -> None:
    # the bridge's own route to 10.32.1.0/24 stays: the same prefix would replace it, a longer
    # one would win over it; a shorter one (the whole range) loses to it and is kept
    blocks = ("10.32.1.0/24", "10.32.1.128/25", "10.32.0.0/16", "10.32.2.0/24")
    desired = spec(blocks=blocks)
    assert desired.gateways == (IFACE("10.32.1.1/24"),)
    actions = node.plan(desired, converged(spec(blocks=())))
    assert actions == [AddRoute(Route(NET(b), TUN)) for b in ("10.32.0.0/16", "10.32.2.0/24")]
    found = converged(spec(blocks=()))
    found = replace(found, routes=(Route(NET("10.32.1.0/24"), TUN),))  # put there earlier
    assert RemoveRoute(Route(NET("10.32.1.0/24"), TUN)) in node.plan(desired, found)


def test_converged_is_a_no_op() -> None:
    desired = spec(blocks=("10.32.2.0/24", "10.32.0.0/16", "10.40.0.0/20"))
    assert node.plan(desired, converged(desired)) == []


def test_stale_routes_of_ours_are_removed() -> None:
    desired = spec(blocks=("10.32.2.0/24",))
    observed = replace(
        converged(desired),
        routes=(
            Route(NET("10.32.2.0/24"), TUN),
            Route(NET("10.32.7.0/24"), TUN),  # a departed peer
            Route(NET("10.32.8.0/24"), BR),  # ours, on the wrong device
            Route(NET("10.32.2.0/24"), TUN, ipaddress.IPv4Address("10.32.2.1")),  # via gateway
        ),
    )
    actions = node.plan(desired, observed)
    assert actions == [
        RemoveRoute(Route(NET("10.32.2.0/24"), TUN, ipaddress.IPv4Address("10.32.2.1"))),
        RemoveRoute(Route(NET("10.32.7.0/24"), TUN)),
        RemoveRoute(Route(NET("10.32.8.0/24"), BR)),
    ]


def test_route_moved_to_other_device_is_one_replace() -> None:
    # no removal first: packets to the block find a route throughout
    desired = spec(blocks=("10.32.2.0/24",))
    observed = replace(converged(desired), routes=(Route(NET("10.32.2.0/24"), BR),))
    assert node.plan(desired, observed) == [AddRoute(Route(NET("10.32.2.0/24"), TUN))]


def test_extra_and_wrong_bridge_addresses() -> None:
    desired = spec()
    observed = replace(
        converged(desired),
        bridge_addresses=(IFACE("10.32.1.1/16"), IFACE("192.168.5.1/24")),
    )
    assert node.plan(desired, observed) == [
        AddAddress(BR, IFACE("10.32.1.1/24")),
        RemoveAddress(BR, IFACE("10.32.1.1/16")),
        RemoveAddress(BR, IFACE("192.168.5.1/24")),
    ]


def test_extra_address_alongside_the_right_one() -> None:
    desired = spec()
    observed = replace(
        converged(desired), bridge_addresses=(IFACE("10.32.1.1/24"), IFACE("10.32.1.9/24"))
    )
    assert node.plan(desired, observed) == [RemoveAddress(BR, IFACE("10.32.1.9/24"))]


def test_link_drift_is_corrected_field_by_field() -> None:
    desired = spec()
    base = converged(desired)
    links = dict(base.links)
    links[BR] = replace(links[BR], mtu=1500)
    links[TUN] = replace(links[TUN], up=False, gso_max_size=65536)
    assert node.plan(desired, replace(base, links=links)) == [
        SetLink(BR, mtu=1376),
        SetLink(TUN, up=True, gso_max_size=64000),
    ]
    links[BR] = replace(links[BR], mtu=1376, up=False)
    links[TUN] = replace(links[TUN], mtu=9000, up=True, gso_max_size=64000)
    assert node.plan(desired, replace(base, links=links)) == [
        SetLink(BR, up=True),
        SetLink(TUN, mtu=1376),
    ]


def test_bridge_gso_is_left_alone() -> None:
    desired = spec()
    base = converged(desired)
    links = dict(base.links)
    links[BR] = replace(links[BR], gso_max_size=1234)
    assert node.plan(desired, replace(base, links=links)) == []


def test_other_links_are_never_touched() -> None:
    desired = spec()
    base = converged(desired)
    links = dict(base.links)
    links["eth0"] = replace(ETH0, mtu=9000, up=False)
    links["cni0"] = Link(9, "cni0", "bridge", 1450, False, 0, 65536)
    assert node.plan(desired, replace(base, links=links)) == []


def test_ports_of_the_bridge_get_hairpin_and_only_they() -> None:
    desired = spec(hairpin=True)
    base = converged(desired)
    bridge = base.links[BR].index
    links = dict(base.links)
    links["wpa"] = Link(10, "wpa", "veth", 1376, True, bridge, 65536)
    links["wpb"] = Link(11, "wpb", "veth", 1376, True, bridge, 65536, "", True)
    links["wpc"] = Link(12, "wpc", "veth", 1376, True, 0, 65536)  # on no bridge
    links["vx"] = Link(13, "vx", "vxlan", 1376, True, 99, 65536)  # another bridge's
    assert node.plan(desired, replace(base, links=links)) == [Hairpin("wpa")]
    assert node.plan(spec(hairpin=False), replace(base, links=links)) == []


def test_our_nat_table_holds_exactly_the_masquerade_of_the_cluster_range() -> None:
    desired = spec(masquerade=CLUSTER)
    rules = (Masquerade(CLUSTER, CLUSTER),)
    assert desired.nat_rules == rules
    assert node.plan(desired, replace(converged(desired), nat=None)) == [ReplaceNat(rules)]
    assert node.plan(desired, converged(desired)) == []
    for drifted in (
        NatTable(False, rules),  # a chain of another kind, or something else in the table
        NatTable(True, ()),
        NatTable(True, (*rules, *rules)),
        NatTable(True, (None,)),  # a rule of a shape we do not make
        NatTable(True, (Masquerade(CLUSTER, NET("10.0.0.0/8")),)),
    ):
        assert node.plan(desired, replace(converged(desired), nat=drifted)) == [ReplaceNat(rules)]
    off = spec(masquerade=None)
    assert node.plan(off, replace(converged(off), nat=NatTable(True, rules))) == [RemoveNat()]
    assert node.plan(off, converged(off)) == []


def test_empty_node_converges_in_one_step() -> None:
    desired = spec()
    empty = Observed({"eth0": ETH0, TUN: fresh_tun()}, (), ())
    after = apply_to(empty, node.plan(desired, empty))
    assert node.plan(desired, after) == []
    assert after.links[BR].kind == "bridge" and after.links[BR].up
    assert set(after.routes) == {
        Route(b, TUN) for b in desired.remote_blocks if not local(desired, b)
    }


# -- property: plan, apply, plan again = nothing ---------------------------------------------

BLOCKS = [
    NET(b)
    for b in (
        "10.32.0.0/16",
        "10.32.1.0/24",
        "10.32.2.0/24",
        "10.32.3.0/24",
        "10.32.2.0/25",
        "10.40.0.0/20",
        "10.32.255.0/24",
        "0.0.0.0/0",
    )
]
GATEWAYS = [IFACE(a) for a in ("10.32.1.1/24", "10.32.1.1/16", "10.32.1.2/24", "10.33.0.1/24")]


@st.composite
def links(draw: st.DrawFn, name: str, kind: str, index: int) -> Link:
    return Link(
        index,
        name,
        kind,
        draw(st.sampled_from([576, 1376, 1420, 1500, 9000])),
        draw(st.booleans()),
        0,
        draw(st.sampled_from([1024, 64000, 65536])),
    )


@st.composite
def desired_specs(draw: st.DrawFn) -> NodeSpec:
    return NodeSpec(
        bridge=BR,
        tun=TUN,
        mtu=draw(st.sampled_from([576, 1376, 1420, 1500, 8936])),
        gso_max_size=draw(st.sampled_from([1024, 16384, 64000, 65000])),
        gateways=tuple(draw(st.lists(st.sampled_from(GATEWAYS), unique=True, max_size=2))),
        remote_blocks=frozenset(draw(st.sets(st.sampled_from(BLOCKS), max_size=6))),
        hairpin=draw(st.booleans()),
        masquerade=draw(st.sampled_from([None, CLUSTER, NET("10.244.0.0/16")])),
    )


RULES = [Masquerade(CLUSTER, CLUSTER), Masquerade(CLUSTER, NET("10.0.0.0/8")), None]
NAT_TABLES = st.one_of(
    st.none(),
    st.builds(NatTable, st.booleans(), st.lists(st.sampled_from(RULES), max_size=2).map(tuple)),
)


@st.composite
def ports(draw: st.DrawFn, bridge: Link | None) -> dict[str, Link]:
    """Pods' host veths: on the bridge (hairpin or not), or on no bridge at all."""
    found = {}
    for index in range(10, 10 + draw(st.integers(0, 3))):
        on_bridge = bridge is not None and draw(st.booleans())
        master = bridge.index if bridge is not None and on_bridge else 0
        hairpin = on_bridge and draw(st.booleans())
        name = f"wp{index}"
        found[name] = Link(index, name, "veth", 1376, True, master, 65536, "", hairpin)
    return found


@st.composite
def observed_states(draw: st.DrawFn) -> Observed:
    found = {"eth0": ETH0, TUN: draw(links(TUN, "tun", 5))}
    if draw(st.booleans()):
        found[BR] = draw(links(BR, "bridge", 4))
    addresses: tuple[IFACE, ...] = ()
    if BR in found:
        addresses = tuple(draw(st.lists(st.sampled_from(GATEWAYS), unique=True, max_size=3)))
    gateway = st.one_of(st.none(), st.just(ipaddress.IPv4Address("10.32.0.1")))
    route = st.builds(Route, st.sampled_from(BLOCKS), st.sampled_from([TUN, BR, "eth0"]), gateway)
    # The kernel keeps one route of ours per destination in the main table.
    routes = draw(st.lists(route, unique_by=lambda r: r.destination, max_size=6))
    found.update(draw(ports(found.get(BR))))
    return Observed(found, addresses, tuple(routes), draw(NAT_TABLES))


@settings(max_examples=300)
@given(desired_specs(), observed_states())
def test_plan_apply_plan_is_idempotent(desired: NodeSpec, observed: Observed) -> None:
    actions = node.plan(desired, observed)
    after = apply_to(observed, actions)
    assert node.plan(desired, after) == []
    # ... and the model really reached the desired state.
    assert set(after.bridge_addresses) == set(desired.gateways)
    assert set(after.routes) == {
        Route(b, TUN) for b in desired.remote_blocks if not local(desired, b)
    }
    for name in (BR, TUN):
        assert after.links[name].mtu == desired.mtu and after.links[name].up
    assert after.links[TUN].gso_max_size == desired.gso_max_size
    assert after.links["eth0"] == ETH0
    bridge = after.links[BR].index
    on_bridge = [link for link in after.links.values() if link.master == bridge]
    assert not desired.hairpin or all(port.hairpin for port in on_bridge)
    assert after.nat == (NatTable(True, desired.nat_rules) if desired.masquerade else None)
    # Minimal: no action repeats, nothing touches foreign devices.
    assert len(actions) == len(set(actions))
    for a in actions:
        if isinstance(a, Hairpin):
            assert observed.links[a.port].master == bridge and not observed.links[a.port].hairpin
        elif isinstance(a, AddRoute | RemoveRoute):
            assert a.route.device in (BR, TUN) or isinstance(a, RemoveRoute)
        elif isinstance(a, CreateBridge | SetLink):
            assert a.name in (BR, TUN)
        else:  # without the fast path, nothing of a VXLAN device is planned
            assert isinstance(a, AddAddress | RemoveAddress | ReplaceNat | RemoveNat)
            if isinstance(a, AddAddress | RemoveAddress):  # the bridge's, or the TUN's anchor
                assert a.device == BR or (a.device == TUN and a.address.network.prefixlen == 32)


@given(desired_specs(), observed_states())
def test_plan_is_pure_and_deterministic(desired: NodeSpec, observed: Observed) -> None:
    snapshot = (dict(observed.links), observed.bridge_addresses, observed.routes)
    assert node.plan(desired, observed) == node.plan(desired, observed)
    assert (dict(observed.links), observed.bridge_addresses, observed.routes) == snapshot


@given(desired_specs())
def test_converged_state_plans_nothing(desired: NodeSpec) -> None:
    assert node.plan(desired, converged(desired)) == []
