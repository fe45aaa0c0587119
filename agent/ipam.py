"""The node's address management: the ring core and the pod pool, persisted, and what the rest
of the agent asks of them.

Modes: ``gossip`` (no pod block configured: the ring in overlay/ipam/ring.py decides which space
this node owns, through claims in the topology records) and ``kube``/``static`` (a fixed pod
block from configuration: Kubernetes' podCIDR, or the static-peer lab). In every mode the pool
hands out pod addresses keyed by (container id, interface name).

Persistence: ``state_dir/ipam.json`` holds the ring's state and every allocation. It is written
atomically (store.py) after each change and before the change is published or answered, so a
crash never loses an address that was handed out, nor a grant that was made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent import errors
from agent.config import Config, init_count
from gossip.topology import PeerRecord
from overlay.ipam import space, store
from overlay.ipam.claim import Claim, ClaimError, decode
from overlay.ipam.pool import Allocation, Pool
from overlay.ipam.ring import Ring, View

log = logging.getLogger("weave-py.ipam")
Net = ipaddress.IPv4Network
STATE_FILE = "ipam.json"


class IpamError(Exception):
    """An address request that cannot be met; ``code`` is the HTTP status to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Ipam:
    def __init__(self, config: Config, name: str, incarnation: int) -> None:
        self.config = config
        self.name = name
        self.path = os.path.join(config.state_dir, STATE_FILE)
        self.mode = "gossip" if config.pod_block is None else ("static" if config.peers else "kube")
        doc = store.load(self.path) or {}
        self.ring: Ring | None = None
        if config.pod_block is None:
            quorum = init_count(config) // 2 + 1
            self.ring = Ring(name, config.ipalloc_range, config.ipalloc_block, quorum,
                             incarnation, doc.get("ring"))  # fmt: skip
        self.pool = self._load_pool(doc.get("pool"))
        self.malformed: Counter[str] = Counter()  # claims we could not read, by peer
        self.pending = 0  # requests waiting for space
        self.kick: Callable[[], None] = lambda: None  # asks the agent to step and publish
        self._space = asyncio.Event()
        self._last_status = ""
        self.published: dict[str, Any] = {}
        self._claims: dict[str, tuple[PeerRecord, Claim | str]] = {}  # str: why malformed
        self._seq = self._written = 0
        self._write_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ipam-writer")
        self.save()

    def _load_pool(self, state: Mapping[str, Any] | None) -> Pool:
        block = self.config.pod_block
        prefix = self.config.ipalloc_block if block is None else block.prefixlen
        pool = Pool.from_state(state) if state else Pool(prefix)
        if pool.block_prefix != prefix:
            if pool.used:
                raise ValueError(
                    f"{self.path}: allocations use /{pool.block_prefix} blocks, configuration "
                    f"says /{prefix}; keep the old block size or remove the node's pods first"
                )
            pool = Pool(prefix)
        owned = [block] if block is not None else (self.ring.owned if self.ring else [])
        pool.set_owned(owned)  # raises when configuration no longer holds allocated addresses
        return pool

    # -- what the node uses ------------------------------------------------------------------

    @property
    def owned(self) -> list[Net]:
        return list(self.pool.owned)

    @property
    def gateways(self) -> tuple[ipaddress.IPv4Interface, ...]:
        return self.pool.gateways

    def publish(self) -> dict[str, Any]:
        """The record fields to publish now (remembered as published)."""
        self.published = self.record_fields()
        return self.published

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
        ours = self.ring.ring if self.ring else None
        return claim.owned if claim.ring == ours else ()

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

    def step(self, records: Mapping[str, PeerRecord], live: Set[str]) -> bool:
        """Take in the topology; True when our claim changed (publish it)."""
        if self.ring is None:
            return False
        for gone in self._claims.keys() - records.keys():
            del self._claims[gone]
        views = {}
        for name, r in records.items():
            if name == self.name:
                continue
            try:
                claim = self._claim_of(r)
            except ClaimError:
                continue  # counted and logged by ``routable``
            views[name] = View(r.incarnation, r.version, claim, r.nickname)
        need = self.pending > 0 or not self.pool.owned or self.pool.used >= self.pool.capacity
        if self.ring.step(time.time_ns(), views, live, need, self.pool.free_space(),
                          self.pool.used):  # fmt: skip
            self._follow_ring()
            self.save()
        self._log_status()
        self._space.set()  # waiting requests try again
        return self.record_fields() != self.published

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
        status = (self.ring.status, self.ring.conflict, tuple(self.pool.owned))
        text = repr(status)
        if text == self._last_status:
            return
        self._last_status = text
        if self.ring.conflict:
            log.error("ipam: %s", self.ring.conflict)
        log.info("ipam: %s, owns %s", self.ring.status,
                 ", ".join(map(str, self.pool.owned)) or "nothing")  # fmt: skip

    def rmpeer(self, name: str, live: Set[str]) -> list[Net]:
        if self.ring is None:
            raise errors.Conflict(f"rmpeer needs gossip IPAM; this node is in {self.mode} mode")
        try:
            taken = self.ring.rmpeer(name, live)
        except ValueError as exc:
            raise errors.Conflict(str(exc)) from None
        self._follow_ring()
        self.save()
        log.info("ipam: removed peer %s, reclaimed %s", name,
                 ", ".join(map(str, taken)) or "nothing")  # fmt: skip
        return taken

    # -- pod addresses -------------------------------------------------------------------------

    async def allocate(self, container_id: str, ifname: str, persist: bool = True) -> Allocation:
        """The key's address. With ``persist`` False the caller must ``await flush()`` before
        it hands the address out (the CNI handler overlaps that write with the veth work)."""
        deadline = time.monotonic() + self.config.ipam_timeout
        while True:
            try:
                allocation = self.pool.allocate(container_id, ifname)
            except ValueError as exc:
                raise errors.Invalid(str(exc)) from None
            if allocation is not None:
                if persist:
                    self.save()
                return allocation
            self._check_exhausted()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.TimedOut(self._waiting_message())
            self._space.clear()
            self.pending += 1
            try:
                self.kick()
                await asyncio.wait_for(self._space.wait(), remaining)
            except TimeoutError:
                raise errors.TimedOut(self._waiting_message()) from None
            finally:
                self.pending -= 1

    def _check_exhausted(self) -> None:
        if self.ring is None:
            raise errors.NoAddress(
                f"no free address: block {self.config.pod_block} is full "
                f"({self.pool.used} addresses in use)"
            )  # fmt: skip
        ring = self.ring
        if ring.owned and ring.want is None and ring.status.startswith("waiting for IP"):
            raise errors.NoAddress(
                f"no free address: range {self.config.ipalloc_range} is fully allocated "
                f"(this node uses {self.pool.used}; no reachable peer has space to give)"
            )  # fmt: skip

    def _waiting_message(self) -> str:
        status = self.ring.status if self.ring else "full"
        return (f"no address within {self.config.ipam_timeout:g}s: IPAM is {status} "
                f"(range {self.config.ipalloc_range}); try again later")  # fmt: skip

    def release(self, container_id: str, ifname: str | None) -> list[Allocation]:
        try:
            released = self.pool.release(container_id, ifname)
        except ValueError as exc:
            raise errors.Invalid(str(exc)) from None
        if released:
            self.save()
        return released

    def save(self) -> None:
        """Write the state now (on the caller's thread)."""
        self._seq += 1
        self._write(self._seq, self._document())

    async def flush(self) -> None:
        """Write the state on the writer thread: the event loop goes on meanwhile. Writes are
        ordered by when they were asked for; one overtaken by a newer write is skipped (the
        newer document holds everything the older one did)."""
        self._seq += 1
        seq, document = self._seq, self._document()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, seq, document)

    def _document(self) -> dict[str, Any]:
        ring = self.ring.to_state() if self.ring else None
        return {"ring": ring, "pool": self.pool.to_state()}

    def _write(self, seq: int, document: dict[str, Any]) -> None:
        with self._write_lock:
            if seq <= self._written:
                return
            store.save(self.path, document)
            self._written = seq

    # -- status --------------------------------------------------------------------------------

    def status(
        self, records: Mapping[str, PeerRecord], live: Set[str], nickname: str
    ) -> dict[str, Any]:
        total = self.config.ipalloc_range.num_addresses
        owners = []
        if self.pool.owned:
            local = self._owner(self.name, nickname, list(self.pool.owned), self.pool.used, True)
            owners.append(local)
        if self.ring is not None:
            for name, view in sorted(self.ring.known.items()):
                if view.claim.ring != self.ring.ring or not view.claim.owned:
                    continue
                record = records.get(name)
                nick = record.nickname if record else view.nickname
                owners.append(self._owner(name, nick, list(view.claim.owned), view.claim.used,
                                          name in live))  # fmt: skip
        else:
            for name, r in sorted(records.items()):
                if name != self.name and r.blocks:
                    owned = [Net(b) for b in r.blocks]
                    owners.append(self._owner(name, r.nickname, owned, 0, name in live))
        unreachable = [o for o in owners if not o["reachable"]]
        lost = sum(o["addresses"] for o in unreachable)
        return {
            "mode": self.mode,
            "status": self.ring.status if self.ring else "ready",
            "range": str(self.config.ipalloc_range),
            "block_prefix": self.pool.block_prefix,
            "blocks": [str(b) for b in self.pool.active_blocks],
            "conflict": self.ring.conflict if self.ring else None,
            "owners": owners,
            "used": self.pool.used,
            "capacity": self.pool.capacity,
            "pending_allocates": self.pending,
            "pending_claims": int(bool(self.ring and self.ring.want)),
            "unreachable_addresses": lost,
            "unreachable_percentage": round(100.0 * lost / total, 2),
        }

    def _owner(self, name: str, nickname: str, owned: list[Net], active: int,
               reachable: bool) -> dict[str, Any]:  # fmt: skip
        addresses = space.size(owned)
        return {
            "name": name,
            "nickname": nickname,
            "local": name == self.name,
            "reachable": reachable,
            "owned": [str(n) for n in owned],
            "addresses": addresses,
            "share": round(100.0 * addresses / self.config.ipalloc_range.num_addresses, 1),
            "active": active,
        }
