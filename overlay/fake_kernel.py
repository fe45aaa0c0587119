"""An in-memory kernel for tests without root: network namespaces with links, addresses and
routes behind the netlink seam (``overlay.kernel``).

It is faithful where the agent depends on the kernel, and tests/overlay/test_netlink_contract.py
runs the same tests against it and the real kernel to keep it so:

- namespaces by name and by open fd (a namespace lives while either refers to it); each starts
  with a loopback ``lo`` (index 1, down) and numbers its links from 2;
- links with index, kind, MTU, state, master, MAC and GSO size; a veth's peer may be born in
  another namespace and is deleted with it; deleting a bridge frees its ports;
- addresses per link: a second address in the subnet of another is a secondary, and deleting
  the primary deletes its secondaries (``promote_secondaries`` off, the default);
- the main table: a connected route per primary address of an up link (protocol kernel),
  routes replaced per destination, a gateway only through a connected route of the link, routes
  via a link flushed when it goes down, is deleted or loses its last address;
- errno as the kernel gives it: EEXIST, ENODEV, EINVAL (unknown master), ENETDOWN,
  ENETUNREACH, EADDRNOTAVAIL, ESRCH.

Not modelled: other tables, metrics and scopes, IPv6, the bridge's automatic MTU.
``requests`` counts the primitives called, each one netlink request on the real kernel.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TypeVar

from overlay.kernel import (
    RTPROT_KERNEL,
    RTPROT_WEAVE_PY,
    Bridge,
    Link,
    LinkChange,
    NetlinkFailure,
    NetlinkHandle,
    NewLink,
    RouteEntry,
    Veth,
)

T = TypeVar("T")
LOOPBACK = 1
DEFAULT_MTU = 1500
DEFAULT_GSO_MAX_SIZE = 65536


@dataclass
class _Device:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int = DEFAULT_MTU
    up: bool = False
    master: int = 0
    gso_max_size: int = DEFAULT_GSO_MAX_SIZE
    peer: tuple[FakeNetns, int] | None = None
    addresses: list[IPv4Interface] = field(default_factory=list)

    def link(self) -> Link:
        return Link(self.index, self.name, self.kind, self.mtu, self.up, self.master,
                    self.gso_max_size, self.mac)  # fmt: skip

    def primaries(self) -> list[IPv4Interface]:
        return [a for i, a in enumerate(self.addresses) if _primary_of(self.addresses[:i], a)]


def _primary_of(earlier: list[IPv4Interface], address: IPv4Interface) -> bool:
    return not any(_same_subnet(e, address) for e in earlier)


def _table_order(e: RouteEntry) -> tuple[int, int, int]:
    return (int(e.destination.network_address), e.destination.prefixlen, e.index)


def _same_subnet(a: IPv4Interface, b: IPv4Interface) -> bool:
    return a.network == b.network


class FakeKernel:
    """Network namespaces in memory: ``host`` (the caller's own), named ones, open fds."""

    def __init__(self) -> None:
        self._named: dict[str, FakeNetns] = {}
        self._fds: dict[int, FakeNetns] = {}
        self._next_fd = 100
        self._next_mac = 1
        self.host = FakeNetns(self)

    def list_netns(self) -> list[str]:
        """The names of the named namespaces."""
        return sorted(self._named)

    def ensure_netns(self, name: str) -> bool:
        """Create the named namespace; False when it was there."""
        if name in self._named:
            return False
        self._named[name] = FakeNetns(self)
        return True

    def remove_netns(self, name: str) -> bool:
        """Drop the name; the namespace and its links go once no fd refers to it."""
        ns = self._named.pop(name, None)
        if ns is None:
            return False
        self._release(ns)
        return True

    def netns(self, name: str) -> FakeNetns:
        """The handle of the named namespace."""
        if name not in self._named:
            raise NetlinkFailure(f"netns {name}", errno.ENOENT)
        return self._named[name]

    def open_netns(self, name: str) -> int:
        """An fd referring to the named namespace (as ``open("/run/netns/NAME")``)."""
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = self.netns(name)
        return fd

    def close_fd(self, fd: int) -> None:
        """Close an fd from ``open_netns``."""
        ns = self._fds.pop(fd)
        self._release(ns)

    def enter(self, netns: int, fn: Callable[[NetlinkHandle], T]) -> T:
        """``overlay.kernel.EnterNetns``: ``fn`` with the handle of the namespace at fd
        ``netns``; EBADF for an fd that is not open."""
        return fn(self.resolve(netns))

    def resolve(self, target: str | int) -> FakeNetns:
        """The namespace a name or an open fd refers to."""
        if isinstance(target, str):
            return self.netns(target)
        if target not in self._fds:
            raise NetlinkFailure(f"enter netns {target}", errno.EBADF)
        return self._fds[target]

    def new_mac(self) -> str:
        """A fresh locally administered unicast MAC."""
        n = self._next_mac
        self._next_mac += 1
        return "02:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (32, 24, 16, 8, 0))

    def _release(self, ns: FakeNetns) -> None:
        if ns not in self._named.values() and ns not in self._fds.values():
            ns.destroy()


class FakeNetns(NetlinkHandle):
    """One in-memory namespace, and a netlink handle on it."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel
        self._devices: dict[int, _Device] = {}
        self._routes: dict[IPv4Network, RouteEntry] = {}
        self._next_index = LOOPBACK
        self.requests = 0
        self.add_device("lo", "").mtu = 65536
        self._devices[LOOPBACK].mac = "00:00:00:00:00:00"

    def close(self) -> None:
        """Nothing to release."""

    def add_device(self, name: str, kind: str = "tun") -> _Device:
        """A device made outside netlink (``open_tun`` makes a TUN: down, default MTU)."""
        if self._find(name) is not None:
            raise NetlinkFailure(f"add link {name}", errno.EEXIST)
        device = _Device(self._next_index, name, kind, self._kernel.new_mac())
        self._devices[device.index] = device
        self._next_index += 1
        return device

    def destroy(self) -> None:
        """Delete every link (veth peers elsewhere go with them)."""
        for index in list(self._devices):
            if index in self._devices:
                self._delete(index)

    # -- links -------------------------------------------------------------------------------

    def list_links(self) -> list[Link]:
        self.requests += 1
        return [self._devices[i].link() for i in sorted(self._devices)]

    def link(self, name: str) -> Link | None:
        self.requests += 1
        device = self._find(name)
        return device.link() if device is not None else None

    def add_link(self, new: NewLink) -> None:
        self.requests += 1
        if self._find(new.name) is not None:
            raise NetlinkFailure(f"add link {new.name}", errno.EEXIST)
        if isinstance(new, Veth):
            self._add_veth(new)
        else:
            self.add_device(new.name, "bridge" if isinstance(new, Bridge) else "vxlan")

    def _add_veth(self, new: Veth) -> None:
        there = self if new.peer_netns is None else self._kernel.resolve(new.peer_netns)
        if there._find(new.peer) is not None or (there is self and new.peer == new.name):
            raise NetlinkFailure(f"add link {new.name}", errno.EEXIST)
        if new.master is not None:
            self._check_master(new.master)
        theirs = there.add_device(new.peer, "veth")  # the kernel registers the peer first
        mine = self.add_device(new.name, "veth")
        mine.peer, theirs.peer = (there, theirs.index), (self, mine.index)
        mine.mtu = theirs.mtu = new.mtu or DEFAULT_MTU
        mine.master, mine.up = new.master or 0, new.up
        mine.mac = new.mac or mine.mac
        theirs.mac = new.peer_mac or theirs.mac
        theirs.gso_max_size = new.peer_gso_max_size or theirs.gso_max_size

    def _check_master(self, index: int) -> None:
        master = self._devices.get(index)
        if master is None:
            raise NetlinkFailure(f"master {index}", errno.EINVAL)
        if master.kind != "bridge":
            raise NetlinkFailure(f"master {index}", errno.EOPNOTSUPP)

    def set_link_index(self, index: int, change: LinkChange) -> None:
        self.requests += 1
        device = self._device(index, "set link")
        if change.master:
            self._check_master(change.master)
        device.mtu = change.mtu if change.mtu is not None else device.mtu
        device.master = change.master if change.master is not None else device.master
        device.gso_max_size = change.gso_max_size or device.gso_max_size
        if change.up is not None:
            device.up = change.up
            if not change.up:
                self._flush_routes(index)

    def remove_link_index(self, index: int) -> None:
        self.requests += 1
        self._device(index, "delete link")
        self._delete(index)

    def _delete(self, index: int) -> None:
        device = self._devices.pop(index)
        self._flush_routes(index)
        for port in self._devices.values():
            if port.master == index:
                port.master = 0
        if device.peer is not None:
            there, peer = device.peer
            if peer in there._devices:
                there._delete(peer)

    # -- addresses ---------------------------------------------------------------------------

    def list_addresses_index(self, index: int) -> list[IPv4Interface]:
        self.requests += 1
        device = self._devices.get(index)
        return list(device.addresses) if device is not None else []

    def add_address_index(self, index: int, address: IPv4Interface) -> None:
        self.requests += 1
        device = self._device(index, f"add address {address}")
        if address in device.addresses:
            raise NetlinkFailure(f"add address {address}", errno.EEXIST)
        device.addresses.append(address)

    def remove_address_index(self, index: int, address: IPv4Interface) -> None:
        self.requests += 1
        device = self._device(index, f"delete address {address}")
        if address not in device.addresses:
            raise NetlinkFailure(f"delete address {address}", errno.EADDRNOTAVAIL)
        primary = address in device.primaries()
        device.addresses = [
            a
            for a in device.addresses
            if a != address and not (primary and _same_subnet(a, address))
        ]
        if not device.addresses:
            self._flush_routes(index)

    # -- routes ------------------------------------------------------------------------------

    def list_route_entries(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[RouteEntry]:
        self.requests += 1
        return [e for e in self._table() if protocol is None or e.protocol == protocol]

    def replace_route_index(
        self,
        destination: IPv4Network,
        index: int,
        gateway: IPv4Address | None = None,
        protocol: int = RTPROT_WEAVE_PY,
    ) -> None:
        self.requests += 1
        what = f"replace route {destination}"
        device = self._device(index, what)
        if not device.up:
            raise NetlinkFailure(what, errno.ENETDOWN)
        if gateway is not None and not any(gateway in a.network for a in self._connected(device)):
            raise NetlinkFailure(what, errno.ENETUNREACH)
        self._routes[destination] = RouteEntry(destination, index, gateway, protocol)

    def remove_route_index(
        self, destination: IPv4Network, index: int, protocol: int = RTPROT_WEAVE_PY
    ) -> None:
        self.requests += 1
        found = self._routes.get(destination)
        if found is None or (found.index, found.protocol) != (index, protocol):
            raise NetlinkFailure(f"delete route {destination}", errno.ESRCH)
        del self._routes[destination]

    def route_index(self, destination: IPv4Address) -> int | None:
        self.requests += 1
        if any(destination == a.ip for d in self._devices.values() for a in d.addresses):
            return LOOPBACK
        matches = [e for e in self._table() if destination in e.destination]
        best = max(matches, key=lambda e: e.destination.prefixlen, default=None)
        return best.index if best is not None else None

    def _table(self) -> list[RouteEntry]:
        """The main table: our stored routes and the connected routes they do not replace."""
        entries = list(self._routes.values())
        for device in self._devices.values():
            for address in self._connected(device):
                if address.network not in self._routes:
                    entries.append(RouteEntry(address.network, device.index, None, RTPROT_KERNEL))
        return sorted(entries, key=_table_order)

    @staticmethod
    def _connected(device: _Device) -> list[IPv4Interface]:
        if not device.up:
            return []
        return [a for a in device.primaries() if a.network.prefixlen < 32]

    def _flush_routes(self, index: int) -> None:
        self._routes = {d: e for d, e in self._routes.items() if e.index != index}

    def _find(self, name: str) -> _Device | None:
        return next((d for d in self._devices.values() if d.name == name), None)

    def _device(self, index: int, what: str) -> _Device:
        if index not in self._devices:
            raise NetlinkFailure(what, errno.ENODEV)
        return self._devices[index]
