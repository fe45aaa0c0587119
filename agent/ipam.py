"""The node's address management (sans-IO): the ring core and the pod pool, and what the rest
of the agent asks of them.

Modes: ``gossip`` (no pod block configured: the ring in overlay/ipam/ring.py decides which space
this node owns, through claims in the topology records) and ``kube``/``static`` (a fixed pod
block from configuration: Kubernetes' podCIDR, or the static-peer lab). In every mode the pool
hands out pod addresses keyed by (container id, interface name).

Rules this module keeps: no disk, no clock, no event loop. The state to persist is
``document()``: agent/addresses.py writes it after each allocation or release, the daemon after
each ``step`` or ``rmpeer`` that changed the ring (before the change is published). Refusals are
``agent.errors`` classes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

from agent import errors
from agent.config import Config, init_count
from agent.report import IpamStatus, Owner
from gossip.topology import PeerRecord
from overlay.ipam import space
from overlay.ipam.claim import Claim, ClaimError, decode
from overlay.ipam.holdings import Holdings
from overlay.ipam.pool import Allocation, Pool
from overlay.ipam.refusals import TEXT_LIMIT, RefusalLog, printable
from overlay.ipam.ring import Ring
from overlay.ipam.ringstate import View

log = logging.getLogger("weave-py.ipam")
Net = ipaddress.IPv4Network
REFUSALS_SHOWN = 5  # refused claims spelled out in status


@dataclass(frozen=True)
class Settings:
    """What configuration says about addresses (agent/config.py documents each)."""

    range: Net
    block_prefix: int
    pod_block: Net | None = None  # kube/static: this node's fixed block
    quorum: int = 1  # gossip: nodes that must agree to seed the ring
    static: bool = False  # the pod block comes with static peers (for status)

    @classmethod
    def of(cls, config: Config) -> Settings:
        """The address settings of a validated configuration."""
        return cls(config.ipalloc_range, config.ipalloc_block, config.pod_block,
                   init_count(config) // 2 + 1, bool(config.peers))  # fmt: skip


def check_document(state: Mapping[str, Any] | None) -> None:
    """Refuse a saved document that lacks what a running node holds (its pool, and its ring
    or null): a file that says nothing of the node's pods is as unusable as a corrupt one,
    since starting from nothing would hand out addresses live pods still hold."""
    if state is None:
        return
    missing = [key for key in ("ring", "pool") if key not in state]
    if missing:
        raise ValueError(f"IPAM state lacks {', '.join(missing)}: it was not written by this "
                         f"agent; move it aside only if this node runs no pods")  # fmt: skip
    if not isinstance(state["pool"], Mapping):
        raise ValueError("IPAM state: 'pool' is not an object")
    if state["ring"] is not None and not isinstance(state["ring"], Mapping):
        raise ValueError("IPAM state: 'ring' is not an object or null")


class Ipam:
    """The ring and the pool of one node, restored from ``state`` (a saved ``document()``)."""

    def __init__(
        self, settings: Settings, name: str, incarnation: int, state: Mapping[str, Any] | None
    ) -> None:
        self.settings = settings
        self.name = name
        self.mode = "gossip" if settings.pod_block is None else "static" if settings.static \
            else "kube"  # fmt: skip
        check_document(state)
        self.ring: Ring | None = None
        if settings.pod_block is None:
            self.ring = Ring(name, settings.range, settings.block_prefix, settings.quorum,
                             incarnation, state["ring"] if state is not None else None)  # fmt: skip
        self.pool = self._load_pool(state["pool"] if state is not None else None)
        # kube/static mode: the blocks the others' records claim, held first come first kept
        self.holdings = Holdings(name, settings.range, 32)
        self.refusals = RefusalLog()  # claims refused, by reason (ring and holdings)
        self.malformed: Counter[str] = Counter()  # claims we could not read, by peer
        self.pending = 0  # requests waiting for space (the address driver counts them)
        self._claims: dict[str, tuple[PeerRecord, Claim | str]] = {}  # str: why malformed
        self._last_status = ""

    def _load_pool(self, state: Mapping[str, Any] | None) -> Pool:
        block = self.settings.pod_block
        prefix = self.settings.block_prefix if block is None else block.prefixlen
        pool = Pool.from_state(state) if state is not None else Pool(prefix)
        if pool.block_prefix != prefix:
            if pool.used:
                raise ValueError(
                    f"allocations use /{pool.block_prefix} blocks, configuration says "
                    f"/{prefix}; keep the old block size or remove the node's pods first"
                )
            pool = Pool(prefix)
        owned = [block] if block is not None else (self.ring.owned if self.ring else [])
        pool.set_owned(owned)  # raises when configuration no longer holds allocated addresses
        return pool

    # -- what the node uses ------------------------------------------------------------------

    @property
    def owned(self) -> list[Net]:
        """The space this node's pods get addresses from."""
        return list(self.pool.owned)

    @property
    def gateways(self) -> tuple[ipaddress.IPv4Interface, ...]:
        """The bridge's addresses: the first address of each active block."""
        return self.pool.gateways

    def can_allocate(self) -> bool:
        """Whether an address request may be taken now (it may still wait for space)."""
        return bool(self.pool.owned) or self.ring is not None

    def record_fields(self) -> dict[str, Any]:
        """Our record's ``blocks`` and ``meta``: the claim we publish."""
        if self.ring is None:
            return {"blocks": tuple(map(str, self.pool.owned)), "meta": b""}
        free = space.size(self.pool.free_space())
        claim = self.ring.claim(self.pool.used, free)
        return {"blocks": tuple(map(str, claim.owned)), "meta": claim.encode()}

    def routable(self, record: PeerRecord) -> tuple[Net, ...]:
        """The blocks we route to a peer: only space of our own ring (another ring's space
        overlaps ours and must never be routed), and only from a claim we can read."""
        try:
            claim = self._claim_of(record)
        except ClaimError as exc:
            if self.malformed[record.name] == 0:
                log.warning("ipam: ignoring the claim of %s(%s): %s",
                            record.name, record.nickname, exc)  # fmt: skip
            self.malformed[record.name] += 1
            return ()
        if self.ring is None:
            return tuple(self.holdings.owned_by(record.name, claim)) if claim.ring is None else ()
        return self.ring.routable(record.name) if claim.ring == self.ring.ring else ()

    def _claim_of(self, record: PeerRecord) -> Claim:
        """The record's claim, decoded once per record (routes and the step both read every
        peer's claim on every change); ClaimError when it is malformed."""
        cached = self._claims.get(record.name)
        if cached is None or cached[0] is not record:
            try:
                cached = (record, decode(record.blocks, record.meta))
            except ClaimError as exc:
                cached = (record, str(exc))
            self._claims[record.name] = cached
        if isinstance(cached[1], str):
            raise ClaimError(cached[1])  # a fresh one: a kept exception's traceback would grow
        return cached[1]

    # -- the ring ----------------------------------------------------------------------------

    def step(self, records: Mapping[str, PeerRecord], live: Set[str], wall_ns: int) -> bool:
        """Take in the topology at wall-clock time ``wall_ns``; True when the ring changed."""
        for gone in self._claims.keys() - records.keys():
            del self._claims[gone]
        if self.ring is None:
            self._hold_blocks(records)
            self._log_refusals(records, wall_ns)
            return False
        views = {}
        for name, r in records.items():
            if name == self.name:
                continue
            try:
                claim = self._claim_of(r)
            except ClaimError:
                continue  # counted and logged by ``routable``
            views[name] = View(r.incarnation, r.version, claim, r.nickname)
        pool = self.pool
        need = self.pending > 0 or not pool.owned or pool.used >= pool.capacity
        changed = self.ring.step(wall_ns, views, live, need, pool.free_space(), pool.used)
        if changed:
            self._follow_ring()
        self.refusals.add(self.ring.take_refusals())
        self._log_refusals(records, wall_ns)
        self._log_status()
        return changed

    def _hold_blocks(self, records: Mapping[str, PeerRecord]) -> None:
        """kube/static mode: which blocks the others' records may have routed to them."""
        claims = {}
        for name, record in records.items():
            with contextlib.suppress(ClaimError):  # counted and logged by ``routable``
                claim = self._claim_of(record)
                if name != self.name and claim.ring is None:
                    claims[name] = claim
        self.refusals.add(self.holdings.update(claims, self.pool.owned, ()))

    def _log_refusals(self, records: Mapping[str, PeerRecord], wall_ns: int) -> None:
        def who(name: str) -> str:
            record = records.get(name)
            return f"{name}({record.nickname})" if record else name

        line = self.refusals.summary(wall_ns, who)
        if line:
            log.warning("%s", line)

    def refused(self) -> list[str]:
        """The others' claims refused now, in words (for status)."""
        standing = self.ring.holdings.refused if self.ring else self.holdings.refused
        return [printable(f"{r.peer}: {r.detail}", TEXT_LIMIT) for r in standing.values()]

    def _follow_ring(self) -> None:
        """The pool holds what the ring owns. The ring gives up space in use only when this
        peer was removed with rmpeer (its space now someone else's): those addresses are
        forgotten, loudly, rather than handed out twice."""
        assert self.ring is not None
        owned = self.ring.owned
        lost = [a for a in self.pool.allocations() if not any(a.address.ip in n for n in owned)]
        for a in lost:
            self.pool.release(a.container_id, a.ifname)
        if lost:
            addresses = ", ".join(str(a.address.ip) for a in lost)
            log.error("ipam: %d pod address(es) are no longer this node's (%s): re-create "
                      "those pods", len(lost), addresses)  # fmt: skip
        self.pool.set_owned(owned)

    def _log_status(self) -> None:
        assert self.ring is not None
        text = repr((self.ring.status, self.ring.conflict, tuple(self.pool.owned)))
        if text == self._last_status:
            return
        self._last_status = text
        if self.ring.conflict:
            log.error("ipam: %s", self.ring.conflict)
        log.info("ipam: %s, owns %s", self.ring.status,
                 ", ".join(map(str, self.pool.owned)) or "nothing")  # fmt: skip

    def rmpeer(self, name: str, live: Set[str]) -> list[Net]:
        """Take over the space of dead peer ``name`` (Conflict while it is live)."""
        if self.ring is None:
            raise errors.Conflict(f"rmpeer needs gossip IPAM; this node is in {self.mode} mode")
        try:
            taken = self.ring.rmpeer(name, live)
        except ValueError as exc:
            raise errors.Conflict(str(exc)) from None
        self._follow_ring()
        log.info("ipam: removed peer %s, reclaimed %s", name,
                 ", ".join(map(str, taken)) or "nothing")  # fmt: skip
        return taken

    # -- pod addresses -------------------------------------------------------------------------

    def allocate(self, container_id: str, ifname: str) -> Allocation | None:
        """The key's address; None when the node must first obtain space (step, then ask
        again). Invalid for a malformed key, NoAddress when no space can come."""
        try:
            allocation = self.pool.allocate(container_id, ifname)
        except ValueError as exc:
            raise errors.Invalid(str(exc)) from None
        if allocation is None:
            self._check_exhausted()
        return allocation

    def _check_exhausted(self) -> None:
        if self.ring is None:
            raise errors.NoAddress(
                f"no free address: block {self.settings.pod_block} is full "
                f"({self.pool.used} addresses in use)"
            )
        ring = self.ring
        if ring.owned and ring.want is None and ring.status.startswith("waiting for IP"):
            raise errors.NoAddress(
                f"no free address: range {self.settings.range} is fully allocated "
                f"(this node uses {self.pool.used}; no reachable peer has space to give)"
            )

    def waiting_message(self, timeout: float) -> str:
        """Why a request that waited ``timeout`` seconds got no address."""
        status = self.ring.status if self.ring else "full"
        return (f"no address within {timeout:g}s: IPAM is {status} "
                f"(range {self.settings.range}); try again later")  # fmt: skip

    def release(self, container_id: str, ifname: str | None) -> list[Allocation]:
        """Free the key's addresses (every interface's when ``ifname`` is None)."""
        try:
            released = self.pool.release(container_id, ifname)
        except ValueError as exc:
            raise errors.Invalid(str(exc)) from None
        return released

    def document(self) -> dict[str, Any]:
        """The state to persist: what ``Ipam(..., state=...)`` restores."""
        ring = self.ring.to_state() if self.ring else None
        return {"ring": ring, "pool": self.pool.to_state()}

    # -- status --------------------------------------------------------------------------------

    def status(
        self, records: Mapping[str, PeerRecord], live: Set[str], nickname: str
    ) -> IpamStatus:
        """What ``status ipam``, /report and the IPAM metrics show."""
        owners = self._owners(records, live, nickname)
        lost = sum(o.addresses for o in owners if not o.reachable)
        ring = self.ring
        return IpamStatus(
            mode=self.mode,
            status=ring.status if ring else "ready",
            range=self.settings.range,
            block_prefix=self.pool.block_prefix,
            blocks=tuple(self.pool.active_blocks),
            conflict=self._conflict(),
            owners=tuple(owners),
            used=self.pool.used,
            capacity=self.pool.capacity,
            pending_allocates=self.pending,
            pending_claims=int(bool(ring and ring.want)),
            unreachable_addresses=lost,
            unreachable_percentage=round(100.0 * lost / self.settings.range.num_addresses, 2),
            refused=self._refused_counts(),
        )

    def _refused_counts(self) -> dict[str, int]:
        """Claims refused since start by reason; claims that could not be read as "malformed"."""
        counts = dict(self.refusals.counts)
        malformed = sum(self.malformed.values())
        if malformed:
            counts["malformed"] = counts.get("malformed", 0) + malformed
        return counts

    def _conflict(self) -> str | None:
        """What the operator should know: the ring's conflict, then the claims refused now."""
        refused = self.refused()
        parts = [self.ring.conflict] if self.ring and self.ring.conflict else []
        if refused:
            shown = "; ".join(refused[:REFUSALS_SHOWN])
            more = (
                f"; and {len(refused) - REFUSALS_SHOWN} more"
                if len(refused) > REFUSALS_SHOWN
                else ""
            )
            parts.append(f"refused claims (not routed): {shown}{more}")
        return " | ".join(parts) or None

    def _owners(
        self, records: Mapping[str, PeerRecord], live: Set[str], nickname: str
    ) -> list[Owner]:
        """This node first, then every peer that owns space of our ring (of its record
        without a ring), by name."""
        owners = []
        if self.pool.owned:
            owners.append(self._owner(self.name, nickname, self.pool.owned, self.pool.used, True))
        if self.ring is None:
            for name, r in sorted(records.items()):
                owned = self.routable(r) if name != self.name else ()
                if owned:
                    owners.append(self._owner(name, r.nickname, owned, 0, name in live))
            return owners
        for name, view in sorted(self.ring.known.items()):
            held = self.ring.routable(name)
            if held:
                record = records.get(name)
                nick = record.nickname if record else view.nickname
                used = min(view.claim.used, space.size(held))
                owners.append(self._owner(name, nick, held, used, name in live))
        return owners

    def _owner(self, name: str, nickname: str, owned: tuple[Net, ...], active: int,
               reachable: bool) -> Owner:  # fmt: skip
        addresses = space.size(owned)
        total = self.settings.range.num_addresses
        return Owner(name, nickname, name == self.name, reachable, tuple(owned), addresses,
                     round(100.0 * addresses / total, 1), active)  # fmt: skip
