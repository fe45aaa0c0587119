"""The netlink seam: what the agent asks of one network namespace's links, addresses, routes,
neighbours and VXLAN forwarding entries, and its own nftables table.

The values it speaks are in ``overlay.netdev``. Two implementations hold to it:
``overlay.netlink.Netlink`` (pyroute2, the real kernel) and ``overlay.fake_kernel`` (in memory,
for tests without root). One contract suite (tests/overlay/test_netlink_contract.py) runs the
same tests against both.

Theory of operation:

- The *primitives* of ``LinkTable``, ``AddressTable``, ``RouteTable`` and ``NeighbourTable``
  are one netlink request each. They address links by index, so a caller that has observed
  the namespace (a reconcile plan, a pod start) acts without reading anything again. A
  refusal is a ``NetlinkFailure`` carrying the kernel's errno, unchanged: EEXIST, ENODEV,
  ESRCH, EADDRNOTAVAIL, ENETDOWN...
- ``NetlinkHandle`` adds the idempotent operations by name (``ensure_*``, ``remove_*`` returning
  whether anything changed, ``list_*``), written once here on top of the primitives; both
  implementations inherit them by subclassing the Protocol.
- Routes this project installs carry protocol ``RTPROT_WEAVE_PY``, so listing and removing by
  default only ever touch our own routes in the main table.
- Neighbours and forwarding entries are permanent ones the caller puts there: no ARP, no
  learning, nothing ages them out. A link going down loses its neighbours (the kernel flushes
  even permanent ones) but a VXLAN device keeps its forwarding entries.
- nftables: ``NatTables`` reads, replaces and removes one table by name (family ip), and the
  agent only ever names its own (``overlay.node.NAT_TABLE``); other tables (kube-proxy's,
  iptables-nft's) are never read or changed. The table holds the masquerade chain and, when
  asked, the UDP guard's input chain; a replacement is one transaction, so packets see either
  the old table or the new one.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Protocol, Self, TypeVar

from overlay.netdev import (
    RTPROT_WEAVE_PY,
    Bridge,
    FdbEntry,
    Link,
    LinkChange,
    Masquerade,
    NatTable,
    Neighbour,
    NetlinkFailure,
    NewLink,
    Route,
    RouteEntry,
    UdpGuard,
    Veth,
    Vxlan,
)

T = TypeVar("T")


class LinkTable(Protocol):
    """The links of one namespace: one request per call."""

    def list_links(self) -> list[Link]:
        """Every link, by index."""

    def link(self, name: str) -> Link | None:
        """One link by name (the kernel looks it up; no dump); None when there is none."""

    def add_link(self, new: NewLink) -> None:
        """Create a link; EEXIST when a name is taken, EINVAL for an unknown master."""

    def set_link_index(self, index: int, change: LinkChange) -> None:
        """Set what ``change`` names on link ``index``; ENODEV when there is no such link,
        EOPNOTSUPP for ``hairpin`` on a link that is not a bridge port."""

    def set_link_by_name(self, name: str, change: LinkChange) -> None:
        """``set_link_index`` for a link known by name only (the kernel looks it up, still one
        request); ENODEV when there is none."""

    def remove_link_index(self, index: int) -> None:
        """Delete link ``index`` (a veth takes its peer along); ENODEV when gone."""


class AddressTable(Protocol):
    """The IPv4 addresses of one namespace's links: one request per call."""

    def list_addresses_index(self, index: int) -> list[IPv4Interface]:
        """The addresses of link ``index`` (none for an unknown index)."""

    def add_address_index(
        self, index: int, address: IPv4Interface, scope: int | None = None
    ) -> None:
        """Add ``address`` (with ``scope``, e.g. RT_SCOPE_HOST; None: the kernel's default,
        global); EEXIST when it is there, ENODEV without the link."""

    def remove_address_index(self, index: int, address: IPv4Interface) -> None:
        """Delete ``address``; EADDRNOTAVAIL when it is not there."""


