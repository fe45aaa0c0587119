"""The sleeve's trust rules (sans-IO): which datagrams and inner packets this node accepts, the
address tables they are checked against, and what was refused, for the driver's log.

Rules this module keeps (the forwarding core asks; nothing here touches a socket or a clock):

- Endpoint. A frame (data or relayed) whose header names peer S as its source is taken only
  from a host the routes say may carry S's frames (``PeerState.accept_from``): S's own endpoint
  host, and when our route to S is relayed, also our next hop towards S and every peer we reach
  directly (only a direct neighbour of ours can hand us a relayed frame; on paths of three
  hops and more the last relay need not be our own next hop). Only the host is compared: data
  leaves a peer by links bound to ephemeral ports (overlay/links.py). A header from an unknown
  peer is refused whatever its outer source. Heartbeats and their acknowledgements must come
  from S's own endpoint host (overlay/sleeve.py).
- Inner packets from the sleeve (every record of a DATA body, of a reassembled body and of a
  GRO train): the destination must be in this node's space (its blocks: pods and gateways);
  the source must be in S's space (an address our routes send to S), or S's host address
  under the host-access rule below.
- Inner packets from the TUN: the source must be in this node's space or one of this node's
  host addresses (``set_hosts``: its underlay address), else they never leave the node.

Host access (decided). Kubernetes needs a node's own stack and the pods on other nodes to
reach each other: kube-proxy forwards NodePort and Service traffic to remote pods with the
node's address as source (SNAT), host-network pods (and the API server there) call pods on
other nodes, and the answers come back. A node's stack sends into the TUN with its underlay
address as source (the TUN has none of its own), which its peers know as its endpoint host. So:

- S's pods and S's gateways (inside S's space) may reach our pods and our host (gateways).
- S's host address (its endpoint host) may reach our pods, but not our host through a gateway
  address: node to node traffic goes over the underlay, never through the sleeve.
- Nothing else: no address outside the members' spaces (a stranger's, the Internet's) reaches
  a pod or the host through the sleeve, and a peer cannot speak for another peer's space.

A peer that sends from another address than the one we know it by (a second address on a
multi-homed host) is refused as "endpoint" and shows in the counters and the log.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from overlay.blocks import BlockTable
from overlay.peer import PeerState

LOOKUP_CACHE = 4096  # answers remembered per lookup table (cleared when full or changed)
MAX_SOURCES = 64  # distinct (reason, source) pairs kept per log interval; the rest summed


@dataclass(frozen=True)
class Refused:
    """What one source had refused since the last summary: the drop counts by reason."""

    source: str  # the outer host, with the peer it claimed to be when there is one
    reasons: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        counts = " ".join(f"{reason}={n}" for reason, n in self.reasons)
        return f"refuse sleeve input from {self.source}: {counts}"


class Trust:
    """The tables the trust rules read: the peers' spaces and endpoints, this node's space,
    gateways and host addresses."""

    def __init__(self) -> None:
        self._remote = BlockTable()
        self._local = BlockTable()
        self._gateways: frozenset[int] = frozenset()
        self._hosts: frozenset[int] = frozenset()
        self._peer_cache: dict[int, PeerState | None] = {}
        self._local_cache: dict[int, bool] = {}
        self._refused: Counter[tuple[str, str]] = Counter()

    # -- tables ------------------------------------------------------------------------------

    def set_peers(self, peers: Iterable[PeerState]) -> None:
        """Route each peer's blocks to it (longest prefix wins) and set whom each peer's
        frames are taken from (the endpoint rule)."""
        peers = list(peers)
        table = BlockTable()
        for state in peers:
            for block in state.spec.blocks:
                table.add(block, state)
        self._remote = table
        self._peer_cache = {}
        direct = frozenset(p.spec.address[0] for p in peers if p.spec.via is None)
        for state in peers:
            spec = state.spec
            hosts = {spec.address[0]}
            if spec.via is not None:
                hosts |= direct | {spec.via[0]}
            state.accept_from = frozenset(hosts)

    def set_local(
        self, blocks: Iterable[ipaddress.IPv4Network], gateways: Iterable[int] = ()
    ) -> None:
        """This node's own space and the host's addresses inside it (the bridge gateways)."""
        table = BlockTable()
        for block in blocks:
            table.add(block, True)
        self._local = table
        self._local_cache = {}
        self._gateways = frozenset(gateways)

    def set_hosts(self, addresses: Iterable[int]) -> None:
        """This node's host addresses outside its space (its underlay address): sources its
        own stack sends into the TUN with."""
        self._hosts = frozenset(addresses)

    def peer_for(self, address: int) -> PeerState | None:
        """The peer owning the IPv4 address ``address`` (an int). Answers are remembered per
        address until the peer set changes: a flow's packets cost one dict lookup, not one
        per prefix length."""
        try:
            return self._peer_cache[address]
        except KeyError:
            value = self._remote.lookup(address)
            found = value if isinstance(value, PeerState) else None
            if len(self._peer_cache) >= LOOKUP_CACHE:
                self._peer_cache.clear()
            self._peer_cache[address] = found
            return found

    def is_local(self, address: int) -> bool:
        """Whether ``address`` is in this node's own space (remembered like peer_for)."""
        found = self._local_cache.get(address)
        if found is None:
            found = self._local.lookup(address) is not None
            if len(self._local_cache) >= LOOKUP_CACHE:
                self._local_cache.clear()
            self._local_cache[address] = found
        return found

    # -- rules -------------------------------------------------------------------------------

    def inbound(self, peer: PeerState, source: int, destination: int) -> str | None:
        """Why an inner packet from ``source`` to ``destination`` carried in ``peer``'s frame
        is refused (the drop reason), or None when it is accepted."""
        if not self.is_local(destination):
            return "destination"
        if self.peer_for(source) is peer:
            return None
        if source != peer.host or not source:
            return "source"
        if destination in self._gateways:
            return "host_access"
        return None

    def outbound(self, source: int) -> bool:
        """Whether a packet read from the TUN with ``source`` may leave this node."""
        return self.is_local(source) or source in self._hosts

    # -- what was refused --------------------------------------------------------------------

    def refused(self, reason: str, host: str, peer: PeerState | None = None) -> None:
        """Note a refusal of input from ``host`` (claiming to be ``peer``) for the log."""
        source = host if peer is None else f"{host} as {_who(peer)}"
        key = (reason, source)
        if key not in self._refused and len(self._refused) >= MAX_SOURCES:
            key = (reason, "other sources")
        self._refused[key] += 1

    def take_refused(self) -> list[Refused]:
        """What was refused since the last call, a summary per source (the driver logs one
        line each, at most every few seconds: a flood costs counters, not log lines)."""
        by_source: dict[str, Counter[str]] = {}
        for (reason, source), n in self._refused.items():
            by_source.setdefault(source, Counter())[reason] += n
        self._refused = Counter()
        return [Refused(s, tuple(sorted(c.items()))) for s, c in sorted(by_source.items())]


def _who(peer: PeerState) -> str:
    """The peer as the logs name it: ``name(nickname)``."""
    spec = peer.spec
    return f"{spec.peer_name}({spec.name})" if spec.peer_name else spec.name
