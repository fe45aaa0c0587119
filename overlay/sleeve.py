"""Sans-IO core of the sleeve data plane: the peer set and each peer's health.

Rules this module keeps:
- It never touches a socket, a device or a clock. The driver passes ``now`` (monotonic seconds)
  in, and takes datagrams to send, the next deadline and events out.
- It owns the peer set and per-peer health from UDP heartbeats; the per-packet decisions over
  the same peers are its forwarding core's (``forwarding``, overlay/forwarding.py), which
  hands heartbeats back here. Drops are counted by reason, globally and per peer when the peer
  is known, in the counters the two share.

Heartbeats: every ``fast_interval`` until a peer acknowledges one, then every ``slow_interval``;
a peer whose last acknowledgement is older than ``timeout`` is no longer established.

Heartbeats are bound to this process and to the peer's endpoint: each carries a fresh random
64-bit token (in the field the wire calls ``sequence``; a peer echoes it unchanged), and an
acknowledgement counts only when it echoes a token we sent that peer, unanswered yet, since
its current endpoint was set, and arrives from that endpoint's host. Heartbeats from another
host are not answered. A forged acknowledgement (its sender must guess one of the last
SENT_REMEMBERED tokens out of 2^64) cannot keep a dead path established, nor can a forged
heartbeat report a peer restarted.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from overlay import frame
from overlay.forwarding import Forwarding
from overlay.frame import Buffer, MessageType
from overlay.peer import PeerSpec, PeerState
from overlay.trust import Refused
from overlay.udp import Address

SENT_REMEMBERED = 64  # heartbeats per peer whose send time is kept for an RTT


class PeerEventKind(StrEnum):
    """What happened to a peer's data path."""

    ESTABLISHED = "established"  # a heartbeat was answered (again)
    LOST = "lost"  # no answer for ``timeout``
    RESTARTED = "restarted"  # the peer's process changed (a new uid)


@dataclass(frozen=True)
class PeerEvent:
    """A change of a peer's data path, for the agent's log and status."""

    kind: PeerEventKind
    peer: PeerSpec
    detail: str = ""


