"""The mesh's established connections (sans-IO): which connection holds which peer's name, where
each came from, which we dialled, and which are to be closed.

Rules this module keeps:
- One connection per name: ``conns`` and ``by_name`` are each other's inverse. While a
  connection holds a name, the name is bound in the topology to the uid its handshake gave;
  releasing the connection unbinds it.
- A second connection claiming a held name is admitted only by the rule of gossip/names.py:
  the holder went silent (it is released and closed, counted "silent") or both ends dialled at
  once (the tie-break keeps, at both ends, the connection the lower name initiated); any other
  claim is refused, counted "name_in_use".
- A released connection is listed in ``closing`` for the driver to close; nothing here sends.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable

from gossip.dialer import Address
from gossip.keepalive import Keepalive
from gossip.names import Origin, claim
from gossip.rejections import Rejections
from gossip.topology import Topology


class Connections:
    """Who holds which name among the established connections, and where each came from."""

    def __init__(
        self,
        topology: Topology,
        keepalive: Keepalive,
        silence_timeout: float,
        settle_interval: float,
        on_bound: Callable[[float], None],
    ) -> None:
        self.topology = topology
        self.keepalive = keepalive
        self.silence_timeout = silence_timeout
        self.settle_interval = settle_interval
        self.on_bound = on_bound  # called with ``now`` when a hold changed a binding
        self.rejections: Rejections = topology.rejections
        self.conns: dict[Hashable, str] = {}  # connection id -> remote name
        self.by_name: dict[str, Hashable] = {}
        self.origins: dict[Hashable, Origin] = {}  # connection id -> label, uid, host, up at
        self.dialled: dict[Hashable, Address] = {}  # connections we initiated -> address
        self.closing: list[Hashable] = []

    def label(self, conn: Hashable, unknown: str = "?") -> str:
        """The label the driver gave ``conn``, or ``unknown``."""
        origin = self.origins.get(conn)
        return unknown if origin is None else origin.label

    def hold(self, conn: Hashable, remote: str, addr: Address | None, now: float) -> None:
        """``conn`` holds ``remote``'s name (``addr`` when we dialled it)."""
        self.conns[conn] = remote
        self.by_name[remote] = conn
        if addr is not None:
            self.dialled[conn] = addr
        uid = self.origins[conn].uid
        if uid is not None and self.topology.bind(remote, uid) is not None:
            self.on_bound(now)  # routes never lead to a record that is gone

    def release(self, conn: Hashable) -> str | None:
        """Stop holding ``conn`` (it is closing): its name is free again."""
        self.dialled.pop(conn, None)
        self.keepalive.forget(conn)
        remote = self.conns.pop(conn, None)
        if remote is not None:
            del self.by_name[remote]
            origin = self.origins.get(conn)
            if origin is not None and origin.uid is not None:
                self.topology.unbind(remote, origin.uid)
        return remote

    def evict(self, conn: Hashable) -> None:
        """Release ``conn`` and list it to be closed."""
        self.release(conn)
        self.closing.append(conn)

    def take_closing(self) -> list[Hashable]:
        """Connections to close, drained by this call."""
        out, self.closing = self.closing, []
        return out

    def admit_duplicate(
        self, conn: Hashable, remote: str, addr: Address | None, now: float
    ) -> bool:
        """A second connection claiming a connected name: True when it may hold the name
        (gossip/names.py: the holder went silent, or it won the tie-break of a simultaneous
        dial)."""
        old = self.by_name[remote]
        holder, newcomer = self.origins[old], self.origins[conn]
        silent = self.keepalive.silent_for(old, now)
        verdict = claim(holder, newcomer, silent, self.silence_timeout, self.settle_interval)
        if verdict == "take":
            detail = f"nothing heard for {silent:g}s; {newcomer.label} takes {remote}"
            self.rejections.add("silent", holder.label, detail)
            self.evict(old)
            return True
        if verdict == "settle":
            return self._settle_duplicate(conn, remote, addr, now)
        detail = f"{remote} is held by a live connection ({holder.label})"
        self.rejections.add("name_in_use", newcomer.label, detail)
        return False

    def _settle_duplicate(
        self, conn: Hashable, remote: str, addr: Address | None, now: float
    ) -> bool:
        """Both ends dialled at once: both keep the connection the lower name initiated, so
        they never each keep a different one and close the other. True: keep ``conn``."""
        outbound = addr is not None
        old = self.by_name[remote]
        local = self.topology.local.name
        keep_new = (outbound != (old in self.dialled)) and (
            (local if outbound else remote) < (remote if outbound else local)
        )
        if not keep_new:
            return False
        self.evict(old)
        self.hold(conn, remote, addr, now)
        return True

    def evict_any(self, rng: random.Random) -> None:
        """Make room: release and close one held connection chosen by ``rng``."""
        self.evict(rng.choice(sorted(self.conns, key=str)))
