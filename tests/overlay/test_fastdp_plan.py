"""``node.plan`` with the fast path: the VXLAN device, its neighbours and forwarding entries, the
routes via VTEPs and the UDP guard, checked against an in-memory model of the kernel so that
plan-apply-plan converges to nothing."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import node
from overlay.actions import Action, RemoveNat, ReplaceNat, SetLink
from overlay.fastdp import (
    CreateVxlan,
    Fastdp,
    RemoveFdb,
    RemoveLink,
    RemoveNeighbour,
    ReplaceFdb,
    ReplaceNeighbour,
    usable,
)
from overlay.netdev import (
    RT_SCOPE_HOST,
    FdbEntry,
    Link,
    NatTable,
    Neighbour,
    Route,
    UdpGuard,
    Vxlan,
    VxlanInfo,
)
from overlay.node import NodeSpec, Observed
from overlay.routes import AddRoute, RemoveRoute
from overlay.vtep import FASTDP_PORT, FASTDP_VNI, Vtep
from tests.overlay.test_node_plan import BR, ETH0, TUN, KernelError, apply_to, converged

NET = ipaddress.IPv4Network
ADDR = ipaddress.IPv4Address
IFACE = ipaddress.IPv4Interface
VX = "wpvx"
LOCAL = ADDR("192.168.1.1")
MAC = "02:00:00:00:00:01"
V2 = Vtep(ADDR("10.32.2.1"), "02:00:00:00:00:02", ADDR("192.168.1.2"))
V3 = Vtep(ADDR("10.32.3.1"), "02:00:00:00:00:03", ADDR("192.168.1.3"))
B2, B3 = NET("10.32.2.0/24"), NET("10.32.3.0/24")
INFO = VxlanInfo(FASTDP_VNI, LOCAL, FASTDP_PORT, False)


def guard_of(*hosts: ADDR) -> UdpGuard:
    """The guard of peers with these hosts and no blocks: each host's own address alone."""
    return UdpGuard.of(FASTDP_PORT, [(host, NET(host)) for host in hosts])


def fastdp(
    vteps: tuple[Vtep, ...] = (V2, V3), fast: tuple[tuple[NET, Vtep], ...] = ((B2, V2),)
) -> Fastdp:
    return Fastdp(
        VX,
        FASTDP_VNI,
        FASTDP_PORT,
        LOCAL,
        MAC,
        frozenset(vteps),
        frozenset((block, vtep.address) for block, vtep in fast),
    )


def spec(fast: Fastdp | None = None, blocks: tuple[NET, ...] = (B2, B3)) -> NodeSpec:
    return NodeSpec(
        BR,
        TUN,
        1376,
        64000,
        (IFACE("10.32.1.1/24"),),
        frozenset(blocks),
        fastdp=fast if fast is not None else fastdp(),
    )


def device(up: bool = True, info: VxlanInfo = INFO, mtu: int = 1376, mac: str = MAC) -> Link:
    return Link(7, VX, "vxlan", mtu, up, 0, 65536, mac, vxlan=info)


def done(desired: NodeSpec) -> Observed:
    """The node as it looks once ``desired`` is in place."""
    assert desired.fastdp is not None
    base = converged(replace(desired, fastdp=None))
    vteps = sorted(usable(desired.fastdp, desired.local_blocks), key=lambda v: v.address)
    return replace(
        base,
        links={**base.links, VX: device()},
        anchors={device: tuple(sorted(want)) for device, want in desired.anchors.items()},
        routes=tuple(desired.routes),
        nat=NatTable(True, desired.nat_rules, desired.guard),
        neighbours=tuple(Neighbour(v.address, v.mac) for v in vteps),
        fdb=tuple(FdbEntry(v.mac, v.host) for v in vteps),
    )


def model(observed: Observed, actions: list[Action]) -> Observed:
    """What the kernel would report after ``node.apply``: the node's model (tests of
    test_node_plan) for the rest, the fast path's parts here."""
    for action in actions:
        observed = _one(observed, action)
    return observed


