"""Sans-IO core of the sleeve data plane.

Rules this module keeps:
- It never touches a socket, a device or a clock. The driver passes ``now`` (monotonic seconds)
  in, and takes datagrams to send, the next deadline and events out.
- It owns the forwarding table (remote block -> peer), per-peer health from UDP heartbeats and
  every counter. Drops are counted by reason, globally and per peer when the peer is known.
- Data packets are classified here but copied and sent by the driver: the core hands back the
  peer and the driver frames the bytes it already holds.

Heartbeats: every ``fast_interval`` until a peer acknowledges one, then every ``slow_interval``;
a peer whose last acknowledgement is older than ``timeout`` is no longer established.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from overlay import frame, icmp
from overlay.blocks import BlockTable
from overlay.frame import MessageType
from overlay.reassembly import Reassembler

Address = tuple[str, int]
LOOKUP_CACHE = 4096  # destinations remembered per lookup table (cleared when full or changed)


@dataclass(frozen=True)
class PeerSpec:
    """What the configuration (later: gossip) says about one remote peer."""

    peer_id: int
    name: str
    address: Address  # the peer's own sleeve endpoint: heartbeats always go here
    blocks: tuple[ipaddress.IPv4Network, ...]
    via: Address | None = None  # where its data goes when relayed (the next hop's endpoint)
    peer_name: str = ""  # the mesh name ("aa:bb:..."); ``name`` is the nickname


@dataclass
class PeerCounters:
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    relayed: int = 0  # frames for this peer that we forwarded on behalf of another
    drops: Counter[str] = field(default_factory=Counter)


@dataclass
class PeerState:
    spec: PeerSpec
    mtu: int
    counters: PeerCounters = field(default_factory=PeerCounters)
    established: bool = False
    remote_uid: int = 0
    last_ack_at: float | None = None
    next_heartbeat_at: float = 0.0
    sequence: int = 0
    rtt: float | None = None
    sent_at: dict[int, float] = field(default_factory=dict)

    first_beat_at: float | None = None

    @property
    def peer_id(self) -> int:
        return self.spec.peer_id

    @property
    def send_to(self) -> Address:
        return self.spec.via or self.spec.address


@dataclass(frozen=True)
class PeerEvent:
    kind: str  # "established", "lost", "restarted"
    peer: PeerSpec
    detail: str = ""


class Sleeve:
    def __init__(
        self,
        local_id: int,
        local_uid: int,
        local_blocks: Iterable[ipaddress.IPv4Network],
        mtu: int,
        router_address: bytes = b"\0\0\0\0",
        fast_interval: float = 0.5,
        slow_interval: float = 5.0,
        timeout: float = 15.0,
        rng: random.Random | None = None,
    ) -> None:
        self.local_id = local_id
        self.local_uid = local_uid
        self.mtu = mtu
        self.router_address = router_address
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        self.timeout = timeout
        self.peers: dict[int, PeerState] = {}
        self.drops: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()  # how received super-packets were handled
        self.reassembler = Reassembler(drops=self.drops)
        self._rng = rng or random.Random()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: list[PeerEvent] = []
        self._local = BlockTable()
        self._local_cache: dict[int, bool] = {}
        self.set_local_blocks(local_blocks, router_address)
        self._table: BlockTable = BlockTable()
        self._peer_cache: dict[int, PeerState | None] = {}

    # -- configuration ---------------------------------------------------------------------

    def set_local_blocks(
        self, blocks: Iterable[ipaddress.IPv4Network], router_address: bytes | None = None
    ) -> None:
        """The space this node owns (packets for it are delivered here) and the address ICMP
        errors come from; both change as IPAM obtains or gives away space."""
        table = BlockTable()
        for block in blocks:
            table.add(block, True)
        self._local = table
        self._local_cache = {}
        if router_address is not None:
            self.router_address = router_address

    def set_peers(self, specs: Iterable[PeerSpec], now: float) -> None:
        """Replace the peer set; state of peers that stay is kept."""
        wanted = {s.peer_id: s for s in specs if s.peer_id != self.local_id}
        for peer_id in list(self.peers):
            if peer_id not in wanted:
                del self.peers[peer_id]
        for peer_id, spec in wanted.items():
            state = self.peers.get(peer_id)
            if state is None:
                # Spread first heartbeats a little so a restart does not send them in lockstep.
                jitter = self._rng.uniform(0, self.fast_interval / 4)
                self.peers[peer_id] = PeerState(spec, self.mtu, next_heartbeat_at=now + jitter)
            else:
                state.spec = spec
        table = BlockTable()
        for state in self.peers.values():
            for block in state.spec.blocks:
                table.add(block, state)
        self._table = table
        self._peer_cache = {}

    # -- data path helpers (called by the driver per packet) --------------------------------

    def peer_for(self, destination: int) -> PeerState | None:
        """The peer owning the IPv4 destination address ``destination`` (an int). Answers are
        remembered per destination until the peer set changes: a flow's packets cost one
        dict lookup, not one per prefix length."""
        try:
            return self._peer_cache[destination]
        except KeyError:
            value = self._table.lookup(destination)
            found = value if isinstance(value, PeerState) else None
            if len(self._peer_cache) >= LOOKUP_CACHE:
                self._peer_cache.clear()
            self._peer_cache[destination] = found
            return found

    def is_local(self, destination: int) -> bool:
        """Whether ``destination`` is in this node's own space (remembered like peer_for)."""
        found = self._local_cache.get(destination)
        if found is None:
            found = self._local.lookup(destination) is not None
            if len(self._local_cache) >= LOOKUP_CACHE:
                self._local_cache.clear()
            self._local_cache[destination] = found
        return found

    def too_big(self, packet: bytes | bytearray | memoryview, mtu: int) -> bytes | None:
        """ICMP 'fragmentation needed' for a non-GSO IPv4 packet with DF that exceeds ``mtu``."""
        return icmp.frag_needed(packet, mtu, self.router_address)

    def drop(self, reason: str, peer: PeerState | None = None) -> None:
        self.drops[reason] += 1
        if peer is not None:
            peer.counters.drops[reason] += 1

    # -- control messages --------------------------------------------------------------------

    def receive_control(
        self, data: bytes | bytearray | memoryview, header: frame.Header, addr: Address, now: float
    ) -> None:
        peer = self.peers.get(header.source)
        if peer is None:
            self.drop("unknown_peer")
            return
        try:
            if header.type == MessageType.HEARTBEAT:
                sequence, uid = frame.decode_heartbeat(data, header)
                self._note_uid(peer, uid)
                ack = frame.encode_heartbeat(
                    MessageType.HEARTBEAT_ACK,
                    self.local_id,
                    peer.peer_id,
                    sequence,
                    self.local_uid,
                )
                self._outbox.append((ack, addr))
            elif header.type == MessageType.HEARTBEAT_ACK:
                sequence, uid = frame.decode_heartbeat(data, header)
                self._note_uid(peer, uid)
                self._acked(peer, sequence, now)
            elif header.type == MessageType.MTU_PROBE:
                sequence, size = frame.decode_mtu_probe(data, header)
                ack = frame.encode_mtu_probe(
                    MessageType.MTU_PROBE_ACK, self.local_id, peer.peer_id, sequence, size
                )
                self._outbox.append((ack, addr))
            else:
                frame.decode_mtu_probe(data, header)  # acks of probes we do not send yet
        except frame.DecodeError as exc:
            self.drop(exc.reason, peer)

    def _note_uid(self, peer: PeerState, uid: int) -> None:
        if peer.remote_uid and uid != peer.remote_uid:
            self._events.append(PeerEvent("restarted", peer.spec, f"uid {uid:x}"))
        peer.remote_uid = uid

    def _acked(self, peer: PeerState, sequence: int, now: float) -> None:
        sent = peer.sent_at.pop(sequence, None)
        if sent is None:
            self.drop("stale_ack", peer)
            return
        peer.sent_at.clear()
        peer.rtt = now - sent
        peer.last_ack_at = now
        if not peer.established:
            peer.established = True
            peer.next_heartbeat_at = now + self.slow_interval
            self._events.append(PeerEvent("established", peer.spec, f"rtt {peer.rtt * 1e3:.2f}ms"))

    # -- timers ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next heartbeat or, if sooner, the moment an established peer times out."""
        deadlines = [p.next_heartbeat_at for p in self.peers.values()]
        deadlines += [
            p.last_ack_at + self.timeout
            for p in self.peers.values()
            if p.established and p.last_ack_at is not None
        ]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        self.reassembler.expire(now)
        for peer in self.peers.values():
            overdue = None if peer.last_ack_at is None else now - peer.last_ack_at
            if peer.established and overdue is not None and overdue >= self.timeout:
                peer.established = False
                self._events.append(PeerEvent("lost", peer.spec, "heartbeat timeout"))
            if now < peer.next_heartbeat_at:
                continue
            peer.sequence += 1
            if peer.first_beat_at is None:
                peer.first_beat_at = now
            peer.sent_at[peer.sequence] = now
            if len(peer.sent_at) > 64:
                peer.sent_at.pop(next(iter(peer.sent_at)))
            beat = frame.encode_heartbeat(
                MessageType.HEARTBEAT, self.local_id, peer.peer_id, peer.sequence, self.local_uid
            )
            self._outbox.append((beat, peer.spec.address))
            # Slow once established, fast again when an answer is overdue, so that loss is
            # noticed well within the timeout.
            slow = peer.established and overdue is not None and overdue <= self.slow_interval
            interval = self.slow_interval if slow else self.fast_interval
            peer.next_heartbeat_at = now + interval

    def unreachable(self, now: float) -> list[str]:
        """Peers whose direct data path has not answered for ``timeout``: the exceptions the
        mesh gossips so that routes relay around them."""
        out = []
        for peer in self.peers.values():
            last = peer.last_ack_at if peer.last_ack_at is not None else peer.first_beat_at
            if not peer.established and last is not None and now - last >= self.timeout:
                out.append(peer.spec.peer_name or peer.spec.name)
        return sorted(out)

    # -- outputs -----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[PeerEvent]:
        out, self._events = self._events, []
        return out
