"""Host network state the agent owns, reconciled level-triggered.

``plan(desired, observed)`` is pure: it compares what the node should look like with what the
kernel reports and returns the changes. ``apply`` performs them through ``overlay.netlink``.
Running the pair again right after is a no-op, so a restarted agent converges to the same
state without errors or duplicates.

Owned here: the bridge (the node's gateway address on it), the TUN's MTU and state, one route
per remote block ``dev <tun>`` (protocol RTPROT_WEAVE_PY), and the forwarding sysctls.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from overlay import netlink
from overlay.netlink import Link, Netlink, Route


@dataclass(frozen=True)
class NodeSpec:
    bridge: str
    tun: str
    mtu: int
    gso_max_size: int
    gateways: tuple[ipaddress.IPv4Interface, ...]
    remote_blocks: frozenset[ipaddress.IPv4Network]


@dataclass(frozen=True)
class Observed:
    links: dict[str, Link]
    bridge_addresses: tuple[ipaddress.IPv4Interface, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class CreateBridge:
    name: str


@dataclass(frozen=True)
class SetLink:
    name: str
    mtu: int | None = None
    up: bool | None = None
    gso_max_size: int | None = None


@dataclass(frozen=True)
class AddAddress:
    device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class RemoveAddress:
    device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class AddRoute:
    route: Route


@dataclass(frozen=True)
class RemoveRoute:
    route: Route


Action = CreateBridge | SetLink | AddAddress | RemoveAddress | AddRoute | RemoveRoute


def plan(desired: NodeSpec, observed: Observed) -> list[Action]:
    actions: list[Action] = []
    bridge = observed.links.get(desired.bridge)
    if bridge is None:
        actions.append(CreateBridge(desired.bridge))
    actions += _link_changes(desired.bridge, bridge, desired.mtu, None)
    tun = observed.links.get(desired.tun)
    actions += _link_changes(desired.tun, tun, desired.mtu, desired.gso_max_size)
    have = set(observed.bridge_addresses)
    want = set(desired.gateways)
    actions += [AddAddress(desired.bridge, a) for a in sorted(want - have)]
    actions += [RemoveAddress(desired.bridge, a) for a in sorted(have - want)]
    want_routes = {Route(block, desired.tun) for block in desired.remote_blocks}
    have_routes = set(observed.routes)
    actions += [RemoveRoute(r) for r in sorted(have_routes - want_routes, key=_route_key)]
    actions += [AddRoute(r) for r in sorted(want_routes - have_routes, key=_route_key)]
    return actions


def _link_changes(name: str, link: Link | None, mtu: int, gso: int | None) -> list[Action]:
    if link is None:
        return [SetLink(name, mtu=mtu, up=True, gso_max_size=gso)]
    change = SetLink(
        name,
        mtu=mtu if link.mtu != mtu else None,
        up=True if not link.up else None,
        gso_max_size=gso if gso is not None and link.gso_max_size != gso else None,
    )
    return [change] if change != SetLink(name) else []


def _route_key(route: Route) -> tuple[int, int, str]:
    return (int(route.destination.network_address), route.destination.prefixlen, route.device)


def observe(nl: Netlink, desired: NodeSpec) -> Observed:
    links = {link.name: link for link in nl.list_links()}
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    if desired.bridge in links:
        addresses = tuple(nl.list_addresses(desired.bridge))
    return Observed(links, addresses, tuple(nl.list_routes()))


def apply(nl: Netlink, actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, CreateBridge):
            nl.ensure_bridge(action.name)
        elif isinstance(action, SetLink):
            nl.set_link(action.name, mtu=action.mtu, up=action.up, gso_max_size=action.gso_max_size)
        elif isinstance(action, AddAddress):
            nl.ensure_address(action.device, action.address)
        elif isinstance(action, RemoveAddress):
            nl.remove_address(action.device, action.address)
        elif isinstance(action, AddRoute):
            nl.ensure_route(action.route)
        else:
            nl.remove_route(action.route)


@dataclass
class Reconciler:
    """Owns a Netlink handle and the last applied plan; ``run`` is safe to call any time."""

    nl: Netlink
    applied: list[Action] = field(default_factory=list)

    def run(self, desired: NodeSpec) -> list[Action]:
        actions = plan(desired, observe(self.nl, desired))
        apply(self.nl, actions)
        self.applied = actions
        return actions


def ensure_forwarding(desired: NodeSpec) -> list[str]:
    """Sysctls of the caller's namespace: forwarding on, loose reverse-path filter on ours."""
    changed = []
    wanted = {
        "net.ipv4.ip_forward": "1",
        f"net/ipv4/conf/{desired.tun}/rp_filter": "2",
        f"net/ipv4/conf/{desired.bridge}/rp_filter": "2",
    }
    for key, value in wanted.items():
        if netlink.ensure_sysctl(key, value):
            changed.append(f"{key}={value}")
    return changed
