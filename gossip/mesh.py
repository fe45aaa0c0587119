"""The mesh core (sans-IO): which peers to connect to, what to tell them, and what follows.

Rules this module keeps:
- It never touches a socket or a clock. The driver (or the simulation) reports dials, connection
  ups and downs and decoded messages with ``now``; it takes encoded messages from ``outbox()``,
  the next deadline from ``get_timer()`` and events from ``events()``. Handshakes happen before
  ``connection_up``; this core sees only established connections, keyed by the driver's ids.
- Connections: at most ``conn_limit``; the mesh dials until it holds ``target_degree`` (about
  2 log2 N, so the control graph stays connected without every peer meeting every other).
  One connection per remote peer. Failed dials back off exponentially with jitter (Weave's
  2 s x1.5 up to 6 minutes).
- Dissemination: local changes and merged novelty are coalesced for ``gossip_interval`` and
  pushed as TOPOLOGY deltas to ``fanout`` (about log2 N) random neighbours; only novelty is
  forwarded again. Anti-entropy repairs what pushes missed: every ``repair_interval`` one
  random neighbour gets a DIGEST (name -> stamp) and answers with what is newer on its side
  plus a REQUEST for what is newer on ours. A new connection starts with a DIGEST both ways.
- No message grows with N^2: a record is bounded by the connection limit, a TOPOLOGY carries at
  most ``max_records`` records, a DIGEST N small entries.
- Liveness: a peer is live while the symmetric control graph (both ends list the connection)
  reaches it from us. Peers unreachable for ``gc_timeout`` are forgotten. A departed record
  (clean shutdown) is removed at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossip import routes, wire
from gossip.events import (
    MeshEvent,
    PeerForgotten,
    PeerReachable,
    PeerUnreachable,
    RecordUpdated,
    RoutesChanged,
)
from gossip.topology import PeerRecord, Topology
from gossip.wire import MessageType

Address = tuple[str, int]


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


@dataclass
class _Target:
    attempts: int = 0
    next_try_at: float = 0.0
    dialing: bool = False


@dataclass
class MeshStats:
    """What the mesh has sent, for the gossip benchmark and the status views."""

    bytes_sent: int = 0
    messages_sent: int = 0
    largest_message: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


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
        self.config = config or MeshConfig()
        self.rng = rng or random.Random()
        self.seeds = set(seeds)
        self.conns: dict[Hashable, str] = {}  # connection id -> remote name
        self.by_name: dict[str, Hashable] = {}
        self.stats = MeshStats()
        self._targets: dict[Address, _Target] = {}
        self._outbox: list[tuple[Hashable, bytes]] = []
        self._events: list[MeshEvent] = []
        self._pending: dict[str, PeerRecord] = {}
        self._flush_at: float | None = None
        self._repair_at = 0.0
        self._unseen_since: dict[str, float] = {}
        self._routes: dict[str, str] = {}
        self._last_now = 0.0
        self._live: set[str] = {topology.local.name}
        self._closing: list[Hashable] = []
        self._evicted_at = float("-inf")
        self._dialled: dict[Hashable, Address] = {}  # connections we initiated -> address
        self._candidates: tuple[set[Address], set[Address]] | None = None
        self._wire_cache: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    @property
    def name(self) -> str:
        """Our own peer name."""
        return self.topology.local.name

    # -- connections --------------------------------------------------------------------------

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
        dialing = sum(1 for t in self._targets.values() if t.dialing)
        held = len(self.conns) + dialing
        if held >= self.config.conn_limit:
            return []
        if self._candidates is None:
            self._candidates = self._dial_candidates()
        known, stranded = self._candidates
        chosen = self._pick(known, self.target_degree() - held, now)
        if held + len(chosen) < self.config.conn_limit and not any(a in stranded for a in chosen):
            chosen += self._pick(stranded - set(chosen), 1, now)
        for addr in chosen:
            self._targets[addr].dialing = True
        return chosen

    def _dial_candidates(self) -> tuple[set[Address], set[Address]]:
        """(every address we could dial, those of peers and seeds we cannot reach)."""
        records = self.topology.records
        connected = {records[n].control_endpoint for n in self.by_name if n in records}
        connected |= set(self._dialled.values())  # before their records arrive
        live = {records[n].control_endpoint for n in self._live if n in records}
        known = set(self.seeds)
        known.update(
            r.control_endpoint for r in records.values() if r.name != self.name and not r.departed
        )
        known -= connected | {self.topology.local.control_endpoint}
        return known, known - live

    def _pick(self, addresses: set[Address], room: int, now: float) -> list[Address]:
        if room <= 0 or not addresses:
            return []
        ready = []
        for addr in sorted(addresses):
            target = self._targets.setdefault(addr, _Target())
            if not target.dialing and target.next_try_at <= now:
                ready.append(addr)
        self.rng.shuffle(ready)
        return ready[:room]

    def dial_failed(self, addr: Address, now: float) -> float:
        """Back off from ``addr``; returns when it may be tried again."""
        target = self._targets.setdefault(addr, _Target())
        target.dialing = False
        c = self.config
        delay = min(c.backoff_max, c.backoff_initial * c.backoff_factor**target.attempts)
        target.attempts += 1
        target.next_try_at = now + delay * self.rng.uniform(0.8, 1.2)
        return target.next_try_at

    def connection_up(self, conn: Hashable, remote: str, addr: Address | None, now: float) -> bool:
        """An established, handshaken connection; False when the driver must close it now
        (already connected to that peer). At the connection limit it is accepted only to send
        our records, then listed by ``to_close``."""
        if addr is not None and addr in self._targets:
            self._targets[addr] = _Target()  # success resets the backoff
        outbound = addr is not None
        if remote in self.by_name:
            # Both ends dialled at once: both keep the connection the lower name initiated,
            # so they never each keep a different one and close the other.
            old = self.by_name[remote]
            keep_new = (outbound != (old in self._dialled)) and (
                (self.name if outbound else remote) < (remote if outbound else self.name)
            )
            if not keep_new:
                return False
            del self.conns[old]
            self._dialled.pop(old, None)
            self._closing.append(old)
            self.conns[conn] = remote
            self.by_name[remote] = conn
            if addr is not None:
                self._dialled[conn] = addr
            return True
        if len(self.conns) >= self.config.conn_limit:
            if remote in self._live or now - self._evicted_at < self.config.repair_interval:
                # Full: still hand the newcomer what we know, so a peer whose only seed is
                # busy learns other addresses, then close.
                self._send_records(conn, self.topology.snapshot())
                self._closing.append(conn)
                return True
            # A peer our control graph does not reach (say, across a healed partition): make
            # room for it, or two full groups would never join again (at most one eviction
            # per repair interval, so a cold start through busy seeds does not churn).
            self._evicted_at = now
            evicted = self.rng.choice(sorted(self.conns, key=str))
            self._dialled.pop(evicted, None)
            del self.by_name[self.conns.pop(evicted)]
            self._closing.append(evicted)
        self.conns[conn] = remote
        self.by_name[remote] = conn
        if addr is not None:
            self._dialled[conn] = addr
        self._set_connections(now)
        self._send(conn, MessageType.DIGEST, digest=self._digest())
        return True

    def connection_down(self, conn: Hashable, now: float) -> None:
        """A connection closed, for whatever reason (unknown ids are ignored)."""
        self._dialled.pop(conn, None)
        remote = self.conns.pop(conn, None)
        if remote is None:
            return
        del self.by_name[remote]
        self._set_connections(now)

    def _set_connections(self, now: float) -> None:
        self._candidates = None
        changed = self.topology.set_local(connections=tuple(sorted(self.by_name)))
        if changed is not None:
            self._queue([changed], now)

    # -- local changes ------------------------------------------------------------------------

    def set_local(self, now: float, **changes: Any) -> None:
        """Change our own record (blocks, unreachable, ...); gossiped after coalescing."""
        changed = self.topology.set_local(**changes)
        if changed is not None:
            self._queue([changed], now)

    def leave(self, now: float) -> None:
        """Clean departure: tell every neighbour at once."""
        record = self.topology.set_local(departed=True) or self.topology.local
        for conn in self.conns:
            self._send_records(conn, [record])
            self._send(conn, MessageType.GOODBYE)

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, conn: Hashable, msg_type: int, fields: dict[str, Any], now: float) -> None:
        """One decoded message. Malformed content raises ValueError: the driver closes that
        connection (and logs who and why); nothing else is disturbed."""
        if conn not in self.conns:
            return
        if msg_type == MessageType.TOPOLOGY:
            records = [
                PeerRecord.from_wire(d) for d in _list(fields, "records") if not self._stale(d)
            ]
            novel = self.topology.merge(records)
            if novel:
                self._candidates = None
                self._queue(novel, now)
                self._events += [RecordUpdated(r.name) for r in novel]
        elif msg_type == MessageType.DIGEST:
            digest = _digest_from_wire(fields.get("digest"))
            self._send_records(conn, self.topology.newer_than(digest))
            wanted = self.topology.wanted(digest)
            if wanted:
                self._send(conn, MessageType.REQUEST, names=wanted)
        elif msg_type == MessageType.REQUEST:
            names = [n for n in _list(fields, "names") if isinstance(n, str)]
            found = [self.topology.records[n] for n in names if n in self.topology.records]
            self._send_records(conn, found)
        # GOODBYE and unknown types need nothing here: the departed record arrives as
        # TOPOLOGY and the leaving peer closes the connection.

    def _stale(self, d: Any) -> bool:
        """A record we already hold in this or a newer version: skip decoding it (most of
        what gossip brings is such echoes). Anything odd is decoded and judged in full."""
        if not isinstance(d, dict):
            return False
        name, i, v = d.get("n"), d.get("i"), d.get("v")
        mine = self.topology.records.get(name) if isinstance(name, str) else None
        if mine is None or type(i) is not int or type(v) is not int:
            return False
        return (i, v) < mine.stamp or ((i, v) == mine.stamp and d.get("u") == mine.uid)

    # -- timers -------------------------------------------------------------------------------

    def get_timer(self) -> float:
        """When ``handle_timer`` must next be called."""
        deadlines = [self._repair_at]
        if self._flush_at is not None:
            deadlines.append(self._flush_at)
        # Retries that come due later; ones already due are taken by the next dial_targets
        # (called after every input) as soon as there is room, so they need no wake-up.
        deadlines += [
            t.next_try_at
            for t in self._targets.values()
            if not t.dialing and t.next_try_at > self._last_now
        ]
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Flush coalesced changes, send a repair digest and collect peers that are due."""
        self._last_now = now
        if self._flush_at is not None and now >= self._flush_at:
            self._flush(now)
        if now >= self._repair_at:
            self._repair_at = now + self.config.repair_interval * self.rng.uniform(0.8, 1.2)
            if self.conns:
                conn = self.rng.choice(sorted(self.conns, key=str))
                self._send(conn, MessageType.DIGEST, digest=self._digest())
            self._collect(now)

    # -- outputs ------------------------------------------------------------------------------

    def outbox(self) -> list[tuple[Hashable, bytes]]:
        """Encoded messages to send, as (connection id, bytes), drained by this call."""
        out, self._outbox = self._outbox, []
        return out

    def to_close(self) -> list[Hashable]:
        """Connections to close once the outbox is sent (accepted past the limit)."""
        out, self._closing = self._closing, []
        return out

    def events(self) -> list[MeshEvent]:
        """What happened since the last call, in order (see gossip.events)."""
        out, self._events = self._events, []
        return out

    def routes(self) -> dict[str, str]:
        """Destination -> next hop for every peer the data plane can reach."""
        return self._routes

    def live(self) -> set[str]:
        """Names the symmetric control graph reaches from us (us included), as of the last
        recomputation."""
        return self._live

    def _reachable(self) -> set[str]:
        records = self.topology.records
        seen = {self.name}
        todo = [self.name]
        while todo:
            record = records.get(todo.pop())
            if record is None:
                continue
            for other in record.connections:
                peer = records.get(other)
                if (
                    other not in seen
                    and peer
                    and not peer.departed
                    and record.name in peer.connections
                ):
                    seen.add(other)
                    todo.append(other)
        return seen

    # -- internals ----------------------------------------------------------------------------

    def _queue(self, records: list[PeerRecord], now: float) -> None:
        for record in records:
            self._pending[record.name] = record
        if self._flush_at is None:
            self._flush_at = now + self.config.gossip_interval

    def _flush(self, now: float) -> None:
        pending = [self.topology.records.get(n, r) for n, r in self._pending.items()]
        self._pending.clear()
        self._flush_at = None
        self._recompute(now)  # routes follow changes, coalesced like the gossip
        conns = sorted(self.conns, key=str)
        n = max(2, len(self.topology.records))
        fanout = min(len(conns), math.ceil(math.log2(n)) + 1)
        for conn in self.rng.sample(conns, fanout):
            self._send_records(conn, pending)

    def _send_records(self, conn: Hashable, records: list[PeerRecord]) -> None:
        step = self.config.max_records
        for at in range(0, len(records), step):
            chunk = [self._packed(r) for r in records[at : at + step]]
            self._emit(
                conn, MessageType.TOPOLOGY, wire.encode_list(MessageType.TOPOLOGY, "records", chunk)
            )

    def _packed(self, record: PeerRecord) -> bytes:
        """A record packed for the wire, once per version (records are resent often)."""
        key = (record.name, record.stamp, record.uid)
        found = self._wire_cache.get(record.name)
        if found is None or found[0] != key:
            packed = msgpack.packb(record.to_wire(), use_bin_type=True)
            found = self._wire_cache[record.name] = (key, packed)
        return found[1]

    def _send(self, conn: Hashable, msg_type: MessageType, **fields: Any) -> None:
        self._emit(conn, msg_type, wire.encode(msg_type, **fields))

    def _emit(self, conn: Hashable, msg_type: MessageType, data: bytes) -> None:
        self._outbox.append((conn, data))
        s = self.stats
        s.bytes_sent += len(data)
        s.messages_sent += 1
        s.largest_message = max(s.largest_message, len(data))
        s.by_type[msg_type.name] = s.by_type.get(msg_type.name, 0) + len(data)

    def _digest(self) -> dict[str, list[int]]:
        return {name: list(stamp) for name, stamp in self.topology.digest().items()}

    def _recompute(self, now: float) -> None:
        live = self._live = self._reachable()
        self._candidates = None
        for name in self.topology.records:
            if name in live:
                self._unseen_since.pop(name, None)
            else:
                self._unseen_since.setdefault(name, now)
        routes_now = routes.next_hops(self.name, self.topology.records, live)
        if routes_now != self._routes:
            added = routes_now.keys() - self._routes.keys()
            removed = self._routes.keys() - routes_now.keys()
            self._events += [PeerReachable(n) for n in sorted(added)]
            self._events += [PeerUnreachable(n) for n in sorted(removed)]
            self._events.append(RoutesChanged())
            self._routes = routes_now

    def _collect(self, now: float) -> None:
        """Forget peers that departed or stayed unreachable for gc_timeout."""
        records = self.topology.records
        for name in list(records):
            if name == self.name:
                continue
            since = self._unseen_since.get(name)
            if records[name].departed or (
                since is not None and now - since >= self.config.gc_timeout
            ):
                self.topology.remove(name)
                self._unseen_since.pop(name, None)
                self._events.append(PeerForgotten(name))
        self._recompute(now)


def _list(fields: dict[str, Any], key: str) -> list[Any]:
    value = fields.get(key)
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} is not a list")
    return value


def _digest_from_wire(value: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(value, dict):
        raise ValueError("digest is not a map")
    out = {}
    for name, stamp in value.items():
        if (
            not isinstance(name, str) or not isinstance(stamp, list | tuple) or len(stamp) != 2
            or not all(isinstance(x, int) for x in stamp)
        ):  # fmt: skip
            raise ValueError("digest entry is not name -> [incarnation, version]")
        out[name] = (stamp[0], stamp[1])
    return out
