"""Host network state the agent owns, reconciled level-triggered.

``plan(desired, observed)`` is pure: it compares what the node should look like with what the
kernel reports and returns the changes. ``apply`` performs them through the netlink seam
(``overlay.kernel``), one request per change, with the link indexes the observation holds.
Running the pair again right after is a no-op, so a restarted agent converges to the same
state without errors or duplicates.

Owned here: the bridge (the node's gateway address on it, hairpin on its ports), the TUN's MTU
and state, the anchor addresses of TUN and VXLAN device (below), our routes
(``overlay.routes``: one per remote block, into the TUN or via a VTEP; protocol
RTPROT_WEAVE_PY), with ``NodeSpec.fastdp`` the fast path's VXLAN device, neighbours and
forwarding entries (``overlay.fastdp``), the nftables table ``NAT_TABLE`` (masquerade of pod
egress leaving the cluster range; the fast path's UDP guard), and the forwarding sysctls.
Other tables, routes and links are never read for a change nor touched.

Anchors: the TUN and the VXLAN device each hold the node's first gateway as a /32 of scope
host. The kernel's reverse-path check drops a packet that arrives on a device without any
address unless its source is routed back through that same device, loose mode or not; while
two nodes switch a peer between the fast path and the sleeve a moment apart, packets arrive
on the device the receiver's route does not name. A host-scope address is never picked as the
source of a packet that leaves the host, so the sources of host traffic do not change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from overlay import routes
from overlay.actions import (
    NAT_TABLE,
    Action,
    AddAddress,
    CreateBridge,
    Hairpin,
    RemoveAddress,
    RemoveNat,
    ReplaceNat,
    SetLink,
    execute,
)
from overlay.fastdp import (
    CreateVxlan,
    Fastdp,
    RemoveLink,
    fast_routes,
    recreate,
    table_changes,
    wanted_device,
)
from overlay.kernel import NetlinkHandle
from overlay.netdev import (
    RT_SCOPE_HOST,
    FdbEntry,
    Link,
    Masquerade,
    NatTable,
    Neighbour,
    Route,
    UdpGuard,
)
from overlay.sysctl import ensure_sysctl


@dataclass(frozen=True)
class NodeSpec:
    """What the node should look like: bridge and TUN (with their MTU, the TUN's GSO size),
    the gateways on the bridge and the remote blocks routed into the TUN; hairpin on every port
    of the bridge (a pod reaches itself through a Service); ``masquerade``: the cluster range,
    whose packets to anywhere outside it leave with the node's address; ``fastdp``: the kernel
    fast path (None: nothing about a VXLAN device is planned). Our NAT table exists while it
    masquerades or guards the fast path's port."""

    bridge: str
    tun: str
    mtu: int
    gso_max_size: int
    gateways: tuple[ipaddress.IPv4Interface, ...]
    remote_blocks: frozenset[ipaddress.IPv4Network]
    hairpin: bool = False
    masquerade: ipaddress.IPv4Network | None = None
    fastdp: Fastdp | None = None

    @property
    def nat_rules(self) -> tuple[Masquerade, ...]:
        """The rules our NAT table holds: pods to outside the cluster range, nothing else."""
        cluster = self.masquerade
        return (Masquerade(cluster, cluster),) if cluster is not None else ()

    @property
    def guard(self) -> UdpGuard | None:
        """Our table's input rule: the fast path's port open to the peers' hosts only."""
        return self.fastdp.guard if self.fastdp is not None else None

    @property
    def anchors(self) -> dict[str, frozenset[ipaddress.IPv4Interface]]:
        """The addresses TUN and VXLAN device hold (see the module's notes): the first
        gateway as a /32, none before there is one."""
        devices = [self.tun] + ([self.fastdp.device] if self.fastdp is not None else [])
        first = frozenset(ipaddress.IPv4Interface(g.ip) for g in self.gateways[:1])
        return {device: first for device in devices}

    @property
    def local_blocks(self) -> list[ipaddress.IPv4Network]:
        """The blocks on the bridge (its gateways' networks)."""
        return [gateway.network for gateway in self.gateways]

    @property
    def routes(self) -> list[Route]:
        """Our routes, in address order (``overlay.routes``)."""
        local = self.local_blocks
        blocks = set(self.remote_blocks)
        fast = None
        if self.fastdp is not None:
            fast = fast_routes(self.fastdp, local)
            blocks.update(block for block, _ in self.fastdp.fast_blocks)
        return routes.wanted(self.tun, local, blocks, fast)


@dataclass(frozen=True)
class Observed:
    """What the kernel reports: every link by name, the bridge's addresses, our routes, our
    NAT table (None: there is none), the fast path device's permanent neighbours and
    forwarding entries (read only with ``NodeSpec.fastdp``, when the device is there)."""

    links: dict[str, Link]
    bridge_addresses: tuple[ipaddress.IPv4Interface, ...]
    routes: tuple[Route, ...]
    nat: NatTable | None = None
    neighbours: tuple[Neighbour, ...] = ()
    fdb: tuple[FdbEntry, ...] = ()
    anchors: dict[str, tuple[ipaddress.IPv4Interface, ...]] = field(default_factory=dict)


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
    found = observed.routes
    if desired.fastdp is not None:
        actions += _fastdp_changes(desired, desired.fastdp, observed)
        if RemoveLink(desired.fastdp.device) in actions:  # its routes go with it
            found = tuple(r for r in found if r.device != desired.fastdp.device)
    actions += _anchor_changes(desired, observed, actions)
    actions += routes.changes(desired.routes, found)
    if desired.hairpin and bridge is not None:
        actions += [Hairpin(p.name) for p in _ports(observed, bridge) if not p.hairpin]
    return actions + _nat_changes(desired.nat_rules, desired.guard, observed.nat)


def _fastdp_changes(desired: NodeSpec, fastdp: Fastdp, observed: Observed) -> list[Action]:
    """The device (made again when made otherwise, then its drift), then its neighbours and
    forwarding entries (none observed on a device made anew)."""
    link = observed.links.get(fastdp.device)
    if link is None or link.kind != "vxlan" or recreate(fastdp, link):
        made: list[Action] = (
            [RemoveLink(fastdp.device)] if link is not None and link.kind == "vxlan" else []
        )
        created = wanted_device(fastdp, desired.mtu)
        made += [CreateVxlan(created), SetLink(fastdp.device, up=True)]
        return [*made, *table_changes(fastdp, desired.local_blocks, (), ())]
    changes = _link_changes(fastdp.device, link, desired.mtu, None, fastdp.mac)
    tables = table_changes(fastdp, desired.local_blocks, observed.neighbours, observed.fdb)
    return [*changes, *tables]


def _anchor_changes(desired: NodeSpec, observed: Observed, earlier: list[Action]) -> list[Action]:
    """The anchors of TUN and VXLAN device made exact (a device made anew holds none)."""
    out: list[Action] = []
    for device, want in desired.anchors.items():
        made = any(isinstance(a, CreateVxlan) and a.device.name == device for a in earlier)
        have = set() if made else set(observed.anchors.get(device, ()))
        out += [AddAddress(device, a, RT_SCOPE_HOST) for a in sorted(want - have)]
        out += [RemoveAddress(device, a) for a in sorted(have - want)]
    return out


def _ports(observed: Observed, bridge: Link) -> list[Link]:
    ports = (link for link in observed.links.values() if link.master == bridge.index)
    return sorted(ports, key=lambda link: link.index)


def _nat_changes(
    rules: tuple[Masquerade, ...], guard: UdpGuard | None, table: NatTable | None
) -> list[Action]:
    if not rules and guard is None:
        return [RemoveNat()] if table is not None else []
    return [] if table == NatTable(True, rules, guard) else [ReplaceNat(rules, guard)]


def _link_changes(
    name: str, link: Link | None, mtu: int, gso: int | None, mac: str | None = None
) -> list[Action]:
    if link is None:
        return [SetLink(name, mtu=mtu, up=True, gso_max_size=gso, mac=mac)]
    change = SetLink(
        name,
        mtu=mtu if link.mtu != mtu else None,
        up=True if not link.up else None,
        gso_max_size=gso if gso is not None and link.gso_max_size != gso else None,
        mac=mac if mac is not None and link.mac != mac else None,
    )
    return [change] if change != SetLink(name) else []


def observe(nl: NetlinkHandle, desired: NodeSpec) -> Observed:
    """One look at the node: every link, the bridge's addresses, our routes (three dumps), our
    NAT table (one request, three when it is there), with the fast path the device's
    neighbours and forwarding entries (two dumps, when it is there)."""
    links = {link.name: link for link in nl.list_links()}
    names = {link.index: link.name for link in links.values()}
    bridge = links.get(desired.bridge)
    addresses = tuple(nl.list_addresses_index(bridge.index)) if bridge is not None else ()
    found = tuple(
        Route(e.destination, names.get(e.index, ""), e.gateway, e.onlink)
        for e in nl.list_route_entries()
    )
    anchors = {
        device: tuple(nl.list_addresses_index(links[device].index))
        for device in desired.anchors
        if device in links
    }
    observed = Observed(links, addresses, found, nl.nat_table(NAT_TABLE), anchors=anchors)
    device = links.get(desired.fastdp.device) if desired.fastdp is not None else None
    if device is None or device.kind != "vxlan":
        return observed
    neighbours = tuple(nl.list_neighbours_index(device.index))
    return replace(observed, neighbours=neighbours, fdb=tuple(nl.list_fdb_index(device.index)))


def apply(nl: NetlinkHandle, observed: Observed, actions: list[Action]) -> None:
    """Execute ``actions`` (planned from ``observed``): one request each, links addressed by
    the indexes ``observed`` holds; only a created link is read back, for its index."""
    indexes = {name: link.index for name, link in observed.links.items()}
    for action in actions:
        execute(nl, indexes, action)


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
        self.routes = tuple(desired.routes)
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
    if desired.fastdp is not None:
        wanted[f"net/ipv4/conf/{desired.fastdp.device}/rp_filter"] = "2"
    return [f"{key}={value}" for key, value in wanted.items() if ensure(key, value)]
