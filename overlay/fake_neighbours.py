"""Permanent neighbours and VXLAN forwarding entries in memory, the ``overlay.kernel.
NeighbourTable`` part of ``overlay.fake_netns.FakeNetns``, as the kernel keeps them:

- a neighbour per (link, address), replaced in place; any link may hold them, up or down;
  a link going down or away loses them all, permanent or not;
- a forwarding entry per (VXLAN link, MAC), its host replaced in place; the device keeps them
  while down and loses them with itself; one made with a remote starts with the all-zeros
  MAC's entry to it;
- deleting a neighbour that is not there is ENOENT; deleting a forwarding entry is ENOENT when
  the MAC has none, and quietly nothing when it has one to another host;
- MACs read back in lowercase.

Not modelled: forwarding entries of other kinds of link (the kernel makes them something else
on a bridge or a veth; refused here with EOPNOTSUPP), non-permanent states, IPv6.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

from overlay.netdev import FdbEntry, Neighbour, NetlinkFailure

ZERO_MAC = "00:00:00:00:00:00"  # a point-to-point VXLAN device's one entry: to its remote


class FakeNeighbours:
    """The neighbour and forwarding tables of one namespace, by link index."""

    requests: int

    def __init__(self) -> None:
        self._neighbours: dict[int, dict[IPv4Address, str]] = {}
        self._fdb: dict[int, dict[str, IPv4Address]] = {}

    def _kind_of(self, index: int, what: str) -> str:
        """The kind of link ``index``; ENODEV when there is none (the namespace's to say)."""
        raise NotImplementedError

    def list_neighbours_index(self, index: int) -> list[Neighbour]:
        """The neighbours of a link, by address."""
        self.requests += 1
        table = self._neighbours.get(index, {})
        return [Neighbour(address, table[address]) for address in sorted(table)]

    def replace_neighbour_index(self, index: int, neighbour: Neighbour) -> None:
        """Create or replace a neighbour; ENODEV without the link."""
        self.requests += 1
        self._kind_of(index, f"replace neighbour {neighbour.address}")
        self._neighbours.setdefault(index, {})[neighbour.address] = neighbour.mac.lower()

    def remove_neighbour_index(self, index: int, address: IPv4Address) -> None:
        """Delete a neighbour; ENOENT when it is not there."""
        self.requests += 1
        what = f"delete neighbour {address}"
        self._kind_of(index, what)
        if self._neighbours.get(index, {}).pop(address, None) is None:
            raise NetlinkFailure(what, errno.ENOENT)

    def list_fdb_index(self, index: int) -> list[FdbEntry]:
        """The forwarding entries of a link, by MAC."""
        self.requests += 1
        table = self._fdb.get(index, {})
        return [FdbEntry(mac, table[mac]) for mac in sorted(table)]

    def replace_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """Create or replace the entry of a MAC; ENODEV without the link."""
        self.requests += 1
        self._vxlan(index, f"replace fdb {entry.mac}")
        self._fdb.setdefault(index, {})[entry.mac.lower()] = entry.host

    def remove_fdb_index(self, index: int, entry: FdbEntry) -> None:
        """Delete the entry of a MAC to a host; ENOENT when the MAC has none."""
        self.requests += 1
        what = f"delete fdb {entry.mac}"
        self._vxlan(index, what)
        table = self._fdb.get(index, {})
        mac = entry.mac.lower()
        if mac not in table:
            raise NetlinkFailure(what, errno.ENOENT)
        if table[mac] == entry.host:
            del table[mac]

    def _vxlan(self, index: int, what: str) -> None:
        if self._kind_of(index, what) != "vxlan":
            raise NetlinkFailure(what, errno.EOPNOTSUPP)

    def _link_down(self, index: int) -> None:
        """What a link loses going down: its neighbours."""
        self._neighbours.pop(index, None)

    def _link_gone(self, index: int) -> None:
        """What a link loses with itself: neighbours and forwarding entries."""
        self._neighbours.pop(index, None)
        self._fdb.pop(index, None)
