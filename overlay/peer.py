"""What the sleeve knows about each remote peer: what it was told (PeerSpec), what it counts
(PeerCounters) and what it has learnt (PeerState). The sleeve core keeps one PeerState per
peer; the forwarding core reads and counts through the same objects on every packet, so the
fields it touches are plain slotted attributes, not properties. Who may send a peer's frames
(``accept_from``) is the trust rules' to set (overlay/trust.py)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from overlay.udp import Address


@dataclass(frozen=True)
class PeerSpec:
    """One remote peer as the agent describes it (from its configuration or the mesh)."""

    peer_id: int
    name: str
    address: Address  # the peer's own sleeve endpoint: heartbeats always go here
    blocks: tuple[ipaddress.IPv4Network, ...]
    via: Address | None = None  # where its data goes when relayed (the next hop's endpoint)
    peer_name: str = ""  # the mesh name ("aa:bb:..."); ``name`` is the nickname
    sleeve_key: bytes = b""  # its published key agreement material (overlay/seal.py)


@dataclass(slots=True)
class PeerCounters:
    """Traffic with one peer: packets and bytes of the inner packets sent to it and accepted
    from it, frames relayed towards it for others, and drops by reason."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    relayed: int = 0  # frames for this peer that we forwarded on behalf of another
    drops: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True, eq=False)
class PeerState:
    """One peer's data-plane state: its spec, MTU, counters and heartbeat health. Compared by
    identity: there is one per peer."""

    spec: PeerSpec
    mtu: int
    counters: PeerCounters = field(default_factory=PeerCounters)
    established: bool = False
    remote_uid: int = 0
    last_ack_at: float | None = None
    next_heartbeat_at: float = 0.0
    first_beat_at: float | None = None
    sequence: int = 0
    rtt: float | None = None
    sent_at: dict[int, float] = field(default_factory=dict)  # per heartbeat token: when sent
    accept_from: frozenset[str] = frozenset()  # hosts its frames may arrive from (trust.py)
    peer_id: int = field(init=False)
    send_to: Address = field(init=False)  # where its data goes: ``via`` or its own endpoint
    host: int = field(init=False)  # its endpoint's IPv4 address as an int (0: not IPv4)

    def __post_init__(self) -> None:
        self.follow(self.spec)

    def follow(self, spec: PeerSpec) -> None:
        """Take a new spec for the same peer (a new address, blocks or next hop). Heartbeats
        in flight to an old address are forgotten: only an answer from the new one counts."""
        if self.spec.address != spec.address:
            self.sent_at.clear()
        self.spec = spec
        self.peer_id = spec.peer_id
        self.send_to = spec.via or spec.address
        self.host = ipv4(spec.address[0])


def ipv4(text: str) -> int:
    """The IPv4 address ``text`` as an int; 0 when it is not one."""
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return 0
