"""One in-memory network namespace behind the netlink seam (``overlay.kernel``), part of
``overlay.fake_kernel``; tests/overlay/test_netlink_contract.py runs the same tests against it
and the real kernel to keep it faithful where the agent depends on the kernel:

- each namespace starts with a loopback ``lo`` (index 1, down) and numbers its links from 2;
- links with index, kind, MTU, state, master, MAC and GSO size (a VXLAN device also its VNI,
  local address, port and learning; MTU 1500 unless given); a veth's peer may be born in
  another namespace (registered first) and is deleted with it; deleting a bridge frees its ports;
- hairpin on a bridge port only (EOPNOTSUPP on any other link), lost when it leaves its bridge;
- addresses per link: a second address in the subnet of another is a secondary, and deleting
  the primary deletes its secondaries (``promote_secondaries`` off, the default);
- the main table: a connected route per primary address of an up link (protocol kernel),
  routes replaced per destination, a gateway only through a connected route of the link unless
  onlink (then any address not of this namespace, only with a gateway, and only once the
  namespace has its local table: an address added or the loopback up), routes via a link
  flushed when it goes down, is deleted or loses its last address;
- neighbours and VXLAN forwarding entries (``overlay.fake_neighbours``);
- nftables tables by name (``overlay.fake_nat``);
- errno as the kernel gives it: EEXIST, ENODEV, EINVAL (unknown master, a bad onlink route),
  ENETDOWN, ENETUNREACH, EADDRNOTAVAIL, ESRCH, EOPNOTSUPP, ENOENT.

Not modelled: other tables, metrics and scopes, IPv6, the bridge's automatic MTU, the
loopback's 127.0.0.1 (and so an onlink gateway there, or at a broadcast address, is accepted
here where the kernel says EINVAL).
``requests`` counts the netlink requests the primitives make on the real kernel (one each, but
three to read a NAT table that exists, five with a guard).
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Interface
from typing import Protocol

from overlay.fake_device import DEFAULT_MTU, LOOPBACK, FakeDevice, same_subnet
from overlay.fake_nat import FakeNatTables
from overlay.fake_neighbours import ZERO_MAC, FakeNeighbours
from overlay.fake_routes import FakeRoutes
from overlay.kernel import NetlinkHandle
from overlay.netdev import Link, LinkChange, NetlinkFailure, NewLink, Veth, Vxlan, VxlanInfo


class Registry(Protocol):
    """What a namespace asks of the kernel it belongs to."""

    def resolve(self, target: str | int) -> FakeNetns:
        """The namespace a name or an open fd refers to."""

    def new_mac(self) -> str:
        """A fresh locally administered unicast MAC."""


class FakeNetns(FakeRoutes, FakeNatTables, FakeNeighbours, NetlinkHandle):
    """One in-memory namespace, and a netlink handle on it."""

    def __init__(self, kernel: Registry) -> None:
        self._kernel = kernel
        self._devices: dict[int, FakeDevice] = {}
        self._next_index = LOOPBACK
        FakeRoutes.__init__(self)
        FakeNatTables.__init__(self)
        FakeNeighbours.__init__(self)
        loopback = self._add("lo", "")
        loopback.mtu, loopback.mac = 65536, "00:00:00:00:00:00"

    def close(self) -> None:
        """Nothing to release."""

    def add_device(self, name: str, kind: str = "tun") -> Link:
        """A device made outside netlink (``open_tun`` makes a TUN: down, default MTU)."""
        return self._add(name, kind).link()

    def _add(self, name: str, kind: str) -> FakeDevice:
        if self._find(name) is not None:
            raise NetlinkFailure(f"add link {name}", errno.EEXIST)
        device = FakeDevice(self._next_index, name, kind, self._kernel.new_mac())
        self._devices[device.index] = device
        self._next_index += 1
        return device

    def destroy(self) -> None:
        """Delete every link (veth peers elsewhere go with them) and every table."""
        for index in list(self._devices):
            if index in self._devices:
                self._delete(index)
        self._nat.clear()

    # -- links -------------------------------------------------------------------------------

    def list_links(self) -> list[Link]:
        """Every link, by index."""
        self.requests += 1
        return [self._devices[i].link() for i in sorted(self._devices)]

    def link(self, name: str) -> Link | None:
        """The link named ``name``, or None."""
        self.requests += 1
        device = self._find(name)
        return device.link() if device is not None else None

    def add_link(self, new: NewLink) -> None:
        """A bridge, a VXLAN device or a veth pair; EEXIST when a name is taken."""
        self.requests += 1
        if self._find(new.name) is not None:
            raise NetlinkFailure(f"add link {new.name}", errno.EEXIST)
        if isinstance(new, Veth):
            self._add_veth(new)
        elif isinstance(new, Vxlan):
            self._add_vxlan(new)
        else:
            self._add(new.name, "bridge")

    def _add_vxlan(self, new: Vxlan) -> None:
        device = self._add(new.name, "vxlan")
        device.vxlan = VxlanInfo(new.vni, new.local, new.port, new.learning)
        device.mtu = new.mtu or device.mtu
        device.mac = (new.mac or device.mac).lower()
        if new.remote is not None:  # point to point: the all-zeros MAC's entry holds the remote
            self._fdb[device.index] = {ZERO_MAC: new.remote}

    def _add_veth(self, new: Veth) -> None:
        there = self if new.peer_netns is None else self._kernel.resolve(new.peer_netns)
        if there._find(new.peer) is not None or (there is self and new.peer == new.name):
            raise NetlinkFailure(f"add link {new.name}", errno.EEXIST)
        if new.master is not None:
            self._check_master(new.master)
        theirs = there._add(new.peer, "veth")  # the kernel registers the peer first
        mine = self._add(new.name, "veth")
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
        """Change a link; going down flushes the routes via it."""
        self.requests += 1
        self._set(self._device(index, "set link"), change)

    def set_link_by_name(self, name: str, change: LinkChange) -> None:
        """Change the link named ``name``."""
        self.requests += 1
        device = self._find(name)
        if device is None:
            raise NetlinkFailure(f"set link {name}", errno.ENODEV)
        self._set(device, change)

    def _set(self, device: FakeDevice, change: LinkChange) -> None:
        if change.master:
            self._check_master(change.master)
        if change.hairpin is not None and not device.master:  # the port's part comes first
            raise NetlinkFailure(f"set link {device.name}", errno.EOPNOTSUPP)
        device.hairpin = change.hairpin if change.hairpin is not None else device.hairpin
        device.mtu = change.mtu if change.mtu is not None else device.mtu
        if change.master is not None and change.master != device.master:
            device.master, device.hairpin = change.master, False
        device.gso_max_size = change.gso_max_size or device.gso_max_size
        device.mac = change.mac.lower() if change.mac is not None else device.mac
        if change.up is not None:
            device.up = change.up
            self._local_table |= change.up and device.index == LOOPBACK
            if not change.up:
                self._flush_routes(device.index)
                self._link_down(device.index)

    def remove_link_index(self, index: int) -> None:
        """Delete a link, its peer, its routes; free its ports."""
        self.requests += 1
        self._device(index, "delete link")
        self._delete(index)

    def _delete(self, index: int) -> None:
        device = self._devices.pop(index)
        self._flush_routes(index)
        self._link_gone(index)
        for port in self._devices.values():
            if port.master == index:
                port.master, port.hairpin = 0, False
        if device.peer is not None:
            there, peer = device.peer
            there.drop_link(peer)

    def drop_link(self, index: int) -> None:
        """Delete link ``index`` with what it takes along, if it is still there (the other
        end of a veth deleted elsewhere)."""
        if index in self._devices:
            self._delete(index)

    # -- addresses ---------------------------------------------------------------------------

    def list_addresses_index(self, index: int) -> list[IPv4Interface]:
        """The addresses of a link, in the order they were added."""
        self.requests += 1
        device = self._devices.get(index)
        return list(device.addresses) if device is not None else []

    def add_address_index(
        self, index: int, address: IPv4Interface, scope: int | None = None
    ) -> None:
        """Add an address (its scope is not kept); EEXIST for the same address and prefix
        length."""
        self.requests += 1
        device = self._device(index, f"add address {address}")
        if address in device.addresses:
            raise NetlinkFailure(f"add address {address}", errno.EEXIST)
        device.addresses.append(address)
        self._local_table = True

    def remove_address_index(self, index: int, address: IPv4Interface) -> None:
        """Delete an address (a primary takes its secondaries)."""
        self.requests += 1
        device = self._device(index, f"delete address {address}")
        if address not in device.addresses:
            raise NetlinkFailure(f"delete address {address}", errno.EADDRNOTAVAIL)
        primary = address in device.primaries()
        device.addresses = [
            a
            for a in device.addresses
            if a != address and not (primary and same_subnet(a, address))
        ]
        if not device.addresses:
            self._flush_routes(index)

    def _kind_of(self, index: int, what: str) -> str:
        return self._device(index, what).kind

    def _find(self, name: str) -> FakeDevice | None:
        return next((d for d in self._devices.values() if d.name == name), None)
