"""Links of the sleeve driver: a send-only UDP socket connected to each peer endpoint that
data goes to (see udp.open_udp), so a send parses no address and looks up no route.

Links open on first send to a current peer endpoint and close when the endpoint is no longer
one. The main socket stands in when there is no ``connect`` factory, for any other address,
and when a link cannot be opened (logged once per endpoint). Everything is received on the
main socket; control datagrams are sent from it too (acks answer the source address).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from overlay.frame import Buffer
from overlay.udp import Address, Cmsg, UdpSocket

log = logging.getLogger("weave-py.sleeve")
Connect = Callable[[Address], UdpSocket]  # opens a send-only socket connected to an endpoint


class Links:
    """The sockets data leaves by: one link per current peer endpoint, else ``main``."""

    def __init__(self, main: UdpSocket, connect: Connect | None) -> None:
        self.main = main
        self._connect = connect
        self._links: dict[Address, UdpSocket] = {}
        self._endpoints: set[Address] = set()

    def sendmsg(self, parts: Sequence[Buffer], cmsgs: Sequence[Cmsg], addr: Address) -> None:
        """Send to ``addr`` by its link, else by the main socket; OSError is the caller's."""
        link = self._links.get(addr) or self._open(addr)
        if link is self.main:
            link.sendmsg(parts, cmsgs, 0, addr)
        else:
            link.sendmsg(parts, cmsgs)

    def sync(self, endpoints: set[Address]) -> None:
        """Keep links to ``endpoints`` only (the peers' send_to); close the others."""
        self._endpoints = endpoints
        for addr in [a for a in self._links if a not in endpoints]:
            link = self._links.pop(addr)
            if link is not self.main:
                link.close()

    def _open(self, addr: Address) -> UdpSocket:
        if self._connect is None or addr not in self._endpoints:
            return self.main  # not a current peer endpoint: not kept
        try:
            link = self._connect(addr)
        except OSError as exc:
            log.warning("link to %s:%d: %s; sending by the main socket", *addr, exc)
            link = self.main
        self._links[addr] = link
        return link
