"""The kernel fast path's state on a node: one VXLAN device and, per fast-capable remote peer,
a permanent neighbour (its VTEP address at its VTEP MAC) and a permanent forwarding entry (that
MAC at its underlay address). Planned pure here, like the rest of the node (``overlay.node``
calls in); the routes are ``overlay.routes``'.

The device: VNI, local address and UDP port as ``Fastdp`` says, learning off, no remote (every
frame goes where its MAC's forwarding entry says, none goes anywhere else), the overlay MTU,
our VTEP MAC. A VXLAN device of that name made otherwise is removed and made again (the kernel
cannot change those settings; its neighbours, entries and routes go with it and are planned
anew). A link of that name of another kind is not ours: creating the device fails (EEXIST).

Only VTEPs that cannot mislead the kernel are installed (``usable``): one whose address or MAC
another VTEP also claims, that has our MAC, whose address is an underlay address (ours or a
peer's host) or lies in one of our blocks (a gateway of ours: the kernel refuses a route via
it), or whose host is our own address, is left out, and its peer's blocks take the sleeve.

Everything stays when the agent exits; ``kept_fastdp`` reads what a previous agent left.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from overlay.kernel import NetlinkHandle, tolerating
from overlay.netdev import FdbEntry, Link, Neighbour, UdpGuard, Vxlan, VxlanInfo
from overlay.routes import FastRoutes
from overlay.vtep import Vtep


@dataclass(frozen=True)
class Fastdp:
    """The fast path as the node should have it: the VXLAN ``device`` (``vni``, UDP ``port``,
    sending from ``local``, our underlay address, with our VTEP ``mac``); ``vteps``: the
    fast-capable remote peers; ``fast_blocks``: remote blocks routed via a VTEP (each with the
    VTEP it goes via; the other remote blocks go into the TUN); ``spaces``: each fast-capable
    peer's host with a block of its (the inner sources its VXLAN frames may carry, whichever
    path we chose for it, since the peer chooses its own)."""

    device: str
    vni: int
    port: int
    local: IPv4Address
    mac: str
    vteps: frozenset[Vtep] = frozenset()
    fast_blocks: frozenset[tuple[IPv4Network, IPv4Address]] = frozenset()
    spaces: frozenset[tuple[IPv4Address, IPv4Network]] = frozenset()

    @property
    def guard(self) -> UdpGuard:
        """Our table's input rule: VXLAN datagrams only from the peers' underlay addresses,
        each carrying frames from that peer's ``spaces`` or its host address alone."""
        hosts = {v.host for v in self.vteps}
        own = {(host, IPv4Network(host)) for host in hosts}
        return UdpGuard.of(self.port, own | {s for s in self.spaces if s[0] in hosts})


@dataclass(frozen=True)
class KeptFastdp:
    """What a previous agent left: ``routes`` of ours via the device (block -> VTEP) and the
    VTEPs its neighbours and forwarding entries describe."""

    routes: dict[IPv4Network, IPv4Address]
    vteps: frozenset[Vtep]


@dataclass(frozen=True)
class CreateVxlan:
    """Create the fast path's device (down)."""

    device: Vxlan


@dataclass(frozen=True)
class RemoveLink:
    """Delete link ``name`` (its neighbours, entries and routes go with it)."""

    name: str


@dataclass(frozen=True)
class ReplaceNeighbour:
    """Make ``neighbour`` a permanent entry of ``device`` (created or replaced)."""

    device: str
    neighbour: Neighbour


@dataclass(frozen=True)
class RemoveNeighbour:
    """Remove the neighbour ``address`` of ``device``."""

    device: str
    address: IPv4Address


@dataclass(frozen=True)
class ReplaceFdb:
    """Make ``entry`` a forwarding entry of ``device`` (replacing its MAC's first one)."""

    device: str
    entry: FdbEntry


@dataclass(frozen=True)
class RemoveFdb:
    """Remove the forwarding entry ``entry`` of ``device``."""

    device: str
    entry: FdbEntry


FastdpAction = (
    CreateVxlan | RemoveLink | ReplaceNeighbour | RemoveNeighbour | ReplaceFdb | RemoveFdb
)


def usable(fastdp: Fastdp, local: Sequence[IPv4Network]) -> frozenset[Vtep]:
    """The VTEPs installed: none with an address or MAC another one claims too, our MAC, an
    underlay address or one in ``local`` (our blocks); none whose host is our own address."""
    addresses = Counter(vtep.address for vtep in fastdp.vteps)
    macs = Counter(vtep.mac for vtep in fastdp.vteps)
    underlay = underlay_addresses(fastdp)
    return frozenset(
        vtep
        for vtep in fastdp.vteps
        if addresses[vtep.address] == 1
        and macs[vtep.mac] == 1
        and vtep.mac != fastdp.mac
        and vtep.address not in underlay
        and vtep.host != fastdp.local
        and not any(vtep.address in net for net in local)
    )