def _one(observed: Observed, action: Action) -> Observed:
    links, neighbours, fdb = dict(observed.links), list(observed.neighbours), list(observed.fdb)
    if isinstance(action, CreateVxlan):
        new = action.device
        if new.name in links:
            raise KernelError(f"{new.name} exists")
        info = VxlanInfo(new.vni, new.local, new.port, new.learning)
        links[new.name] = Link(7, new.name, "vxlan", new.mtu or 1500, False, 0, 65536,
                               new.mac or "02:99:99:99:99:99", vxlan=info)  # fmt: skip
    elif isinstance(action, RemoveLink):
        links.pop(action.name)
        routes = tuple(r for r in observed.routes if r.device != action.name)
        anchors = {d: a for d, a in observed.anchors.items() if d != action.name}
        return replace(observed, links=links, routes=routes, neighbours=(), fdb=(),
                       anchors=anchors)  # fmt: skip
    elif isinstance(action, ReplaceNeighbour | RemoveNeighbour):
        if VX not in links or not links[VX].up:
            raise KernelError("neighbour on a missing or down device")
        neighbours = [n for n in neighbours if n.address != _address(action)]
        if isinstance(action, ReplaceNeighbour):
            neighbours.append(action.neighbour)
    elif isinstance(action, ReplaceFdb):
        first = next((i for i, e in enumerate(fdb) if e.mac == action.entry.mac), None)
        if first is None:
            fdb.append(action.entry)
        else:
            fdb[first] = action.entry
    elif isinstance(action, RemoveFdb):
        fdb = [e for e in fdb if e != action.entry]
    else:
        return _rest(observed, action)
    return replace(observed, links=links, neighbours=tuple(neighbours), fdb=tuple(fdb))


def _address(action: ReplaceNeighbour | RemoveNeighbour) -> ADDR:
    return action.neighbour.address if isinstance(action, ReplaceNeighbour) else action.address


def _rest(observed: Observed, action: Action) -> Observed:
    if isinstance(action, SetLink) and action.mac is not None:
        link = replace(observed.links[action.name], mac=action.mac)
        observed = replace(observed, links={**observed.links, action.name: link})
        action = replace(action, mac=None)
    if isinstance(action, SetLink) and action.up is False:
        observed = replace(observed, neighbours=())  # the kernel flushes them
    if isinstance(action, AddRoute) and action.route.onlink:
        device = observed.links.get(action.route.device)
        if device is None or not device.up:
            raise KernelError("onlink route on a missing or down device")
    if isinstance(action, ReplaceNat):
        return replace(observed, nat=NatTable(True, action.rules, action.guard))
    after = apply_to(observed, [action])
    return replace(after, neighbours=observed.neighbours, fdb=observed.fdb)


def empty() -> Observed:
    return Observed({"eth0": ETH0, TUN: Link(5, TUN, "tun", 1500, False, 0, 65536)}, (), ())


# -- examples --------------------------------------------------------------------------------


def test_an_empty_node_gets_the_device_its_tables_routes_and_guard() -> None:
    actions = node.plan(spec(), empty())
    start = next(i for i, a in enumerate(actions) if isinstance(a, CreateVxlan))
    assert actions[start - 1] == node.AddAddress(BR, IFACE("10.32.1.1/24"))  # the node first
    assert actions[start:] == [
        CreateVxlan(Vxlan(VX, FASTDP_VNI, LOCAL, None, FASTDP_PORT, False, MAC, 1376)),
        SetLink(VX, up=True),
        ReplaceNeighbour(VX, Neighbour(V2.address, V2.mac)),
        ReplaceNeighbour(VX, Neighbour(V3.address, V3.mac)),
        ReplaceFdb(VX, FdbEntry(V2.mac, V2.host)),
        ReplaceFdb(VX, FdbEntry(V3.mac, V3.host)),
        node.AddAddress(TUN, IFACE("10.32.1.1/32"), RT_SCOPE_HOST),  # the anchors (node.py)
        node.AddAddress(VX, IFACE("10.32.1.1/32"), RT_SCOPE_HOST),
        AddRoute(Route(B2, VX, V2.address, onlink=True)),
        AddRoute(Route(NET("10.32.2.1/32"), VX)),
        AddRoute(Route(B3, TUN)),
        AddRoute(Route(NET("10.32.3.1/32"), VX)),
        ReplaceNat((), guard_of(V2.host, V3.host)),
    ]
    assert node.plan(spec(), model(empty(), actions)) == []


