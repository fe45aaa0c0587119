"""N mesh cores on a virtual clock, encoded bytes carried between them: the harness of the
mesh's simulation tests and of ``python -m bench.gossip``.

Connections are modelled the way TCP behaves for the mesh: a dial to a live, reachable peer
succeeds after one latency; bytes arrive in order after one latency, through a real
``wire.Decoder`` per direction; a kill, a partition or a refusal closes connections and both
ends hear of it. Loss is modelled as connections breaking (``drop_links``), since TCP itself
never loses bytes silently. Everything random comes from one seeded ``random.Random``.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gossip import identity, wire
from gossip.mesh import Mesh, MeshConfig
from gossip.topology import PeerRecord, Topology

Address = tuple[str, int]


@dataclass
class SimPeer:
    """One simulated peer: its mesh core, whether it runs, and its connections' decoders."""

    index: int
    address: Address
    mesh: Mesh
    alive: bool = True
    wake_at: float | None = None
    decoders: dict[Any, wire.Decoder] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The peer's name."""
        return self.mesh.name

    @property
    def uid(self) -> int:
        """The uid of the peer's process (what its handshake gives)."""
        return self.mesh.topology.local.uid


class Sim:
    """A cluster of ``n`` peers, each starting with ``seeds_per_peer`` others' addresses."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        config: MeshConfig | None = None,
        seeds_per_peer: int = 1,
        latency: float = 0.002,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or MeshConfig()
        self.latency = latency
        self.now = 0.0
        self.peers: list[SimPeer] = []
        self.groups: dict[int, int] | None = None  # partition: peer index -> group
        self.links: dict[Any, tuple[int, int]] = {}  # conn id -> (owner, other end)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._conn_ids = itertools.count()
        self._pair: dict[Any, Any] = {}  # conn id -> the other end's conn id
        self.seeds_per_peer = seeds_per_peer
        for i in range(n):
            self.peers.append(self._make_peer(i, incarnation=1))

    # -- building -----------------------------------------------------------------------------

    def address(self, i: int) -> Address:
        """Peer ``i``'s control (and data) address."""
        return (f"10.0.{i // 250}.{i % 250 + 1}", 6783)

    def _make_peer(self, i: int, incarnation: int) -> SimPeer:
        nick = f"n{i}"
        record = PeerRecord(
            name=identity.name_for(nick), nickname=nick, incarnation=incarnation, version=1,
            uid=self.rng.getrandbits(63), data_endpoint=self.address(i),
            control_endpoint=self.address(i),
        )  # fmt: skip
        others = [k for k in range(len(self.peers)) if k != i] if i == 0 else list(range(i))
        count = min(len(others), self.seeds_per_peer)
        seeds = [self.address(k) for k in self.rng.sample(others, count)]
        mesh = Mesh(Topology(record), self.config, random.Random(self.rng.getrandbits(32)), seeds)
        peer = SimPeer(i, self.address(i), mesh)
        self._schedule_wake(peer, self.now)
        return peer

    # -- events -------------------------------------------------------------------------------

    @property
    def wall_ns(self) -> int:
        """The virtual wall clock: ns since the simulation started (a restart's incarnation)."""
        return int(self.now * 1e9)

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Schedule ``action`` at virtual time ``when``."""
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def run(self, until: float, check: Callable[[Sim], None] | None = None) -> None:
        """Process events up to virtual time ``until``; ``check`` runs after each one."""
        while self._queue and self._queue[0][0] <= until:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
            if check is not None:
                check(self)
        self.now = until

    def run_until(
        self, done: Callable[[Sim], bool], limit: float, step: float = 0.05
    ) -> float | None:
        """Advance until ``done`` holds (checked every ``step``); the time, or None."""
        while self.now < limit:
            self.run(self.now + step)
            if done(self):
                return self.now
        return None

    def _schedule_wake(self, peer: SimPeer, when: float) -> None:
        if peer.wake_at is not None and peer.wake_at <= when:
            return
        peer.wake_at = when
        self.at(when, lambda: self._wake(peer, when))

    def _wake(self, peer: SimPeer, when: float) -> None:
        if peer.wake_at != when or not peer.alive:
            return
        peer.wake_at = None
        peer.mesh.handle_timer(self.now)
        self._after(peer)

    def set_local(self, peer: SimPeer, **changes: Any) -> None:
        """Change ``peer``'s own record now (see ``Mesh.set_local``) and carry it out."""
        peer.mesh.set_local(self.now, **changes)
        self._after(peer)

    def _after(self, peer: SimPeer) -> None:
        """Carry out what the core asked for, then re-arm its timer."""
        if not peer.alive:
            return
        for addr in peer.mesh.dial_targets(self.now):
            self.at(self.now + self.latency, functools.partial(self._connect, peer, addr))
        for conn, data in peer.mesh.outbox():
            self._transmit(peer, conn, data)
        for conn in peer.mesh.to_close():
            self.at(self.now + 2 * self.latency, functools.partial(self._close, conn))
        peer.mesh.events()
        self._schedule_wake(peer, max(self.now, peer.mesh.get_timer()))

    # -- connections --------------------------------------------------------------------------

    def _find(self, addr: Address) -> SimPeer | None:
        for p in self.peers:
            if p.address == addr:
                return p
        return None

    def reachable(self, a: int, b: int) -> bool:
        """Whether peers ``a`` and ``b`` are on the same side of the partition, if any."""
        return self.groups is None or self.groups.get(a) == self.groups.get(b)

    def _connect(self, peer: SimPeer, addr: Address) -> None:
        if not peer.alive:
            return
        other = self._find(addr)
        if other is None or not other.alive or not self.reachable(peer.index, other.index):
            peer.mesh.dial_failed(addr, self.now)
            self._after(peer)
            return
        mine, theirs = next(self._conn_ids), next(self._conn_ids)
        self.links[mine] = (peer.index, other.index)
        self.links[theirs] = (other.index, peer.index)
        self._pair[mine], self._pair[theirs] = theirs, mine
        peer.decoders[mine], other.decoders[theirs] = wire.Decoder(), wire.Decoder()
        ok_theirs = other.mesh.connection_up(
            theirs, peer.name, None, self.now, uid=peer.uid, host=peer.address[0]
        )
        ok_mine = ok_theirs and peer.mesh.connection_up(
            mine, other.name, addr, self.now, uid=other.uid, host=addr[0]
        )
        if not ok_mine:
            if not ok_theirs:
                peer.mesh.dial_failed(addr, self.now)
            self._close(mine, notify_owner=ok_mine)
        self._after(other)
        self._after(peer)

    def close(self, conn: Any) -> None:
        """Close both ends of connection ``conn`` (as a driver does after a malformed message)."""
        self._close(conn)

    def _close(self, conn: Any, notify_owner: bool = True) -> None:
        """Close both ends of a connection; each live end hears connection_down."""
        pair = self._pair.get(conn)
        for end, notify in ((conn, notify_owner), (pair, True)):
            if end is None or end not in self.links:
                continue
            owner = self.peers[self.links.pop(end)[0]]
            owner.decoders.pop(end, None)
            if owner.alive and notify:
                owner.mesh.connection_down(end, self.now)
                self._after(owner)

    def _transmit(self, peer: SimPeer, conn: Any, data: bytes) -> None:
        pair = self._pair.get(conn)
        if pair is None or conn not in self.links:
            return
        self.at(self.now + self.latency, lambda: self._deliver(pair, data))

    def _deliver(self, conn: Any, data: bytes) -> None:
        if conn not in self.links:
            return
        owner = self.peers[self.links[conn][0]]
        if not owner.alive:
            return
        for msg_type, fields in owner.decoders[conn].feed(data):
            try:
                owner.mesh.receive(conn, msg_type, fields, self.now, self.wall_ns)
            except ValueError:
                self._close(conn)
                break
        self._after(owner)

    # -- faults -------------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """Stop peer ``i`` without a goodbye; its connections break one latency later."""
        peer = self.peers[i]
        peer.alive = False
        for conn, (owner, _) in list(self.links.items()):
            if owner == i:
                self.at(self.now + self.latency, functools.partial(self._close, conn))

    def restart(self, i: int) -> None:
        """Replace peer ``i`` by a new process: same name, new uid and a newer incarnation."""
        old = self.peers[i]
        old.alive = False
        for conn, (owner, _) in list(self.links.items()):
            if owner == i:
                self._close(conn)
        self.peers[i] = self._make_peer(i, incarnation=self.wall_ns + 2)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the peers into ``groups`` of indices; connections across groups break."""
        self.groups = {i: g for g, members in enumerate(groups) for i in members}
        for conn, (a, b) in list(self.links.items()):
            if not self.reachable(a, b):
                self._close(conn)

    def heal(self) -> None:
        """End the partition: every peer may reach every other again."""
        self.groups = None
        for peer in self.live_peers():
            self._after(peer)

    def drop_links(self, fraction: float) -> None:
        """Break a random fraction of connections (what loss does to TCP sessions)."""
        for conn in list(self.links):
            if conn in self.links and self.rng.random() < fraction:
                self._close(conn)

    # -- observations -------------------------------------------------------------------------

    def live_peers(self) -> list[SimPeer]:
        """The peers that run (not killed)."""
        return [p for p in self.peers if p.alive]

    def converged(self) -> bool:
        """Every live peer knows exactly the live peers of its partition and routes to all."""
        for p in self.live_peers():
            want = {q.name for q in self.live_peers() if self.reachable(p.index, q.index)}
            known = {n for n, r in p.mesh.topology.records.items() if not r.departed}
            if not want <= known or set(p.mesh.routes()) != want - {p.name}:
                return False
        return True
