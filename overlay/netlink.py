"""The kernel's side of the netlink seam: ``overlay.kernel``'s primitives over pyroute2 (with
``overlay.nftables`` for our nftables table, the only modules that import it; link attributes
are built and read in ``overlay.linkattrs``), and named network namespaces under /run/netns.

A ``Netlink`` object is bound to one namespace, by name, or to the caller's own; each primitive
is one request and turns the kernel's refusal into ``NetlinkFailure`` with its errno. The
idempotent operations by name come with ``overlay.kernel.NetlinkHandle``. Entering a namespace
is ``overlay.netns``'s.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from overlay import linkattrs
from overlay.kernel import NetlinkHandle
from overlay.netdev import (
    MAIN_TABLE,
    RTPROT_WEAVE_PY,
    FdbEntry,
    Link,
    LinkChange,
    Masquerade,
    NatTable,
    Neighbour,
    NetlinkFailure,
    NewLink,
    RouteEntry,
    UdpGuard,
)
from overlay.netns import run_in_netns
from overlay.nftables import Nftables

AF_INET = 2
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

T = TypeVar("T")


class Netlink(NetlinkHandle):
    """Netlink over pyroute2 in one network namespace (``None``: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr = IPRoute(netns=netns) if netns else IPRoute()
        self._nft = Nftables(netns)

    def close(self) -> None:
        """Close the netlink socket."""
        self._ipr.close()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkFailure(what, exc.code) from None

    # -- links -------------------------------------------------------------------------------

    def list_links(self) -> list[Link]:
        """RTM_GETLINK, a dump."""
        return [linkattrs.read_link(m) for m in self._call("list links", self._ipr.get_links)]

    def link(self, name: str) -> Link | None:
        """RTM_GETLINK by name."""
        try:
            return linkattrs.read_link(self._ipr.link("get", ifname=name)[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetlinkFailure(f"get link {name}", exc.code) from None

    def add_link(self, new: NewLink) -> None:
        """RTM_NEWLINK with the attributes of ``new`` (a veth's peer nested)."""
        self._call(f"add link {new.name}", self._ipr.link, "add", **linkattrs.new_link(new))

    def set_link_index(self, index: int, change: LinkChange) -> None:
        """RTM_NEWLINK on an existing index, only the attributes ``change`` names."""
        attrs = linkattrs.change(change)
        self._call(f"set link {index}", self._ipr.link, "set", index=index, **attrs)

    def set_link_by_name(self, name: str, change: LinkChange) -> None:
        """RTM_NEWLINK on an existing link named in IFLA_IFNAME (index 0)."""
        attrs = linkattrs.change(change)
        self._call(f"set link {name}", self._ipr.link, "set", ifname=name, **attrs)

    def remove_link_index(self, index: int) -> None:
        """RTM_DELLINK."""
        self._call(f"delete link {index}", self._ipr.link, "del", index=index)

    # -- addresses ---------------------------------------------------------------------------

    def list_addresses_index(self, index: int) -> list[IPv4Interface]:
        """RTM_GETADDR, a dump filtered to the index."""
        found = self._call("list addresses", self._ipr.get_addr, family=AF_INET, index=index)
        return [IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}") for msg in found]

    def add_address_index(
        self, index: int, address: IPv4Interface, scope: int | None = None
    ) -> None:
        """RTM_NEWADDR."""
        extra = {} if scope is None else {"scope": scope}
        self._call(f"add address {address}", self._ipr.addr, "add", index=index,
                   address=str(address.ip), prefixlen=address.network.prefixlen,
                   **extra)  # fmt: skip

    def remove_address_index(self, index: int, address: IPv4Interface) -> None:
        """RTM_DELADDR."""
        self._call(f"delete address {address}", self._ipr.addr, "del", index=index,
                   address=str(address.ip), prefixlen=address.network.prefixlen)  # fmt: skip

    # -- routes ------------------------------------------------------------------------------

    def list_route_entries(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[RouteEntry]:
        """RTM_GETROUTE, a dump of the main table."""
        found = self._call("list routes", self._ipr.get_routes, family=AF_INET, table=MAIN_TABLE)
        return [
            _route(msg)
            for msg in found
            if msg["type"] == RTN_UNICAST and (protocol is None or msg["proto"] == protocol)
        ]

    def replace_route_index(
        self,
        destination: IPv4Network,
        index: int,
        gateway: IPv4Address | None = None,
        protocol: int = RTPROT_WEAVE_PY,
        onlink: bool = False,
    ) -> None:
        """RTM_NEWROUTE with NLM_F_REPLACE (and RTNH_F_ONLINK in its flags when asked)."""
        request: dict[str, Any] = {"dst": str(destination), "oif": index, "proto": protocol,
                                   "table": MAIN_TABLE}  # fmt: skip
        if gateway is not None:
            request["gateway"] = str(gateway)
        if onlink:
            request["flags"] = RTNH_F_ONLINK
        self._call(f"replace route {destination}", self._ipr.route, "replace", **request)

    def remove_route_index(
        self, destination: IPv4Network, index: int, protocol: int = RTPROT_WEAVE_PY
    ) -> None:
        """RTM_DELROUTE matching destination, device and protocol."""
        self._call(f"delete route {destination}", self._ipr.route, "del", dst=str(destination),
                   oif=index, proto=protocol, table=MAIN_TABLE)  # fmt: skip

    # -- neighbours and forwarding entries ---------------------------------------------------

    def list_neighbours_index(self, index: int) -> list[Neighbour]:
        """RTM_GETNEIGH, a dump (AF_INET) filtered to the index, the permanent ones kept."""
        found = self._call("list neighbours", self._ipr.get_neighbours, family=AF_INET,
                           ifindex=index)  # fmt: skip
        return [
            Neighbour(IPv4Address(m.get("NDA_DST")), m.get("NDA_LLADDR") or "")
            for m in found
            if m["ifindex"] == index and m["state"] & NUD_PERMANENT and m.get("NDA_DST")
        ]

    def replace_neighbour_index(self, index: int, neighbour: Neighbour) -> None:
        """RTM_NEWNEIGH, NUD_PERMANENT, with NLM_F_CREATE | NLM_F_REPLACE."""
        self._call(f"replace neighbour {neighbour.address}", self._ipr.neigh, "replace",
                   family=AF_INET, ifindex=index, dst=str(neighbour.address),
                   lladdr=neighbour.mac, state=NUD_PERMANENT)  # fmt: skip

    def remove_neighbour_index(self, index: int, address: IPv4Address) -> None:
        """RTM_DELNEIGH."""
        self._call(f"delete neighbour {address}", self._ipr.neigh, "del", family=AF_INET,
                   ifindex=index, dst=str(address))  # fmt: skip

    def list_fdb_index(self, index: int) -> list[FdbEntry]:
        """RTM_GETNEIGH, a dump (AF_BRIDGE) of the device's own entries with a destination."""
        found = self._call("list fdb", self._ipr.fdb, "dump", ifindex=index)
        return [
            FdbEntry(m.get("NDA_LLADDR"), IPv4Address(m.get("NDA_DST")))
            for m in found
            if m["ifindex"] == index and m["flags"] & NTF_SELF and m.get("NDA_DST")
        ]

    def replace_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """RTM_NEWNEIGH (AF_BRIDGE, NTF_SELF, NUD_PERMANENT) with NLM_F_REPLACE."""
        self._call(f"replace fdb {entry.mac}", self._ipr.fdb, "replace", ifindex=index,
                   lladdr=entry.mac, dst=str(entry.host), state=NUD_PERMANENT,
                   flags=NTF_SELF)  # fmt: skip

    def remove_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """RTM_DELNEIGH (AF_BRIDGE, NTF_SELF) naming the MAC and its destination."""
        self._call(f"delete fdb {entry.mac}", self._ipr.fdb, "del", ifindex=index,
                   lladdr=entry.mac, dst=str(entry.host), flags=NTF_SELF)  # fmt: skip

    # -- our nftables table ----------------------------------------------------------------

    def nat_table(self, name: str) -> NatTable | None:
        """NFT_MSG_GETTABLE, then its chains, a dump of its rules, and with a guard its set's
        elements (overlay.nftables)."""
        return self._nft.table(name)

    def replace_nat_table(
        self, name: str, rules: Sequence[Masquerade], guard: UdpGuard | None = None
    ) -> None:
        """One nfnetlink batch (overlay.nftables)."""
        self._nft.replace(name, rules, guard)

    def remove_nat_table(self, name: str) -> None:
        """NFT_MSG_DELTABLE in a batch of its own."""
        self._nft.remove(name)

    def route_index(self, destination: IPv4Address) -> int | None:
        """RTM_GETROUTE for one address (what ``ip route get`` asks)."""
        try:
            found = self._ipr.route("get", dst=str(destination))
        except NetlinkError:
            return None
        return next((msg.get("RTA_OIF") for msg in found if msg.get("RTA_OIF")), None)


def _route(msg: Any) -> RouteEntry:
    gateway = msg.get("RTA_GATEWAY")
    return RouteEntry(
        IPv4Network(f"{msg.get('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"),
        msg.get("RTA_OIF") or 0,
        IPv4Address(gateway) if gateway else None,
        msg["proto"],
        bool(msg["flags"] & RTNH_F_ONLINK),
    )


# -- namespaces ------------------------------------------------------------------------------


def list_netns() -> list[str]:
    """The names under /run/netns."""
    return sorted(_netns.listnetns())


def ensure_netns(name: str) -> bool:
    """Create the named namespace; False when it was there."""
    if name in list_netns():
        return False
    _netns.create(name)
    return True


def remove_netns(name: str) -> bool:
    """Remove the named namespace; False when it was gone."""
    if name not in list_netns():
        return False
    _netns.remove(name)
    return True


def in_netns(netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
    """``overlay.kernel.EnterNetns`` on the kernel: ``fn`` gets a fresh handle opened on a
    short-lived thread inside the namespace ``netns`` (an open fd)."""
    return run_in_netns(netns, _with_handle, fn)


def _with_handle(fn: Callable[[NetlinkHandle], T]) -> T:
    with Netlink() as nl:
        return fn(nl)