def test_converged_is_a_no_op() -> None:
    assert node.plan(spec(), done(spec())) == []


def test_a_block_switching_path_is_one_route_replace() -> None:
    sleeve = spec(fastdp(fast=()))
    fast = spec(fastdp(fast=((B2, V2), (B3, V3))))
    assert node.plan(fast, done(sleeve)) == [
        AddRoute(Route(B2, VX, V2.address, onlink=True)),
        AddRoute(Route(B3, VX, V3.address, onlink=True)),
    ]
    assert node.plan(sleeve, done(fast)) == [AddRoute(Route(B2, TUN)), AddRoute(Route(B3, TUN))]
    assert node.plan(fast, model(done(sleeve), node.plan(fast, done(sleeve)))) == []


def test_a_changed_vtep_is_replaced_in_place() -> None:
    moved = replace(V2, host=ADDR("192.168.1.22"))  # the peer's underlay address changed
    desired = spec(fastdp(vteps=(moved, V3), fast=((B2, moved),)))
    actions = node.plan(desired, done(spec()))
    assert actions == [
        ReplaceFdb(VX, FdbEntry(V2.mac, moved.host)),
        ReplaceNat((), guard_of(moved.host, V3.host)),
    ]
    renamed = replace(V2, mac="02:00:00:00:00:22")  # a new MAC at the same address
    desired = spec(fastdp(vteps=(renamed, V3), fast=((B2, renamed),)))
    actions = node.plan(desired, done(spec()))
    assert actions == [
        ReplaceNeighbour(VX, Neighbour(V2.address, renamed.mac)),
        ReplaceFdb(VX, FdbEntry(renamed.mac, V2.host)),
        RemoveFdb(VX, FdbEntry(V2.mac, V2.host)),
    ]
    assert node.plan(desired, model(done(spec()), actions)) == []


def test_a_departed_peer_leaves_nothing_behind() -> None:
    desired = spec(fastdp(vteps=(V3,), fast=()), blocks=(B3,))
    assert node.plan(desired, done(spec())) == [
        RemoveNeighbour(VX, V2.address),
        RemoveFdb(VX, FdbEntry(V2.mac, V2.host)),
        RemoveRoute(Route(B2, VX, V2.address, onlink=True)),
        RemoveRoute(Route(NET("10.32.2.1/32"), VX)),
        ReplaceNat((), guard_of(V3.host)),
    ]


def test_foreign_neighbours_and_entries_of_the_device_go() -> None:
    stray = replace(
        done(spec()),
        neighbours=(*done(spec()).neighbours, Neighbour(ADDR("10.32.9.1"), "02:00:00:00:00:09")),
        fdb=(FdbEntry("00:00:00:00:00:00", ADDR("192.168.1.9")), *done(spec()).fdb,
             FdbEntry(V2.mac, ADDR("192.168.1.99"))),
    )  # fmt: skip
    assert node.plan(spec(), stray) == [
        RemoveFdb(VX, FdbEntry(V2.mac, ADDR("192.168.1.99"))),
        RemoveNeighbour(VX, ADDR("10.32.9.1")),
        RemoveFdb(VX, FdbEntry("00:00:00:00:00:00", ADDR("192.168.1.9"))),
    ]


def test_a_device_made_otherwise_is_made_again_with_everything_on_it() -> None:
    for info in (
        replace(INFO, vni=1),
        replace(INFO, local=ADDR("192.168.1.77")),
        replace(INFO, local=None),
        replace(INFO, port=4789),
        replace(INFO, learning=True),
    ):
        found = replace(done(spec()), links={**done(spec()).links, VX: device(info=info)})
        actions = node.plan(spec(), found)
        assert actions[:3] == [
            RemoveLink(VX),
            CreateVxlan(Vxlan(VX, FASTDP_VNI, LOCAL, None, FASTDP_PORT, False, MAC, 1376)),
            SetLink(VX, up=True),
        ]
        assert sum(isinstance(a, AddRoute) and a.route.device == VX for a in actions) == 3
        assert node.plan(spec(), model(found, actions)) == []