class Sleeve:
    """The sleeve core for one node (``local_id``, ``local_uid`` per process start) that owns
    ``local_blocks`` and carries packets of up to ``mtu`` bytes."""

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
        host_addresses: Iterable[str] = (),
    ) -> None:
        self.local_id = local_id
        self.local_uid = local_uid
        self.mtu = mtu
        self.fast_interval = fast_interval
        self.slow_interval = slow_interval
        self.timeout = timeout
        self.peers: dict[int, PeerState] = {}
        self.forwarding = Forwarding(local_id, self.peers, self.receive_control)
        self.drops: Counter[str] = self.forwarding.drops
        self.paths: Counter[str] = self.forwarding.paths  # how super-packets were received
        self._rng = rng or random.SystemRandom()  # jitter and heartbeat tokens
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: list[PeerEvent] = []
        self.set_local_blocks(local_blocks, router_address)
        self.set_host_addresses(host_addresses)

    # -- configuration ---------------------------------------------------------------------

    def set_local_blocks(
        self,
        blocks: Iterable[ipaddress.IPv4Network],
        router_address: bytes | None = None,
        gateways: Iterable[ipaddress.IPv4Address] | None = None,
    ) -> None:
        """The space this node owns (packets for it are delivered here), the address ICMP
        errors come from and the host's addresses in that space (the bridge's gateways; when
        not given, the router address alone); all change as IPAM obtains or gives away space."""
        ints = None if gateways is None else [int(g) for g in gateways]
        self.forwarding.set_local(blocks, router_address, ints)

    def set_host_addresses(self, addresses: Iterable[str]) -> None:
        """This node's host addresses outside its space (its underlay address): its own stack
        sends into the TUN with them (kube-proxy's SNAT, host-network pods; overlay/trust.py)."""
        self.forwarding.set_hosts(int(ipaddress.IPv4Address(a)) for a in addresses)

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
                state.follow(spec)
        self.forwarding.set_routes(self.peers.values())

    def drop(self, reason: str, peer: PeerState | None = None) -> None:
        """Count a drop, globally and against ``peer`` when there is one."""
        self.forwarding.drop(reason, peer)

    # -- control messages --------------------------------------------------------------------

    def receive_control(
        self, data: Buffer, header: frame.Header, addr: Address, now: float
    ) -> None:
        """A heartbeat (answered to ``addr``) or a heartbeat's acknowledgement, for this node."""
        fw, host = self.forwarding, addr[0]
        peer = self.peers.get(header.source)
        if peer is None:
            fw.refuse("unknown_peer", host)
            return
        if header.type not in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK):
            fw.refuse("type", host, peer)
            return
        if host != peer.spec.address[0]:
            fw.refuse("endpoint", host, peer)
            return
        try:
            token, uid = frame.decode_heartbeat(data, header)
        except frame.DecodeError as exc:
            fw.refuse(exc.reason, host, peer)
            return
        if header.type == MessageType.HEARTBEAT:
            self._note_uid(peer, uid)
            ack = frame.encode_heartbeat(
                MessageType.HEARTBEAT_ACK, self.local_id, peer.peer_id, token, self.local_uid
            )
            self._outbox.append((ack, addr))
        elif self._acked(peer, token, now):
            self._note_uid(peer, uid)
        else:
            fw.refuse("stale_ack", host, peer)

    def _note_uid(self, peer: PeerState, uid: int) -> None:
        if peer.remote_uid and uid != peer.remote_uid:
            self._events.append(PeerEvent(PeerEventKind.RESTARTED, peer.spec, f"uid {uid:x}"))
        peer.remote_uid = uid

    def _acked(self, peer: PeerState, token: int, now: float) -> bool:
        """Take an acknowledgement of heartbeat ``token``; False when we sent none such."""
        sent = peer.sent_at.pop(token, None)
        if sent is None:
            return False
        peer.sent_at.clear()
        peer.rtt = now - sent
        peer.last_ack_at = now
        if not peer.established:
            peer.established = True
            peer.next_heartbeat_at = now + self.slow_interval
            detail = f"rtt {peer.rtt * 1e3:.2f}ms"
            self._events.append(PeerEvent(PeerEventKind.ESTABLISHED, peer.spec, detail))
        return True

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
        """Time out silent peers, send the heartbeats that are due, expire stale chunks."""
        self.forwarding.expire(now)
        for peer in self.peers.values():
            overdue = None if peer.last_ack_at is None else now - peer.last_ack_at
            if peer.established and overdue is not None and overdue >= self.timeout:
                peer.established = False
                self._events.append(PeerEvent(PeerEventKind.LOST, peer.spec, "heartbeat timeout"))
            if now >= peer.next_heartbeat_at:
                self._beat(peer, now, overdue)

    def _beat(self, peer: PeerState, now: float, overdue: float | None) -> None:
        peer.sequence += 1
        if peer.first_beat_at is None:
            peer.first_beat_at = now
        token = self._rng.getrandbits(64)
        peer.sent_at[token] = now
        if len(peer.sent_at) > SENT_REMEMBERED:
            peer.sent_at.pop(next(iter(peer.sent_at)))
        beat = frame.encode_heartbeat(
            MessageType.HEARTBEAT, self.local_id, peer.peer_id, token, self.local_uid
        )
        self._outbox.append((beat, peer.spec.address))
        # Slow once established, fast again when an answer is overdue, so that loss is
        # noticed well within the timeout.
        slow = peer.established and overdue is not None and overdue <= self.slow_interval
        peer.next_heartbeat_at = now + (self.slow_interval if slow else self.fast_interval)

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
        """Heartbeats and acknowledgements due since the last call, with their destination."""
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[PeerEvent]:
        """Peer events since the last call."""
        out, self._events = self._events, []
        return out

    def take_refused(self) -> list[Refused]:
        """Input refused since the last call, a summary per source host: the driver logs each
        (``str()`` of it) every LOG_INTERVAL or so."""
        return self.forwarding.take_refused()
