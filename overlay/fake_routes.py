"""The main routing table in memory, the ``overlay.kernel.RouteTable`` part of
``overlay.fake_netns.FakeNetns``: the routes it stores (ours, by destination) and the connected
routes of its links' primary addresses, checked as the kernel checks them (see the namespace's
docstring for the rules)."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network

from overlay.fake_device import LOOPBACK, FakeDevice
from overlay.netdev import RTPROT_KERNEL, RTPROT_WEAVE_PY, NetlinkFailure, RouteEntry


def _table_order(e: RouteEntry) -> tuple[int, int, int]:
    return (int(e.destination.network_address), e.destination.prefixlen, e.index)


class FakeRoutes:
    """The main table of one namespace over its links (``_devices``, the namespace's)."""

    requests: int
    _devices: dict[int, FakeDevice]

    def __init__(self) -> None:
        self._routes: dict[IPv4Network, RouteEntry] = {}
        # the kernel makes the local table with the first local address (or loopback up) and
        # judges an onlink gateway by it: without one, every gateway reads as not unicast
        self._local_table = False

    def _device(self, index: int, what: str) -> FakeDevice:
        if index not in self._devices:
            raise NetlinkFailure(what, errno.ENODEV)
        return self._devices[index]

    def list_route_entries(self, protocol: int | None = RTPROT_WEAVE_PY) -> list[RouteEntry]:
        """The main table, in address order."""
        self.requests += 1
        return [e for e in self._table() if protocol is None or e.protocol == protocol]

    def replace_route_index(
        self,
        destination: IPv4Network,
        index: int,
        gateway: IPv4Address | None = None,
        protocol: int = RTPROT_WEAVE_PY,
        onlink: bool = False,
    ) -> None:
        """Store a route per destination, checked as the kernel checks it."""
        self.requests += 1
        what = f"replace route {destination}"
        device = self._device(index, what)
        if not device.up:
            raise NetlinkFailure(what, errno.ENETDOWN)
        if onlink and (gateway is None or not self._local_table or self._is_local(gateway)):
            raise NetlinkFailure(what, errno.EINVAL)
        if not onlink and gateway is not None and not self._reaches(device, gateway):
            raise NetlinkFailure(what, errno.ENETUNREACH)
        self._routes[destination] = RouteEntry(destination, index, gateway, protocol, onlink)

    def remove_route_index(
        self, destination: IPv4Network, index: int, protocol: int = RTPROT_WEAVE_PY
    ) -> None:
        """Delete a stored route; ESRCH unless destination, link and protocol match."""
        self.requests += 1
        found = self._routes.get(destination)
        if found is None or (found.index, found.protocol) != (index, protocol):
            raise NetlinkFailure(f"delete route {destination}", errno.ESRCH)
        del self._routes[destination]

    def _reaches(self, device: FakeDevice, gateway: IPv4Address) -> bool:
        return any(gateway in a.network for a in device.connected())

    def _is_local(self, address: IPv4Address) -> bool:
        return any(address == a.ip for d in self._devices.values() for a in d.addresses)

    def route_index(self, destination: IPv4Address) -> int | None:
        """A local address: the loopback; else the longest matching prefix."""
        self.requests += 1
        if self._is_local(destination):
            return LOOPBACK
        matches = [e for e in self._table() if destination in e.destination]
        best = max(matches, key=lambda e: e.destination.prefixlen, default=None)
        return best.index if best is not None else None

    def _table(self) -> list[RouteEntry]:
        """The main table: our stored routes and the connected routes they do not replace."""
        entries = list(self._routes.values())
        for device in self._devices.values():
            for address in device.connected():
                if address.network not in self._routes:
                    entries.append(RouteEntry(address.network, device.index, None, RTPROT_KERNEL))
        return sorted(entries, key=_table_order)

    def _flush_routes(self, index: int) -> None:
        """Forget the routes via link ``index`` (it went down, away, or lost its addresses)."""
        self._routes = {d: e for d, e in self._routes.items() if e.index != index}
