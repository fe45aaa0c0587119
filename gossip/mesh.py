"""The mesh core (sans-IO): which peers to connect to, what to tell them, and what follows.

Rules this module keeps:
- It never touches a socket or a clock. The driver (or the simulation) reports dials, connection
  ups and downs and decoded messages with ``now``; it takes encoded messages from ``outbox()``,
  the next deadline from ``get_timer()`` and events from ``events()``. Handshakes happen before
  ``connection_up``; this core sees only established connections, keyed by the driver's ids.
- Connections: at most ``conn_limit``; the mesh dials until it holds ``target_degree`` (about
  2 log2 N, so the control graph stays connected without every peer meeting every other).
  One connection per remote peer. Failed dials back off (gossip/dialer.py).
- Dissemination: changes are coalesced, pushed to a few random neighbours and repaired by
  digests (gossip/dissemination.py). A new connection starts with a DIGEST both ways.
- No message grows with N^2: a record is bounded by the connection limit, a TOPOLOGY carries at
  most ``max_records`` records (gossip/outbox.py), a DIGEST N small entries.
- Liveness, routes and forgetting peers follow the records (gossip/liveness.py); they are
  recomputed when coalesced changes are flushed and when peers are collected, every
  ``repair_interval``.
- A name is tied to its live connection, never to what a handshake claims (gossip/names.py;
  the connections holding names are kept by gossip/connections.py):
  a second connection claiming a held name is refused (reason "name_in_use") and never
  replaces the holder, unless the holder went silent for ``silence_timeout`` (it is closed,
  reason "silent") or both ends dialled at once (settled by the tie-break below). While
  connected, the name is bound in the topology to the live uid.
- No redial storms: a dial's backoff starts over only once its connection lasted
  ``stable_interval``; a dialled connection refused or closed sooner counts as a failed dial.
- Connections of peers that keep them alive are closed once silent (gossip/keepalive.py).
- Refused input is counted and reported through ``rejections`` (the topology's), with the
  ``label`` the driver gave each connection as its source.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from gossip.connections import Connections
from gossip.dialer import Address, Dialer
from gossip.dissemination import Dissemination
from gossip.events import MeshEvent, PeerForgotten, RecordUpdated
from gossip.keepalive import Keepalive
from gossip.liveness import Liveness
from gossip.names import Origin
from gossip.outbox import MeshStats, Outbox
from gossip.topology import Topology
from gossip.wire import MessageType


@dataclass(frozen=True)
class MeshConfig:
    """The mesh's tunables; the defaults suit clusters from a few to a few thousand peers."""

    conn_limit: int = 32  # control connections held at most; the degree grows as 2 log2 N
    gossip_interval: float = 0.2  # seconds changes are coalesced before they are pushed
    repair_interval: float = 5.0  # seconds between anti-entropy digests (jittered)
    max_records: int = 256  # records per TOPOLOGY message; more are split
    backoff_initial: float = 2.0  # seconds before the first redial of a failed address
    backoff_factor: float = 1.5  # growth of the redial delay per failure
    backoff_max: float = 360.0  # seconds: the redial delay's cap
    gc_timeout: float = 30.0  # seconds a peer may stay unreachable before it is forgotten
    stable_interval: float = 10.0  # seconds a dialled connection lasts before backoff resets
    keepalive_interval: float = 3.0  # seconds between KEEPALIVEs to peers that want them
    silence_timeout: float = 12.0  # seconds without a byte before such a connection is closed
    # Seconds after a connection came up in which a second one from the same peer (its uid,
    # its host) is taken as both ends dialling at once and settled by the tie-break; later,
    # it is refused while the first lives. Longer: slower handshakes still settle; shorter:
    # less time for a neighbour on that host to pose as the peer.
    settle_interval: float = 3.0