def test_device_drift_is_one_set() -> None:
    found = replace(
        done(spec()),
        links={**done(spec()).links, VX: device(up=False, mtu=1500, mac="02:aa:aa:aa:aa:aa")},
        neighbours=(),  # a device that went down lost them
    )
    actions = node.plan(spec(), found)
    assert actions == [
        SetLink(VX, mtu=1376, up=True, mac=MAC),
        ReplaceNeighbour(VX, Neighbour(V2.address, V2.mac)),
        ReplaceNeighbour(VX, Neighbour(V3.address, V3.mac)),
    ]


def test_a_link_of_another_kind_by_the_name_is_not_removed() -> None:
    found = replace(done(spec()), links={**done(spec()).links, VX: replace(device(), kind="dummy")})
    actions = node.plan(spec(), found)
    assert RemoveLink(VX) not in actions
    assert isinstance(actions[0], CreateVxlan)  # which the kernel refuses (EEXIST)


def test_without_the_fast_path_no_device_is_planned_and_its_routes_go() -> None:
    off = replace(spec(), fastdp=None)
    actions = node.plan(off, done(spec()))
    assert actions == [
        RemoveRoute(Route(NET("10.32.2.1/32"), VX)),
        RemoveRoute(Route(NET("10.32.3.1/32"), VX)),
        AddRoute(Route(B2, TUN)),
        RemoveNat(),
    ]
    assert not any(
        isinstance(a, CreateVxlan | ReplaceNeighbour | ReplaceFdb) for a in node.plan(off, empty())
    )


def test_the_guard_lives_beside_the_masquerade() -> None:
    cluster = NET("10.32.0.0/12")
    desired = replace(spec(), masquerade=cluster)
    assert node.plan(desired, done(spec())) == [
        ReplaceNat(desired.nat_rules, guard_of(V2.host, V3.host))
    ]
    assert node.plan(desired, done(desired)) == []


def test_vteps_that_could_mislead_the_kernel_are_not_installed() -> None:
    twin_address = Vtep(V2.address, "02:00:00:00:00:44", ADDR("192.168.1.4"))
    twin_mac = Vtep(ADDR("10.32.5.1"), V3.mac, ADDR("192.168.1.5"))
    ours = Vtep(ADDR("10.32.6.1"), MAC, ADDR("192.168.1.6"))
    underlay = Vtep(ADDR("192.168.1.3"), "02:00:00:00:00:07", ADDR("192.168.1.7"))
    gateway = Vtep(ADDR("10.32.1.1"), "02:00:00:00:00:08", ADDR("192.168.1.8"))
    loop = Vtep(ADDR("10.32.9.1"), "02:00:00:00:00:09", LOCAL)
    good = Vtep(ADDR("10.32.10.1"), "02:00:00:00:00:10", ADDR("192.168.1.10"))
    vteps = (V2, V3, twin_address, twin_mac, ours, underlay, gateway, loop, good)
    fast = fastdp(vteps=vteps, fast=((B2, V2), (B3, V3), (NET("10.32.10.0/24"), good)))
    desired = spec(fast, blocks=(B2, B3, NET("10.32.10.0/24")))
    assert usable(fast, desired.local_blocks) == {good}
    assert desired.routes == [
        Route(B2, TUN),
        Route(B3, TUN),
        Route(NET("10.32.10.0/24"), VX, good.address, onlink=True),
        Route(NET("10.32.10.1/32"), VX),
    ]
    assert desired.guard == guard_of(*(v.host for v in vteps))


def test_fast_routes_never_hold_an_underlay_address() -> None:
    wide = NET("192.168.0.0/16")  # holds every host
    desired = spec(fastdp(fast=((B2, V2), (wide, V3))), blocks=(B2, wide))
    assert Route(wide, TUN) in desired.routes
    assert Route(B2, VX, V2.address, onlink=True) in desired.routes


