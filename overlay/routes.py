"""The routes the node owns in the main table (protocol RTPROT_WEAVE_PY), planned pure.

One route per remote block: ``dev <tun>`` (the sleeve), or ``via <vtep> dev <vxlan> onlink``
while the block's node is on the fast path; one ``<vtep>/32 dev <vxlan>`` per fast-path peer
(its probes ride it, whatever path its blocks take). Two rules keep them harmless:

- none lies inside a local block: the same prefix would replace the bridge's route, a longer
  one would win over it, and either would cut the node's own pods off (a shorter one loses to
  it: harmless);
- no fast-path route holds an underlay address (ours or a peer's VTEP host): the VXLAN
  packets themselves would be routed into the VXLAN device. Such a block takes the sleeve.

A block that changes path is one route replace (NLM_F_REPLACE), never a removal and an
addition: packets always find a route.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from overlay.netdev import Route


@dataclass(frozen=True)
class AddRoute:
    """Install ``route`` (replacing any of ours to its destination)."""

    route: Route


@dataclass(frozen=True)
class RemoveRoute:
    """Remove ``route``."""

    route: Route


@dataclass(frozen=True)
class FastRoutes:
    """The fast path's part of the routes: ``device`` the VXLAN device, ``vias`` the remote
    blocks routed via a VTEP, ``vteps`` the VTEPs that get a /32, ``underlay`` the addresses
    no fast-path route may hold."""

    device: str
    vias: Mapping[IPv4Network, IPv4Address] = field(default_factory=dict)
    vteps: frozenset[IPv4Address] = frozenset()
    underlay: frozenset[IPv4Address] = frozenset()

    def allows(self, destination: IPv4Network) -> bool:
        """Whether a fast-path route to ``destination`` holds no underlay address."""
        return not any(address in destination for address in self.underlay)


def wanted(
    tun: str,
    local: Sequence[IPv4Network],
    blocks: Iterable[IPv4Network],
    fast: FastRoutes | None = None,
) -> list[Route]:
    """Our routes, in address order: one per remote block outside ``local`` (the bridge's
    blocks), and with ``fast`` the VTEPs' /32s (a block's own route wins over a VTEP's)."""
    routes: dict[IPv4Network, Route] = {}
    for block in blocks:
        if not _inside(block, local):
            routes[block] = _block_route(block, tun, fast)
    for vtep in fast.vteps if fast is not None else ():
        host = IPv4Network(vtep)
        if not _inside(host, local) and fast is not None and fast.allows(host):
            routes.setdefault(host, Route(host, fast.device))
    return sorted(routes.values(), key=route_key)


def _block_route(block: IPv4Network, tun: str, fast: FastRoutes | None) -> Route:
    via = fast.vias.get(block) if fast is not None else None
    if fast is None or via is None or not fast.allows(block):
        return Route(block, tun)
    return Route(block, fast.device, via, onlink=True)


def _inside(block: IPv4Network, local: Sequence[IPv4Network]) -> bool:
    return any(block.subnet_of(net) for net in local)


def changes(want: Iterable[Route], have: Collection[Route]) -> list[AddRoute | RemoveRoute]:
    """The changes from ``have`` (ours in the kernel) to ``want``: removals of what is not
    wanted, then one replace per destination whose wanted route is missing. A destination's
    route that differs is replaced, not removed first; a second one of ours to a destination
    whose wanted route is there is removed."""
    wanted_by = {route.destination: route for route in want}
    found = set(have)
    stale = [
        route
        for route in found
        if route.destination not in wanted_by
        or (route != wanted_by[route.destination] and wanted_by[route.destination] in found)
    ]
    missing = [route for route in wanted_by.values() if route not in found]
    return [RemoveRoute(r) for r in sorted(stale, key=route_key)] + [
        AddRoute(r) for r in sorted(missing, key=route_key)
    ]


def route_key(route: Route) -> tuple[int, int, str, int]:
    """Address order (then device and gateway), for plans and views."""
    gateway = int(route.gateway) if route.gateway is not None else -1
    return (
        int(route.destination.network_address),
        route.destination.prefixlen,
        route.device,
        gateway,
    )