def underlay_addresses(fastdp: Fastdp) -> frozenset[IPv4Address]:
    """Our address and every peer's host: no fast-path route may hold one."""
    return frozenset({fastdp.local, *(vtep.host for vtep in fastdp.vteps)})


def fast_routes(fastdp: Fastdp, local: Sequence[IPv4Network]) -> FastRoutes:
    """The fast path's part of the routes: blocks via installed VTEPs only (a block named
    twice goes into the TUN), the installed VTEPs' /32s."""
    installed = {vtep.address for vtep in usable(fastdp, local)}
    named = Counter(block for block, _ in fastdp.fast_blocks)
    vias = {
        block: via for block, via in fastdp.fast_blocks if via in installed and named[block] == 1
    }
    return FastRoutes(fastdp.device, vias, frozenset(installed), underlay_addresses(fastdp))


def wanted_device(fastdp: Fastdp, mtu: int) -> Vxlan:
    """The device as it is created."""
    return Vxlan(fastdp.device, fastdp.vni, fastdp.local, None, fastdp.port, False, fastdp.mac, mtu)


def recreate(fastdp: Fastdp, link: Link | None) -> bool:
    """Whether ``link`` is a VXLAN device made with other settings than ours (the kernel
    changes none of them on a live device)."""
    wanted = VxlanInfo(fastdp.vni, fastdp.local, fastdp.port, False)
    return link is not None and link.kind == "vxlan" and link.vxlan != wanted


def table_changes(
    fastdp: Fastdp,
    local: Sequence[IPv4Network],
    neighbours: Iterable[Neighbour],
    fdb: Iterable[FdbEntry],
) -> list[FastdpAction]:
    """Make the device's permanent neighbours and forwarding entries exactly the installed
    VTEPs': replacements first (a changed VTEP is one replace each), then removals."""
    device, vteps = fastdp.device, sorted(usable(fastdp, local), key=lambda v: v.address)
    have = {n.address: n.mac for n in neighbours}
    hosts: dict[str, list[IPv4Address]] = {}
    for entry in fdb:
        hosts.setdefault(entry.mac, []).append(entry.host)
    adds: list[FastdpAction] = [
        ReplaceNeighbour(device, Neighbour(v.address, v.mac))
        for v in vteps
        if have.get(v.address) != v.mac
    ]
    stale: list[FastdpAction] = []
    for vtep in sorted(vteps, key=lambda v: v.mac):
        found = hosts.pop(vtep.mac, [])
        if vtep.host not in found:
            adds.append(ReplaceFdb(device, FdbEntry(vtep.mac, vtep.host)))
            found = found[1:]  # the one the replace takes over
        stale += [RemoveFdb(device, FdbEntry(vtep.mac, h)) for h in found if h != vtep.host]
    wanted = {v.address for v in vteps}
    stale += [RemoveNeighbour(device, a) for a in sorted(have) if a not in wanted]
    stale += [RemoveFdb(device, FdbEntry(m, h)) for m in sorted(hosts) for h in hosts[m]]
    return adds + stale


def execute(nl: NetlinkHandle, index: Callable[[str], int], action: FastdpAction) -> None:
    """One request for ``action``; what is already done (gone, there) is no error."""
    if isinstance(action, CreateVxlan):
        nl.add_link(action.device)
    elif isinstance(action, RemoveLink):
        link = index(action.name)
        tolerating(lambda: nl.remove_link_index(link), errno.ENODEV)
    elif isinstance(action, ReplaceNeighbour):
        nl.replace_neighbour_index(index(action.device), action.neighbour)
    elif isinstance(action, RemoveNeighbour):
        link = index(action.device)
        tolerating(lambda: nl.remove_neighbour_index(link, action.address), errno.ENOENT)
    elif isinstance(action, ReplaceFdb):
        nl.replace_fdb_index(index(action.device), action.entry)
    else:
        link = index(action.device)
        tolerating(lambda: nl.remove_fdb_index(link, action.entry), errno.ENOENT)


def kept_fastdp(nl: NetlinkHandle, device: str) -> KeptFastdp:
    """What a previous agent left on ``device``: our routes via it with a gateway, and its
    neighbours joined to its forwarding entries by MAC (nothing when there is no device)."""
    link = nl.link(device)
    if link is None or link.kind != "vxlan":
        return KeptFastdp({}, frozenset())
    routes = {
        entry.destination: entry.gateway
        for entry in nl.list_route_entries()
        if entry.index == link.index and entry.gateway is not None
    }
    hosts: dict[str, IPv4Address] = {}
    for entry in nl.list_fdb_index(link.index):
        hosts.setdefault(entry.mac, entry.host)
    vteps = frozenset(
        Vtep(n.address, n.mac, hosts[n.mac])
        for n in nl.list_neighbours_index(link.index)
        if n.mac in hosts
    )
    return KeptFastdp(routes, vteps)
