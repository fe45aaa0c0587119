"""The one module that talks netlink (over pyroute2).

Typed values in, idempotent ``ensure_*`` / ``remove_*`` / ``list_*`` out. Every call works in any
network namespace: a ``Netlink`` object is bound to one, by name, or to the caller's own.
Routes this project installs carry protocol ``RTPROT_WEAVE_PY`` so reconciliation only ever
touches its own routes.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

RTPROT_WEAVE_PY = 119
MAIN_TABLE = 254
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

T = TypeVar("T")


class NetlinkFailure(Exception):
    """A kernel refusal, with the operation and errno name in the message."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: {errno.errorcode.get(code, str(code))}")
        self.code = code


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: int
    gso_max_size: int
    mac: str = ""


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Network
    device: str
    gateway: ipaddress.IPv4Address | None = None


class Netlink:
    """Netlink operations in one network namespace (``None``: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr = IPRoute(netns=netns) if netns else IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise NetlinkFailure(what, exc.code) from None

    # -- links -------------------------------------------------------------------------------

    def list_links(self) -> list[Link]:
        return [_link(msg) for msg in self._call("list links", self._ipr.get_links)]

    def link(self, name: str) -> Link | None:
        """One RTM_GETLINK by name (the kernel looks it up; no dump of every link)."""
        try:
            return _link(self._ipr.link("get", ifname=name)[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetlinkFailure(f"get link {name}", exc.code) from None

    def _index(self, name: str) -> int:
        link = self.link(name)
        if link is None:
            raise NetlinkFailure(f"link {name}", errno.ENODEV)
        return link.index

    def ensure_bridge(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            self._create(name, kind="bridge")
            link = self.link(name)
        elif link.kind != "bridge":
            raise NetlinkFailure(f"link {name} exists as {link.kind or 'device'}", errno.EEXIST)
        assert link is not None
        return link

    def ensure_veth(self, name: str, peer: str, peer_netns: str | int | None = None) -> Link:
        """A veth pair ``name`` (here) -- ``peer`` (in ``peer_netns``: name, fd, or here)."""
        link = self.link(name)
        if link is None:
            spec: dict[str, Any] = {"ifname": peer}
            if peer_netns is not None:
                spec["net_ns_fd"] = peer_netns
            self._create(name, kind="veth", peer=spec)
            link = self.link(name)
        elif link.kind != "veth":
            raise NetlinkFailure(f"link {name} exists as {link.kind or 'device'}", errno.EEXIST)
        assert link is not None
        return link

    def ensure_vxlan(
        self,
        name: str,
        vni: int,
        local: ipaddress.IPv4Address,
        remote: ipaddress.IPv4Address,
        port: int,
    ) -> Link:
        """A point-to-point kernel VXLAN device (``remote`` set: no fdb entries needed)."""
        link = self.link(name)
        if link is None:
            self._create(
                name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=str(local),
                vxlan_group=str(remote),
                vxlan_port=port,
            )
            link = self.link(name)
        elif link.kind != "vxlan":
            raise NetlinkFailure(f"link {name} exists as {link.kind or 'device'}", errno.EEXIST)
        assert link is not None
        return link

    def _create(self, name: str, **kwargs: Any) -> None:
        try:
            self._ipr.link("add", ifname=name, **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkFailure(f"add link {name}", exc.code) from None

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
        changes: dict[str, Any] = {}
        if mtu is not None and link.mtu != mtu:
            changes["mtu"] = mtu
        if gso_max_size is not None and link.gso_max_size != gso_max_size:
            changes["gso_max_size"] = gso_max_size
        if master is not None:
            master_index = self._index(master)
            if link.master != master_index:
                changes["master"] = master_index
        if up is not None and link.up != up:
            changes["state"] = "up" if up else "down"
        if changes:
            self._call(f"set link {name}", self._ipr.link, "set", index=link.index, **changes)

    # -- the pod fast path: one request per change, by index, no read-before-write ----------

    def add_veth_into(
        self,
        name: str,
        peer: str,
        netns: int,
        *,
        mtu: int,
        master: int,
        macs: tuple[str, str],
        gso_max_size: int,
    ) -> None:
        """A veth pair in one request: ``name`` here (MTU, MAC, on ``master``, up) and
        ``peer`` created directly in the namespace ``netns`` (an open fd) with the same MTU,
        its MAC and GSO size (down: the kernel takes no flags for the peer). EEXIST when
        either name is taken."""
        peer_spec = {"ifname": peer, "net_ns_fd": netns, "mtu": mtu, "address": macs[1],
                     "gso_max_size": gso_max_size}  # fmt: skip
        self._call(
            f"add veth {name}", self._ipr.link, "add", ifname=name, kind="veth", mtu=mtu,
            master=master, state="up", address=macs[0], peer=peer_spec,
        )  # fmt: skip

    def set_index(self, index: int, **changes: Any) -> None:
        """Set attributes of the link ``index`` (mtu, state, address, gso_max_size...)."""
        self._call(f"set link {index}", self._ipr.link, "set", index=index, **changes)

    def add_address_index(self, index: int, address: ipaddress.IPv4Interface) -> None:
        """Add ``address`` to link ``index``; already there is fine."""
        try:
            self._ipr.addr("add", index=index, address=str(address.ip),
                           prefixlen=address.network.prefixlen)  # fmt: skip
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkFailure(f"add address {address}", exc.code) from None

    def replace_route_index(
        self, destination: ipaddress.IPv4Network, index: int, gateway: ipaddress.IPv4Address | None
    ) -> None:
        kwargs: dict[str, Any] = {"dst": str(destination), "oif": index,
                                  "proto": RTPROT_WEAVE_PY, "table": MAIN_TABLE}  # fmt: skip
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        self._call(f"replace route {destination}", self._ipr.route, "replace", **kwargs)

    def move_link(self, name: str, netns: str | int) -> None:
        """Move ``name`` into another namespace (a name under /run/netns or an open fd)."""
        index = self._index(name)
        self._call(f"move link {name}", self._ipr.link, "set", index=index, net_ns_fd=netns)

    def rename_link(self, name: str, new_name: str) -> None:
        index = self._index(name)
        self._call(f"rename link {name}", self._ipr.link, "set", index=index, ifname=new_name)

    def remove_link(self, name: str) -> bool:
        """Delete ``name``; False when it was already gone."""
        link = self.link(name)
        if link is None:
            return False
        try:
            self._ipr.link("del", index=link.index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise NetlinkFailure(f"delete link {name}", exc.code) from None
        return True

    # -- addresses ---------------------------------------------------------------------------

    def list_addresses(self, name: str) -> list[ipaddress.IPv4Interface]:
        index = self._index(name)
        out = []
        for msg in self._call("list addresses", self._ipr.get_addr, family=2, index=index):
            out.append(ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}"))
        return out

    def ensure_address(self, name: str, address: ipaddress.IPv4Interface) -> bool:
        """Add ``address`` to ``name``; False when it was already there."""
        if address in self.list_addresses(name):
            return False
        index = self._index(name)
        try:
            self._ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetlinkFailure(f"add address {address} on {name}", exc.code) from None
        return True

    def remove_address(self, name: str, address: ipaddress.IPv4Interface) -> bool:
        if address not in self.list_addresses(name):
            return False
        index = self._index(name)
        try:
            self._ipr.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT):
                return False
            raise NetlinkFailure(f"delete address {address} on {name}", exc.code) from None
        return True

    # -- routes ------------------------------------------------------------------------------

    def list_routes(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[Route]:
        """IPv4 routes of the main table (only ours by default)."""
        names = {link.index: link.name for link in self.list_links()}
        out = []
        for msg in self._call("list routes", self._ipr.get_routes, family=2, table=MAIN_TABLE):
            if protocol is not None and msg["proto"] != protocol:
                continue
            if msg["type"] != 1:  # unicast only
                continue
            dst = msg.get("RTA_DST") or "0.0.0.0"
            gateway = msg.get("RTA_GATEWAY")
            out.append(
                Route(
                    ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}"),
                    names.get(msg.get("RTA_OIF"), ""),
                    ipaddress.IPv4Address(gateway) if gateway else None,
                )
            )
        return out

    def ensure_route(self, route: Route, protocol: int = RTPROT_WEAVE_PY) -> bool:
        """Install ``route``, replacing a different route to the same destination of ours."""
        if route in self.list_routes(protocol):
            return False
        kwargs: dict[str, Any] = {
            "dst": str(route.destination),
            "oif": self._index(route.device),
            "proto": protocol,
            "table": MAIN_TABLE,
        }
        if route.gateway is not None:
            kwargs["gateway"] = str(route.gateway)
        self._call(f"replace route {route.destination}", self._ipr.route, "replace", **kwargs)
        return True

    def remove_route(self, route: Route, protocol: int = RTPROT_WEAVE_PY) -> bool:
        if route not in self.list_routes(protocol):
            return False
        try:
            self._ipr.route(
                "del",
                dst=str(route.destination),
                proto=protocol,
                table=MAIN_TABLE,
                oif=self._index(route.device),
            )
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise NetlinkFailure(f"delete route {route.destination}", exc.code) from None
        return True

    def route_device(self, destination: ipaddress.IPv4Address) -> Link | None:
        """The link the kernel would use to reach ``destination`` (None when unroutable)."""
        try:
            found = self._ipr.route("get", dst=str(destination))
        except NetlinkError:
            return None
        for msg in found:
            oif = msg.get("RTA_OIF")
            if oif is not None:
                for link in self.list_links():
                    if link.index == oif:
                        return link
        return None


def _link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return Link(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        kind=kind or "",
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & 1),
        master=msg.get("IFLA_MASTER") or 0,
        gso_max_size=msg.get("IFLA_GSO_MAX_SIZE") or 0,
        mac=msg.get("IFLA_ADDRESS") or "",
    )


# -- namespaces ------------------------------------------------------------------------------


def list_netns() -> list[str]:
    return sorted(_netns.listnetns())


def ensure_netns(name: str) -> bool:
    if name in list_netns():
        return False
    _netns.create(name)
    return True


def remove_netns(name: str) -> bool:
    if name not in list_netns():
        return False
    _netns.remove(name)
    return True


def enter_netns(target: str | int) -> None:
    """Move the calling thread into a namespace (a name under /run/netns, a path or an fd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if isinstance(target, int):
        fd, close = target, False
    else:
        path = target if "/" in target else os.path.join(NETNS_DIR, target)
        fd, close = os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NetlinkFailure(f"enter netns {target}", code)
    finally:
        if close:
            os.close(fd)


def run_in_netns(target: str | int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on a fresh thread inside namespace ``target``; return its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(target)
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{target}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _sysctl_path(key: str) -> str:
    """``net.ipv4.ip_forward`` or, for keys holding a device name, ``net/ipv4/conf/eth0.1/x``."""
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def read_sysctl(key: str) -> str:
    """A sysctl of the caller's namespace."""
    with open(_sysctl_path(key)) as f:
        return f.read().strip()


def ensure_sysctl(key: str, value: str) -> bool:
    """Set a sysctl of the caller's namespace; False when it already had the value."""
    if read_sysctl(key) == value:
        return False
    with open(_sysctl_path(key), "w") as f:
        f.write(value)
    return True