def test_a_block_named_twice_takes_the_sleeve() -> None:
    twice = fastdp(fast=((B2, V2), (B2, V3)))
    assert Route(B2, TUN) in spec(twice).routes


def test_fast_blocks_are_routed_whether_or_not_listed_as_remote() -> None:
    assert Route(B2, VX, V2.address, onlink=True) in spec(blocks=(B3,)).routes


def test_forwarding_sysctls_include_the_device() -> None:
    values: dict[str, str] = {}

    def ensure(key: str, value: str) -> bool:
        changed = values.get(key) != value
        values[key] = value
        return changed

    assert f"net/ipv4/conf/{VX}/rp_filter=2" in node.ensure_forwarding(spec(), ensure)
    assert node.ensure_forwarding(spec(), ensure) == []


# -- property: plan, apply, plan again = nothing ---------------------------------------------

HOSTS = [ADDR(f"192.168.1.{i}") for i in (1, 2, 3, 4)]
MACS = [MAC, V2.mac, V3.mac, "02:00:00:00:00:04"]
VTEP_ADDRESSES = [ADDR(a) for a in ("10.32.2.1", "10.32.3.1", "10.32.4.1", "10.32.1.1")]
BLOCKS = [B2, B3, NET("10.32.4.0/24"), NET("10.32.1.0/24"), NET("10.32.0.0/16")]
VTEPS = st.builds(Vtep, st.sampled_from(VTEP_ADDRESSES), st.sampled_from(MACS),
                  st.sampled_from(HOSTS))  # fmt: skip


@st.composite
def desired_specs(draw: st.DrawFn) -> NodeSpec:
    vteps = draw(st.lists(VTEPS, max_size=4))
    fast = draw(st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(VTEP_ADDRESSES)),
                         max_size=3))  # fmt: skip
    fd = Fastdp(VX, FASTDP_VNI, FASTDP_PORT, LOCAL, MAC, frozenset(vteps), frozenset(fast))
    blocks = draw(st.sets(st.sampled_from(BLOCKS), max_size=4))
    return spec(fd, blocks=tuple(blocks))


@st.composite
def observed_states(draw: st.DrawFn) -> Observed:
    found = empty()
    links = dict(found.links)
    if draw(st.booleans()):
        info = draw(st.sampled_from([INFO, replace(INFO, vni=1), replace(INFO, learning=True)]))
        links[VX] = device(
            up=draw(st.booleans()), info=info, mtu=draw(st.sampled_from([1376, 1500]))
        )
    neighbours = draw(st.lists(st.builds(Neighbour, st.sampled_from(VTEP_ADDRESSES),
                      st.sampled_from(MACS)), unique_by=lambda n: n.address))  # fmt: skip
    fdb = draw(st.lists(st.builds(FdbEntry, st.sampled_from(MACS), st.sampled_from(HOSTS)),
                        unique=True))  # fmt: skip
    devices = st.sampled_from([TUN, VX] if VX in links else [TUN])
    gateway = st.sampled_from([None, *VTEP_ADDRESSES])
    route = st.builds(Route, st.sampled_from(BLOCKS), devices, gateway, st.booleans())
    routes = draw(st.lists(route, unique_by=lambda r: r.destination, max_size=4))
    on_device = VX in links and links[VX].up
    return replace(found, links=links, routes=tuple(routes),
                   neighbours=tuple(neighbours) if on_device else (),
                   fdb=tuple(fdb) if VX in links else ())  # fmt: skip


@settings(max_examples=300)
@given(desired_specs(), observed_states())
def test_plan_apply_plan_is_idempotent(desired: NodeSpec, observed: Observed) -> None:
    after = model(observed, node.plan(desired, observed))
    assert node.plan(desired, after) == []
    assert desired.fastdp is not None
    vteps = usable(desired.fastdp, desired.local_blocks)
    assert set(after.neighbours) == {Neighbour(v.address, v.mac) for v in vteps}
    assert set(after.fdb) == {FdbEntry(v.mac, v.host) for v in vteps}
    assert set(after.routes) == set(desired.routes)
    assert after.links[VX] == device()