class Mesh:
    """The mesh core of one peer: connection choice, dissemination, liveness and routes."""

    def __init__(
        self,
        topology: Topology,
        config: MeshConfig | None = None,
        rng: random.Random | None = None,
        seeds: Iterable[Address] = (),
    ) -> None:
        self.topology = topology
        self.config = c = config or MeshConfig()
        self.rng = rng or random.Random()
        self.seeds = set(seeds)
        self._dialer = Dialer(c.backoff_initial, c.backoff_factor, c.backoff_max, self.rng)
        self._outbox = Outbox(c.max_records)
        self.stats: MeshStats = self._outbox.stats
        self._liveness = Liveness(topology.local.name, c.gc_timeout)
        self._gossip = Dissemination(
            topology, self._outbox, self.rng, c.gossip_interval, c.repair_interval
        )
        self._events: list[MeshEvent] = []
        self._last_now = 0.0
        self._evicted_at = float("-inf")
        self._candidates: tuple[set[Address], set[Address]] | None = None
        self.rejections = topology.rejections
        self._keepalive = Keepalive(c.keepalive_interval, c.silence_timeout)
        self._held = Connections(
            topology, self._keepalive, c.silence_timeout, c.settle_interval, self._recompute
        )
        self.conns = self._held.conns  # connection id -> remote name
        self.by_name = self._held.by_name
        self._dials: dict[Hashable, tuple[Address, float]] = {}  # dialled: (address, up at)

    @property
    def name(self) -> str:
        """Our own peer name."""
        return self.topology.local.name

    # -- dialing ------------------------------------------------------------------------------

    def target_degree(self) -> int:
        """How many connections the mesh dials for (about 2 log2 N, within the limit)."""
        n = max(2, len(self.topology.records))
        headroom = self.config.conn_limit - 1 if self.config.conn_limit > 2 else 1
        return min(headroom, n - 1, max(3, 2 * math.ceil(math.log2(n))))

    def dial_targets(self, now: float) -> list[Address]:
        """Addresses the driver should dial now (each is marked as being dialled).

        Up to ``target_degree`` connections from everything known; beyond that, up to the
        limit, one more towards a peer or seed the control graph does not reach (so two
        groups that filled their slots apart, say after a partition, join up again)."""
        self._last_now = now
        held = len(self.conns) + self._dialer.dialing()
        if held >= self.config.conn_limit:
            return []
        if self._candidates is None:
            self._candidates = self._dial_candidates()
        known, stranded = self._candidates
        chosen = self._dialer.ready(known, self.target_degree() - held, now)
        if held + len(chosen) < self.config.conn_limit and not any(a in stranded for a in chosen):
            chosen += self._dialer.ready(stranded - set(chosen), 1, now)
        self._dialer.start(chosen)
        return chosen

    def _dial_candidates(self) -> tuple[set[Address], set[Address]]:
        """(every address we could dial, those of peers and seeds we cannot reach)."""
        records = self.topology.records
        connected = {records[n].control_endpoint for n in self.by_name if n in records}
        connected |= set(self._held.dialled.values())  # before their records arrive
        live = {records[n].control_endpoint for n in self._liveness.live if n in records}
        known = set(self.seeds)
        known.update(
            r.control_endpoint for r in records.values() if r.name != self.name and not r.departed
        )
        known -= connected | {self.topology.local.control_endpoint}
        return known, known - live

    def set_seeds(self, seeds: Iterable[Address]) -> None:
        """Replace the seeds (say, with the addresses of the cluster's nodes as they come and
        go); peers already known stay dial targets through their records."""
        fresh = set(seeds)
        if fresh != self.seeds:
            self.seeds = fresh
            self._candidates = None

    def dial_failed(self, addr: Address, now: float) -> float:
        """Back off from ``addr``; returns when it may be tried again."""
        return self._dialer.failed(addr, now)

    # -- connections --------------------------------------------------------------------------

    def connection_up(
        self,
        conn: Hashable,
        remote: str,
        addr: Address | None,
        now: float,
        *,
        uid: int | None = None,
        label: str = "",
        keepalive: bool = False,
        host: str | None = None,
    ) -> bool:
        """An established, handshaken connection to ``remote`` (``uid`` from its handshake;
        ``keepalive`` when it keeps connections alive; ``host`` the address it came from or
        went to); False when the driver must close it now (the name is held by a live
        connection). At the connection limit it is accepted only to send our records, then
        listed by ``to_close``."""
        self._held.origins[conn] = Origin(label or remote, uid, host, now)
        if remote in self.by_name and not self._held.admit_duplicate(conn, remote, addr, now):
            del self._held.origins[conn]
            if addr is not None:
                self._dialer.failed(addr, now)
            return False
        if addr is not None:
            self._dialer.connected(addr)
            self._dials[conn] = (addr, now)
        if keepalive:
            self._keepalive.watch(conn, now)
        if conn in self.conns:  # replaced a duplicate
            return True
        if len(self.conns) >= self.config.conn_limit and not self._make_room(conn, remote, now):
            return True
        self._held.hold(conn, remote, addr, now)
        self._set_connections(now)
        self._gossip.send_digest(conn)
        return True

    def _make_room(self, conn: Hashable, remote: str, now: float) -> bool:
        """At the limit: True when a connection was evicted for ``conn``; False when ``conn``
        only gets our records and is closed."""
        if remote in self._liveness.live or now - self._evicted_at < self.config.repair_interval:
            # Full: still hand the newcomer what we know, so a peer whose only seed is busy
            # learns other addresses, then close.
            self._outbox.send_records(conn, self.topology.snapshot())
            self._held.closing.append(conn)
            return False
        # A peer our control graph does not reach (say, across a healed partition): make room
        # for it, or two full groups would never join again (at most one eviction per repair
        # interval, so a cold start through busy seeds does not churn).
        self._evicted_at = now
        self._held.evict_any(self.rng)
        return True

    def connection_down(self, conn: Hashable, now: float) -> None:
        """A connection closed, for whatever reason (unknown ids are ignored)."""
        dial = self._dials.pop(conn, None)
        if dial is not None:
            addr, up_at = dial
            if now - up_at >= self.config.stable_interval:
                self._dialer.succeeded(addr)
            else:
                self._dialer.failed(addr, now)
        remote = self._held.release(conn)
        self._held.origins.pop(conn, None)
        if remote is not None:
            self._set_connections(now)

    def _set_connections(self, now: float) -> None:
        self._candidates = None
        changed = self.topology.set_local(connections=tuple(sorted(self.by_name)))
        if changed is not None:
            self._gossip.queue([changed], now)

    # -- local changes ------------------------------------------------------------------------

    def set_local(self, now: float, **changes: Any) -> None:
        """Change our own record (blocks, unreachable, ...); gossiped after coalescing."""
        changed = self.topology.set_local(**changes)
        if changed is not None:
            self._gossip.queue([changed], now)

    def leave(self, now: float) -> None:
        """Clean departure: tell every neighbour at once."""
        record = self.topology.set_local(departed=True) or self.topology.local
        for conn in self.conns:
            self._outbox.send_records(conn, [record])
            self._outbox.send(conn, MessageType.GOODBYE)

    # -- receiving ----------------------------------------------------------------------------

    def receive(
        self, conn: Hashable, msg_type: int, fields: dict[str, Any], now: float, wall_ns: int
    ) -> None:
        """One decoded message, at ``now`` and the wall clock ``wall_ns`` (ns since the epoch:
        what records' incarnations are judged by). Malformed content raises ValueError: the
        driver closes that connection (and logs who and why); nothing else is disturbed."""
        self._keepalive.heard(conn, now)
        if conn not in self.conns:
            return
        source = self._held.label(conn, "")
        novel = self._gossip.receive(conn, msg_type, fields, now, wall_ns, source)
        if novel:
            self._candidates = None
            self._events += [RecordUpdated(r.name) for r in novel]

    # -- timers -------------------------------------------------------------------------------

    def get_timer(self) -> float:
        """When ``handle_timer`` must next be called."""
        deadlines = [self._gossip.repair_at, self._keepalive.send_at]
        if self._gossip.flush_at is not None:
            deadlines.append(self._gossip.flush_at)
        # Retries that come due later; ones already due are taken by the next dial_targets
        # (called after every input) as soon as there is room, so they need no wake-up.
        deadlines += self._dialer.retries_after(self._last_now)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Flush coalesced changes, send a repair digest and collect peers that are due."""
        self._last_now = now
        flush_at = self._gossip.flush_at
        if flush_at is not None and now >= flush_at:
            self._recompute(now)  # routes follow changes, coalesced like the gossip
            self._gossip.flush(self.conns)
        if now >= self._gossip.repair_at:
            self._gossip.repair(now, self.conns)
            self._collect(now)
        self._keep_alive(now)

    def _keep_alive(self, now: float) -> None:
        """Send the KEEPALIVEs due; close silent connections (gossip/keepalive.py)."""
        send, silent = self._keepalive.due(now)
        for conn in send:
            self._outbox.send(conn, MessageType.KEEPALIVE)
        for conn in silent:
            label = self._held.label(conn)
            detail = f"nothing heard for {self.config.silence_timeout:g}s"
            self.rejections.add("silent", label, detail)
            if self._held.release(conn) is not None:
                self._set_connections(now)
            self._held.closing.append(conn)

    # -- outputs ------------------------------------------------------------------------------

    def outbox(self) -> list[tuple[Hashable, bytes]]:
        """Encoded messages to send, as (connection id, bytes), drained by this call."""
        return self._outbox.drain()

    def to_close(self) -> list[Hashable]:
        """Connections to close once the outbox is sent (accepted past the limit)."""
        return self._held.take_closing()

    def events(self) -> list[MeshEvent]:
        """What happened since the last call, in order (see gossip.events)."""
        out, self._events = self._events, []
        return out

    def routes(self) -> dict[str, str]:
        """Destination -> next hop for every peer the data plane can reach."""
        return self._liveness.routes

    def live(self) -> set[str]:
        """Names the symmetric control graph reaches from us (us included), as of the last
        recomputation."""
        return self._liveness.live

    # -- liveness -----------------------------------------------------------------------------

    def _recompute(self, now: float) -> None:
        self._candidates = None
        self._events += self._liveness.recompute(self.topology.records, now)

    def _collect(self, now: float) -> None:
        """Forget peers that departed or stayed unreachable for gc_timeout."""
        for name in self._liveness.due(self.topology.records, now):
            self.topology.remove(name)
            self._liveness.forget(name)
            self._events.append(PeerForgotten(name))
        self._recompute(now)
