"""Which peers are live from here, since when the others are not, and the routes that follow
(sans-IO).

Rules this module keeps:
- A peer is live while the symmetric control graph reaches it from us: a connection counts
  when both ends list it and the far end has not departed.
- Routes (next hops, gossip/routes.py) are recomputed with liveness. When they change, every
  peer that gained a route is reported (``PeerReachable``), then every peer that lost one
  (``PeerUnreachable``), each in name order, then one ``RoutesChanged``.
- A peer is due to be forgotten once its record says it departed, or once it stayed
  unreachable for ``gc_timeout``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gossip import routes
from gossip.events import MeshEvent, PeerReachable, PeerUnreachable, RoutesChanged
from gossip.topology import PeerRecord


class Liveness:
    """One peer's view of who is live and how to reach them, rebuilt from the records."""

    def __init__(self, name: str, gc_timeout: float) -> None:
        self.name = name
        self.gc_timeout = gc_timeout
        self.live: set[str] = {name}  # as of the last recomputation
        self.routes: dict[str, str] = {}  # destination -> next hop
        self._unseen_since: dict[str, float] = {}

    def recompute(self, records: Mapping[str, PeerRecord], now: float) -> list[MeshEvent]:
        """Follow the records: liveness, unseen times and routes; the events of the change."""
        live = self.live = reachable(self.name, records)
        for name in records:
            if name in live:
                self._unseen_since.pop(name, None)
            else:
                self._unseen_since.setdefault(name, now)
        routes_now = routes.next_hops(self.name, records, live)
        if routes_now == self.routes:
            return []
        added = routes_now.keys() - self.routes.keys()
        removed = self.routes.keys() - routes_now.keys()
        events: list[MeshEvent] = [PeerReachable(n) for n in sorted(added)]
        events += [PeerUnreachable(n) for n in sorted(removed)]
        events.append(RoutesChanged())
        self.routes = routes_now
        return events

    def due(self, records: Mapping[str, PeerRecord], now: float) -> list[str]:
        """Peers to forget at ``now``, in the records' order (never ourselves)."""
        out = []
        for name, record in records.items():
            if name == self.name:
                continue
            since = self._unseen_since.get(name)
            if record.departed or (since is not None and now - since >= self.gc_timeout):
                out.append(name)
        return out

    def forget(self, name: str) -> None:
        """``name`` was forgotten: stop timing its absence."""
        self._unseen_since.pop(name, None)


def reachable(name: str, records: Mapping[str, PeerRecord]) -> set[str]:
    """Names the symmetric control graph reaches from ``name`` (``name`` included)."""
    seen = {name}
    todo = [name]
    while todo:
        record = records.get(todo.pop())
        if record is None:
            continue
        for other in record.connections:
            peer = records.get(other)
            if other not in seen and peer and not peer.departed and record.name in peer.connections:
                seen.add(other)
                todo.append(other)
    return seen
