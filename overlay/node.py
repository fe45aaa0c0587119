"""Host network state the agent owns, reconciled level-triggered.

``plan(desired, observed)`` is pure: it compares what the node should look like with what the
kernel reports and returns the changes. ``apply`` performs them through the netlink seam
(``overlay.kernel``), one request per change, with the link indexes the observation holds.
Running the pair again right after is a no-op, so a restarted agent converges to the same
state without errors or duplicates.

Owned here: the bridge (the node's gateway address on it, hairpin on its ports), the TUN's MTU
and state, one route per remote block ``dev <tun>`` (protocol RTPROT_WEAVE_PY; none inside a
local block, whose route is the bridge's and must win), the nftables
table ``NAT_TABLE`` (masquerade of pod egress leaving the cluster range), and the forwarding
sysctls. Other tables, routes and links are never read for a change nor touched.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from overlay.kernel import NetlinkHandle
from overlay.netdev import Bridge, Link, LinkChange, Masquerade, NatTable, NetlinkFailure, Route
from overlay.sysctl import ensure_sysctl

NAT_TABLE = "weave-py"  # our nftables table (family ip), the only one the agent creates


@dataclass(frozen=True)
class NodeSpec:
    """What the node should look like: bridge and TUN (with their MTU, the TUN's GSO size),
    the gateways on the bridge and the remote blocks routed into the TUN; hairpin on every port
    of the bridge (a pod reaches itself through a Service); ``masquerade``: the cluster range,
    whose packets to anywhere outside it leave with the node's address (None: no NAT table)."""

    bridge: str
    tun: str
    mtu: int
    gso_max_size: int
    gateways: tuple[ipaddress.IPv4Interface, ...]
    remote_blocks: frozenset[ipaddress.IPv4Network]
    hairpin: bool = False
    masquerade: ipaddress.IPv4Network | None = None

    @property
    def nat_rules(self) -> tuple[Masquerade, ...]:
        """The rules our NAT table holds: pods to outside the cluster range, nothing else."""
        cluster = self.masquerade
        return (Masquerade(cluster, cluster),) if cluster is not None else ()


@dataclass(frozen=True)
class Observed:
    """What the kernel reports: every link by name, the bridge's addresses, our routes, our
    NAT table (None: there is none)."""

    links: dict[str, Link]
    bridge_addresses: tuple[ipaddress.IPv4Interface, ...]
    routes: tuple[Route, ...]
    nat: NatTable | None = None


@dataclass(frozen=True)
class CreateBridge:
    """Create the bridge ``name``."""

    name: str


@dataclass(frozen=True)
class SetLink:
    """Set what is not None on link ``name``."""

    name: str
    mtu: int | None = None
    up: bool | None = None
    gso_max_size: int | None = None


@dataclass(frozen=True)
class Hairpin:
    """Turn hairpin on for ``port``, a port of the bridge (nothing when it has gone since)."""

    port: str


@dataclass(frozen=True)
class AddAddress:
    """Add ``address`` to ``device``."""

    device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class RemoveAddress:
    """Remove ``address`` from ``device``."""

    device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class AddRoute:
    """Install ``route`` (replacing any of ours to its destination)."""

    route: Route


@dataclass(frozen=True)
class RemoveRoute:
    """Remove ``route``."""

    route: Route


@dataclass(frozen=True)
class ReplaceNat:
    """Make our NAT table exactly ``rules`` (one transaction)."""

    rules: tuple[Masquerade, ...]


@dataclass(frozen=True)
class RemoveNat:
    """Delete our NAT table."""


Action = (
    CreateBridge | SetLink | Hairpin | AddAddress | RemoveAddress | AddRoute | RemoveRoute
    | ReplaceNat | RemoveNat
)  # fmt: skip


def plan(desired: NodeSpec, observed: Observed) -> list[Action]:
    """The changes that take ``observed`` to ``desired`` (pure; nothing for links that are
    neither ours nor ports of our bridge, nothing for other tables)."""
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
    want_routes = set(_remote_routes(desired))
    have_routes = set(observed.routes)
    actions += [RemoveRoute(r) for r in sorted(have_routes - want_routes, key=_route_key)]
    actions += [AddRoute(r) for r in sorted(want_routes - have_routes, key=_route_key)]
    if desired.hairpin and bridge is not None:
        actions += [Hairpin(p.name) for p in _ports(observed, bridge) if not p.hairpin]
    return actions + _nat_changes(desired.nat_rules, observed.nat)


def _remote_routes(desired: NodeSpec) -> list[Route]:
    """A route into the TUN per remote block, none inside a local block: the same prefix
    would replace the bridge's route, a longer one would win over it, and either would cut
    the node's own pods off (a shorter one loses to it: harmless)."""
    local = [gateway.network for gateway in desired.gateways]
    return [
        Route(block, desired.tun)
        for block in desired.remote_blocks
        if not any(block.subnet_of(net) for net in local)
    ]


def _ports(observed: Observed, bridge: Link) -> list[Link]:
    ports = (link for link in observed.links.values() if link.master == bridge.index)
    return sorted(ports, key=lambda link: link.index)


def _nat_changes(rules: tuple[Masquerade, ...], table: NatTable | None) -> list[Action]:
    if not rules:
        return [RemoveNat()] if table is not None else []
    return [] if table == NatTable(True, rules) else [ReplaceNat(rules)]


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


def observe(nl: NetlinkHandle, desired: NodeSpec) -> Observed:
    """One look at the node: every link, the bridge's addresses, our routes (three dumps) and
    our NAT table (one request, three when it is there)."""
    links = {link.name: link for link in nl.list_links()}
    names = {link.index: link.name for link in links.values()}
    bridge = links.get(desired.bridge)
    addresses = tuple(nl.list_addresses_index(bridge.index)) if bridge is not None else ()
    routes = tuple(
        Route(e.destination, names.get(e.index, ""), e.gateway) for e in nl.list_route_entries()
    )
    return Observed(links, addresses, routes, nl.nat_table(NAT_TABLE))


def apply(nl: NetlinkHandle, observed: Observed, actions: list[Action]) -> None:
    """Execute ``actions`` (planned from ``observed``): one request each, links addressed by
    the indexes ``observed`` holds; only a created bridge is read back, for its index."""
    indexes = {name: link.index for name, link in observed.links.items()}
    for action in actions:
        _execute(nl, indexes, action)


def _execute(nl: NetlinkHandle, indexes: dict[str, int], action: Action) -> None:
    if isinstance(action, CreateBridge):
        _tolerate(lambda: nl.add_link(Bridge(action.name)), errno.EEXIST)
        indexes[action.name] = nl.index(action.name)
    elif isinstance(action, SetLink):
        change = LinkChange(mtu=action.mtu, up=action.up, gso_max_size=action.gso_max_size)
        nl.set_link_index(_index(indexes, action.name), change)
    elif isinstance(action, Hairpin):  # a pod's port may go (DEL) between look and change
        port = LinkChange(hairpin=True)
        index = _index(indexes, action.port)
        _tolerate(lambda: nl.set_link_index(index, port), errno.ENODEV, errno.EOPNOTSUPP)
    elif isinstance(action, AddAddress):
        index = _index(indexes, action.device)
        _tolerate(lambda: nl.add_address_index(index, action.address), errno.EEXIST)
    elif isinstance(action, RemoveAddress):
        index = _index(indexes, action.device)
        _tolerate(lambda: nl.remove_address_index(index, action.address), errno.EADDRNOTAVAIL)
    elif isinstance(action, AddRoute | RemoveRoute):
        _execute_route(nl, indexes, action)
    elif isinstance(action, ReplaceNat):
        nl.replace_nat_table(NAT_TABLE, action.rules)
    else:
        _tolerate(lambda: nl.remove_nat_table(NAT_TABLE), errno.ENOENT)


def _execute_route(
    nl: NetlinkHandle, indexes: dict[str, int], action: AddRoute | RemoveRoute
) -> None:
    r = action.route
    if isinstance(action, AddRoute):
        nl.replace_route_index(r.destination, _index(indexes, r.device), r.gateway)
    else:
        index = _index(indexes, r.device)
        _tolerate(lambda: nl.remove_route_index(r.destination, index), errno.ESRCH)


def _index(indexes: dict[str, int], name: str) -> int:
    if name not in indexes:
        raise NetlinkFailure(f"link {name}", errno.ENODEV)
    return indexes[name]


def _tolerate(request: Callable[[], None], *codes: int) -> None:
    """Run ``request``; the kernel saying one of ``codes`` means it is already done."""
    try:
        request()
    except NetlinkFailure as exc:
        if exc.code not in codes:
            raise


@dataclass
class Reconciler:
    """Owns a netlink handle and the last applied plan; ``run`` is safe to call any time and
    costs one observation plus one request per change."""

    nl: NetlinkHandle
    applied: list[Action] = field(default_factory=list)
    routes: tuple[Route, ...] = ()  # ours after the last run, in address order

    def run(self, desired: NodeSpec) -> list[Action]:
        """Bring the node to ``desired``; the changes it took."""
        observed = observe(self.nl, desired)
        actions = plan(desired, observed)
        apply(self.nl, observed, actions)
        self.applied = actions
        self.routes = tuple(sorted(_remote_routes(desired), key=_route_key))
        return actions


def ensure_forwarding(
    desired: NodeSpec, ensure: Callable[[str, str], bool] = ensure_sysctl
) -> list[str]:
    """Sysctls of the caller's namespace: forwarding on, loose reverse-path filter on ours
    (``ensure`` sets one and says whether it changed). The settings changed, as key=value."""
    wanted = {
        "net.ipv4.ip_forward": "1",
        f"net/ipv4/conf/{desired.tun}/rp_filter": "2",
        f"net/ipv4/conf/{desired.bridge}/rp_filter": "2",
    }
    return [f"{key}={value}" for key, value in wanted.items() if ensure(key, value)]
