"""The kernel's side of the netlink seam: ``overlay.kernel``'s primitives over pyroute2 (with
``overlay.nftables`` for our NAT table, the only modules that import it), and named network
namespaces under /run/netns.

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

from overlay.kernel import NetlinkHandle
from overlay.netdev import (
    MAIN_TABLE,
    RTPROT_WEAVE_PY,
    Bridge,
    Link,
    LinkChange,
    Masquerade,
    NatTable,
    NetlinkFailure,
    NewLink,
    RouteEntry,
    Veth,
)
from overlay.netns import run_in_netns
from overlay.nftables import Nftables

AF_INET = 2
RTN_UNICAST = 1
IFF_UP = 1
BR_HAIRPIN_MODE = 1  # IFLA_BRPORT_MODE

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
        return [_link(msg) for msg in self._call("list links", self._ipr.get_links)]

    def link(self, name: str) -> Link | None:
        """RTM_GETLINK by name."""
        try:
            return _link(self._ipr.link("get", ifname=name)[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetlinkFailure(f"get link {name}", exc.code) from None

    def add_link(self, new: NewLink) -> None:
        """RTM_NEWLINK with the attributes of ``new`` (a veth's peer nested)."""
        self._call(f"add link {new.name}", self._ipr.link, "add", **_new_link(new))

    def set_link_index(self, index: int, change: LinkChange) -> None:
        """RTM_NEWLINK on an existing index, only the attributes ``change`` names."""
        self._call(f"set link {index}", self._ipr.link, "set", index=index, **_change(change))

    def set_link_by_name(self, name: str, change: LinkChange) -> None:
        """RTM_NEWLINK on an existing link named in IFLA_IFNAME (index 0)."""
        self._call(f"set link {name}", self._ipr.link, "set", ifname=name, **_change(change))

    def remove_link_index(self, index: int) -> None:
        """RTM_DELLINK."""
        self._call(f"delete link {index}", self._ipr.link, "del", index=index)

    # -- addresses ---------------------------------------------------------------------------

    def list_addresses_index(self, index: int) -> list[IPv4Interface]:
        """RTM_GETADDR, a dump filtered to the index."""
        found = self._call("list addresses", self._ipr.get_addr, family=AF_INET, index=index)
        return [IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}") for msg in found]

    def add_address_index(self, index: int, address: IPv4Interface) -> None:
        """RTM_NEWADDR."""
        self._call(f"add address {address}", self._ipr.addr, "add", index=index,
                   address=str(address.ip), prefixlen=address.network.prefixlen)  # fmt: skip

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
    ) -> None:
        """RTM_NEWROUTE with NLM_F_REPLACE."""
        request: dict[str, Any] = {"dst": str(destination), "oif": index, "proto": protocol,
                                   "table": MAIN_TABLE}  # fmt: skip
        if gateway is not None:
            request["gateway"] = str(gateway)
        self._call(f"replace route {destination}", self._ipr.route, "replace", **request)

    def remove_route_index(
        self, destination: IPv4Network, index: int, protocol: int = RTPROT_WEAVE_PY
    ) -> None:
        """RTM_DELROUTE matching destination, device and protocol."""
        self._call(f"delete route {destination}", self._ipr.route, "del", dst=str(destination),
                   oif=index, proto=protocol, table=MAIN_TABLE)  # fmt: skip

    # -- our nftables table ----------------------------------------------------------------

    def nat_table(self, name: str) -> NatTable | None:
        """NFT_MSG_GETTABLE, then NFT_MSG_GETCHAIN and a dump of its rules (overlay.nftables)."""
        return self._nft.table(name)

    def replace_nat_table(self, name: str, rules: Sequence[Masquerade]) -> None:
        """One nfnetlink batch (overlay.nftables)."""
        self._nft.replace(name, rules)

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


def _new_link(new: NewLink) -> dict[str, Any]:
    """The RTM_NEWLINK attributes of ``new``."""
    if isinstance(new, Bridge):
        return {"ifname": new.name, "kind": "bridge"}
    if isinstance(new, Veth):
        return _new_veth(new)
    return {"ifname": new.name, "kind": "vxlan", "vxlan_id": new.vni,
            "vxlan_local": str(new.local), "vxlan_group": str(new.remote),
            "vxlan_port": new.port}  # fmt: skip


def _new_veth(new: Veth) -> dict[str, Any]:
    peer: dict[str, Any] = {"ifname": new.peer}
    request: dict[str, Any] = {"ifname": new.name, "kind": "veth", "peer": peer}
    if new.peer_netns is not None:
        peer["net_ns_fd"] = new.peer_netns
    if new.mtu is not None:
        request["mtu"] = peer["mtu"] = new.mtu
    if new.master is not None:
        request["master"] = new.master
    if new.up:
        request["state"] = "up"
    if new.mac is not None:
        request["address"] = new.mac
    if new.peer_mac is not None:
        peer["address"] = new.peer_mac
    if new.peer_gso_max_size is not None:
        peer["gso_max_size"] = new.peer_gso_max_size
    return request


def _change(change: LinkChange) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if change.mtu is not None:
        out["mtu"] = change.mtu
    if change.up is not None:
        out["state"] = "up" if change.up else "down"
    if change.master is not None:
        out["master"] = change.master
    if change.gso_max_size is not None:
        out["gso_max_size"] = change.gso_max_size
    if change.hairpin is not None:  # the port's side of its bridge: "bridge_slave" data
        port = [("IFLA_BRPORT_MODE", BR_HAIRPIN_MODE if change.hairpin else 0)]
        out["IFLA_LINKINFO"] = {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                          ("IFLA_INFO_SLAVE_DATA", {"attrs": port})]}  # fmt: skip
    return out


def _link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    bridged = info is not None and info.get("IFLA_INFO_SLAVE_KIND") == "bridge"
    port = info.get("IFLA_INFO_SLAVE_DATA") if bridged else None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        kind=kind or "",
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get("IFLA_MASTER") or 0,
        gso_max_size=msg.get("IFLA_GSO_MAX_SIZE") or 0,
        mac=msg.get("IFLA_ADDRESS") or "",
        hairpin=bool(port is not None and port.get("IFLA_BRPORT_MODE") == BR_HAIRPIN_MODE),
    )


def _route(msg: Any) -> RouteEntry:
    gateway = msg.get("RTA_GATEWAY")
    return RouteEntry(
        IPv4Network(f"{msg.get('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"),
        msg.get("RTA_OIF") or 0,
        IPv4Address(gateway) if gateway else None,
        msg["proto"],
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