class RouteTable(Protocol):
    """The IPv4 main routing table of one namespace: one request per call."""

    def list_route_entries(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[RouteEntry]:
        """Unicast routes of the main table installed by ``protocol`` (None: every one)."""

    def replace_route_index(
        self,
        destination: IPv4Network,
        index: int,
        gateway: IPv4Address | None = None,
        protocol: int = RTPROT_WEAVE_PY,
        onlink: bool = False,
    ) -> None:
        """Install a route, replacing any to the same destination; ENODEV without the link,
        ENETDOWN when it is down, ENETUNREACH when ``gateway`` is not on its link. ``onlink``
        (RTNH_F_ONLINK): the gateway is taken to be on the link whatever its addresses, EINVAL
        when it is an address of this namespace."""

    def remove_route_index(
        self, destination: IPv4Network, index: int, protocol: int = RTPROT_WEAVE_PY
    ) -> None:
        """Delete the route to ``destination`` via link ``index`` installed by ``protocol``;
        ESRCH when there is none."""

    def route_index(self, destination: IPv4Address) -> int | None:
        """The index of the link the kernel would send to ``destination`` on; None when it
        is unreachable."""


class NeighbourTable(Protocol):
    """Permanent IPv4 neighbours of a link and forwarding entries of a VXLAN device: one
    request per call."""

    def list_neighbours_index(self, index: int) -> list[Neighbour]:
        """The permanent IPv4 neighbours of link ``index`` (none for an unknown index)."""

    def replace_neighbour_index(self, index: int, neighbour: Neighbour) -> None:
        """Make ``neighbour.address`` permanently ``neighbour.mac`` on link ``index``, created
        or replaced; ENODEV without the link."""

    def remove_neighbour_index(self, index: int, address: IPv4Address) -> None:
        """Delete the neighbour ``address`` of link ``index``; ENOENT when there is none."""

    def list_fdb_index(self, index: int) -> list[FdbEntry]:
        """The forwarding entries of VXLAN link ``index`` that name a destination host."""

    def replace_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """Make frames to ``entry.mac`` go to ``entry.host`` (permanent, on the device itself:
        NTF_SELF), created or replaced; ENODEV without the link."""

    def remove_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """Delete the forwarding entry of ``entry.mac`` to ``entry.host``; ENOENT when the MAC
        has none (one the MAC holds to another host stays, and no error says so)."""


class NatTables(Protocol):
    """nftables tables (family ip) of one namespace, by name; callers name only their own."""

    def nat_table(self, name: str) -> NatTable | None:
        """Table ``name`` as the kernel reports it; None when there is none. One request when
        it is missing, three when it is there (the table, our chain, a dump of its rules), two
        more with a guard (its chain, its set's elements)."""

    def replace_nat_table(
        self, name: str, rules: Sequence[Masquerade], guard: UdpGuard | None = None
    ) -> None:
        """Make table ``name`` hold exactly our postrouting NAT chain with ``rules`` (maybe
        none) and, with ``guard``, the input chain with its rule, created when missing,
        whatever it held before gone: one transaction, one request."""

    def remove_nat_table(self, name: str) -> None:
        """Delete table ``name`` with everything in it; ENOENT when there is none."""


class NetlinkHandle(LinkTable, AddressTable, RouteTable, NeighbourTable, NatTables, Protocol):
    """Netlink in one network namespace: the primitives plus the idempotent operations by
    name that lab, bench and the agent's start-up use (each looks the link up first)."""

    def close(self) -> None:
        """Release the handle's socket."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(self, name: str) -> int:
        """The index of link ``name``; ENODEV when there is none."""
        link = self.link(name)
        if link is None:
            raise NetlinkFailure(f"link {name}", errno.ENODEV)
        return link.index

    def ensure_bridge(self, name: str) -> Link:
        """The bridge ``name``, created when missing; EEXIST when a link of another kind has
        the name."""
        return _ensure(self, Bridge(name), "bridge")

    def ensure_veth(self, name: str, peer: str, peer_netns: str | int | None = None) -> Link:
        """A veth pair ``name`` (here) -- ``peer`` (in ``peer_netns``: name, fd, or here)."""
        return _ensure(self, Veth(name, peer, peer_netns), "veth")

    def ensure_vxlan(
        self, name: str, vni: int, local: IPv4Address, remote: IPv4Address | None, port: int
    ) -> Link:
        """A kernel VXLAN device, point to point with ``remote`` (else driven by forwarding
        entries), created with the kernel's defaults when missing."""
        return _ensure(self, Vxlan(name, vni, local, remote, port), "vxlan")

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        master: str | None = None,
        gso_max_size: int | None = None,
    ) -> None:
        """Change only what differs; a no-op when the link already matches."""
        link = self.link(name)
        if link is None:
            raise NetlinkFailure(f"link {name}", errno.ENODEV)
        master_index = self.index(master) if master is not None else None
        change = LinkChange(
            mtu=mtu if mtu is not None and link.mtu != mtu else None,
            up=up if up is not None and link.up != up else None,
            master=master_index if master_index not in (None, link.master) else None,
            gso_max_size=gso_max_size if gso_max_size not in (None, link.gso_max_size) else None,
        )
        if change != LinkChange():
            self.set_link_index(link.index, change)

    def remove_link(self, name: str) -> bool:
        """Delete ``name``; False when it was already gone."""
        link = self.link(name)
        if link is None:
            return False
        return tolerating(lambda: self.remove_link_index(link.index), errno.ENODEV, errno.ENOENT)

    def list_addresses(self, name: str) -> list[IPv4Interface]:
        """The addresses of link ``name``; ENODEV when there is no such link."""
        return self.list_addresses_index(self.index(name))

    def ensure_address(self, name: str, address: IPv4Interface) -> bool:
        """Add ``address`` to ``name``; False when it was already there."""
        index = self.index(name)
        if address in self.list_addresses_index(index):
            return False
        return tolerating(lambda: self.add_address_index(index, address), errno.EEXIST)

    def remove_address(self, name: str, address: IPv4Interface) -> bool:
        """Delete ``address`` from ``name``; False when it was not there."""
        index = self.index(name)
        if address not in self.list_addresses_index(index):
            return False
        remove = self.remove_address_index
        return tolerating(lambda: remove(index, address), errno.EADDRNOTAVAIL, errno.ENOENT)

    def list_routes(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[Route]:
        """IPv4 unicast routes of the main table (only ours by default), devices by name."""
        names = {link.index: link.name for link in self.list_links()}
        return [
            Route(e.destination, names.get(e.index, ""), e.gateway, e.onlink)
            for e in self.list_route_entries(protocol)
        ]

    def ensure_route(self, route: Route, protocol: int = RTPROT_WEAVE_PY) -> bool:
        """Install ``route``, replacing a different route to the same destination; False when
        it was already there."""
        if route in self.list_routes(protocol):
            return False
        index = self.index(route.device)
        self.replace_route_index(route.destination, index, route.gateway, protocol, route.onlink)
        return True

    def remove_route(self, route: Route, protocol: int = RTPROT_WEAVE_PY) -> bool:
        """Delete ``route``; False when it was not there."""
        if route not in self.list_routes(protocol):
            return False
        index = self.index(route.device)
        remove = self.remove_route_index
        return tolerating(
            lambda: remove(route.destination, index, protocol), errno.ESRCH, errno.ENOENT
        )

    def route_device(self, destination: IPv4Address) -> Link | None:
        """The link the kernel would use to reach ``destination`` (None when unroutable)."""
        index = self.route_index(destination)
        return next((link for link in self.list_links() if link.index == index), None)


class EnterNetns(Protocol):
    """Runs ``fn`` with a netlink handle inside the namespace ``netns`` (an open fd) and
    returns its result; the caller's thread stays where it is."""

    def __call__(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T: ...


def _ensure(nl: NetlinkHandle, new: NewLink, kind: str) -> Link:
    link = nl.link(new.name)
    if link is None:
        tolerating(lambda: nl.add_link(new), errno.EEXIST)
        link = nl.link(new.name)
        if link is None:
            raise NetlinkFailure(f"add link {new.name}", errno.ENODEV)
    if link.kind != kind:
        raise NetlinkFailure(f"link {new.name} exists as {link.kind or 'device'}", errno.EEXIST)
    return link


def tolerating(action: Callable[[], None], *codes: int) -> bool:
    """Run ``action``: True when it happened, False when the kernel said one of ``codes`` (it
    was already done); any other refusal is raised."""
    try:
        action()
    except NetlinkFailure as exc:
        if exc.code not in codes:
            raise
        return False
    return True
