"""The coordinator (sans-IO): the policy that ties the node's cores together.

Theory of operation. Everything that decides what this node should look like lives here, and
nothing here does I/O or reads a clock. On every ``step`` the daemon hands in the time, what
the peer source knows (``View``: members, records, liveness) and which peers the data plane
cannot reach; the coordinator steps IPAM (requests, seeding, grants, the ring) and returns a
``Plan``: the peers for the data plane, the space this node delivers locally, the desired node
state for the kernel, whether the address state must be written, the fields of our record to
publish, and when to step again. Each output is given only when it differs from the last one
given, so carrying out a plan is cheap and a step with no news changes nothing.

Rules this module keeps:
- Order. When a step changed the ring, the daemon writes the address state (``save``) before it
  publishes: a grant this node made is on disk before any peer can learn of it. (Pod addresses
  are written by agent/addresses.py before they are answered.)
- Routes. A remote block is routed when IPAM holds it to be a member's (a claim is taken up
  only where the ring's history allows it: overlay/ipam/holdings.py) or configuration says
  so, and never when it overlaps this node's own space: a remote route never covers local pods.
  Routes the kernel already had when the agent started (``kept``) stay until ``grace_until``,
  so a restart does not cut traffic while the peer source forms its view.
- Liveness. Peers the data plane has not heard from are published as ``unreachable``, so
  routes elsewhere relay around them.
- Time. ``now`` is monotonic seconds (deadlines); ``wall_ns`` is wall-clock nanoseconds, which
  only the IPAM ring reads (its proposals are ordered by it across nodes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from typing import Any, Protocol

from agent.fastpath import FastPath
from agent.peers import Member, View
from gossip.identity import peer_id
from gossip.topology import PeerRecord
from overlay.node import NodeSpec
from overlay.paths import Candidate
from overlay.peer import PeerSpec

Net = ipaddress.IPv4Network
STEP_INTERVAL = 0.5  # seconds between steps without news (IPAM requests, liveness)
ROUTE_GRACE = 10.0  # seconds a restarted agent keeps the routes it found
NO_ROUTER = b"\0\0\0\0"


class AddressPolicy(Protocol):
    """What the coordinator needs of IPAM (agent/ipam.py's ``Ipam``)."""

    @property
    def owned(self) -> list[Net]: ...

    @property
    def gateways(self) -> tuple[ipaddress.IPv4Interface, ...]: ...

    def step(self, records: Mapping[str, PeerRecord], live: Set[str], wall_ns: int) -> bool:
        """Take in the topology; True when the ring changed (its state must be written)."""
        ...

    def record_fields(self) -> dict[str, Any]: ...

    def routable(self, record: PeerRecord) -> tuple[Net, ...]: ...


@dataclass(frozen=True)
class Local:
    """The space this node delivers to its own pods, and the address ICMP errors come from."""

    blocks: tuple[Net, ...]
    router_address: bytes
    gateways: tuple[ipaddress.IPv4Address, ...] = ()  # the host's addresses in that space


@dataclass(frozen=True)
class Plan:
    """What the drivers carry out after one step; None (or False) means unchanged."""

    peers: tuple[PeerSpec, ...] | None = None
    candidates: tuple[Candidate, ...] | None = None  # for path choice (overlay/paths.py)
    local: Local | None = None
    node: NodeSpec | None = None
    save: bool = False
    publish: dict[str, Any] | None = None
    next_at: float = 0.0


class Coordinator:
    """The node's policy. ``base`` is the node state without pods' gateways and routes (bridge,
    TUN, MTU, GSO size); ``kept`` the routes found in the kernel at start; ``fastpath`` the fast
    path's policy (agent/fastpath.py; by default off)."""

    def __init__(
        self,
        ipam: AddressPolicy,
        base: NodeSpec,
        kept: Iterable[Net] = (),
        grace_until: float = 0.0,
        step_interval: float = STEP_INTERVAL,
        fastpath: FastPath | None = None,
    ) -> None:
        self.ipam = ipam
        self.base = base
        self.fastpath = fastpath or FastPath(None)
        self.kept = frozenset(kept)
        self.grace_until = grace_until
        self.step_interval = step_interval
        self._peers: tuple[PeerSpec, ...] | None = None
        self._candidates: tuple[Candidate, ...] | None = None
        self._local: Local | None = None
        self._node: NodeSpec | None = None
        self._published: dict[str, Any] = {}

    def step(
        self,
        now: float,
        wall_ns: int,
        view: View,
        unreachable: Sequence[str],
        fast: Set[str] = frozenset(),
    ) -> Plan:
        """Take in the time, the source's view, the data plane's unreachable peers and the
        peers path choice holds on the fast path."""
        ring_changed = self.ipam.step(view.records, view.live, wall_ns)
        routable = [(m, self._routable(m)) for m in view.members]
        peers = tuple(self._spec(m, blocks) for m, blocks in routable)
        own, grace = self.ipam.owned, now < self.grace_until
        candidates = self.fastpath.update(routable, fast, own, now, grace)
        gateways = tuple(g.ip for g in self.ipam.gateways)
        local = Local(tuple(own), self._router_address(), gateways)
        node = replace(self._desired(peers, now), fastdp=self.fastpath.state(fast, own, grace))
        fields = {**self.ipam.record_fields(), "unreachable": tuple(sorted(unreachable)),
                  "fastdp": self.fastpath.record_value(self.ipam.gateways)}  # fmt: skip
        plan = Plan(
            peers=self._changed("_peers", peers),
            candidates=self._changed("_candidates", candidates),
            local=self._changed("_local", local),
            node=self._changed("_node", node),
            save=ring_changed,
            publish=self._publish(fields),
            next_at=self._next_at(now),
        )
        return plan

    @property
    def node(self) -> NodeSpec | None:
        """The desired node state last given (the periodic repair applies it again)."""
        return self._node

    def _routable(self, m: Member) -> tuple[Net, ...]:
        """The blocks routed to ``m``: IPAM's (or configuration's) less our own space."""
        return self._remote(self.ipam.routable(m.record) if m.record is not None else m.blocks)

    def _spec(self, m: Member, blocks: tuple[Net, ...]) -> PeerSpec:
        key = m.record.sleeve_key if m.record is not None else b""
        return PeerSpec(peer_id(m.name), m.nickname, m.endpoint, blocks, m.via, m.name, key)

    def _remote(self, blocks: Iterable[Net]) -> tuple[Net, ...]:
        """``blocks`` without any that overlaps this node's own space."""
        own = self.ipam.owned
        return tuple(b for b in blocks if not any(b.overlaps(o) for o in own))

    def _desired(self, peers: tuple[PeerSpec, ...], now: float) -> NodeSpec:
        remote = frozenset(b for p in peers for b in p.blocks)
        if now < self.grace_until:
            remote |= frozenset(self._remote(self.kept))
        return replace(self.base, gateways=self.ipam.gateways, remote_blocks=remote)

    def _router_address(self) -> bytes:
        gateways = self.ipam.gateways
        return gateways[0].ip.packed if gateways else NO_ROUTER

    def _changed(self, attribute: str, value: Any) -> Any:
        if getattr(self, attribute) == value:
            return None
        setattr(self, attribute, value)
        return value

    def _publish(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        novel = {k: v for k, v in fields.items() if self._published.get(k, ...) != v}
        self._published.update(novel)
        return novel or None

    def _next_at(self, now: float) -> float:
        next_at = now + self.step_interval
        if now < self.grace_until:
            next_at = min(next_at, self.grace_until)
        return next_at
