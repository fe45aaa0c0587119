"""Pod addresses as the CNI handler and the HTTP API ask for them: the driver of agent/ipam.py.

``Addresses`` is the CNI handler's ``PodAddresses`` seam. An address request that finds no
space waits (counted in ``Ipam.pending``, which makes the next coordinator step ask the ring for
space) until ``space_arrived`` or ``ipam_timeout``. When an allocation opens a new block, the
node is brought in line (its gateway on the bridge) before the address is handed out.

Persistence: ``state_dir/ipam.json`` holds the ring's state and every allocation, written
atomically (overlay/ipam/store.py) on a writer thread of its own, so the event loop that also
carries the data plane never waits for the disk. Writes are ordered by when they were asked for;
one overtaken by a newer write is skipped (the newer document holds everything the older one
did). A request is answered only after its write: a crash never loses an address that was
handed out, nor a grant that was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from agent import errors
from agent.ipam import Ipam, check_document
from overlay.ipam import store
from overlay.ipam.pool import Allocation

log = logging.getLogger("weave-py.ipam")
STATE_FILE = "ipam.json"


class StateFile:
    """The IPAM document on disk, written on a thread of its own."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, STATE_FILE)
        self._seq = self._written = 0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ipam-writer")

    def load(self) -> dict[str, Any] | None:
        """The saved document (None when there is none); StoreError when unusable, also when
        it lacks what a running node holds."""
        document = store.load(self.path)
        try:
            check_document(document)
        except ValueError as exc:
            raise store.StoreError(f"{self.path}: {exc}") from None
        return document

    def save(self, document: Mapping[str, Any]) -> None:
        """Write now, on the caller's thread (start-up, before anything is served)."""
        self._seq += 1
        self._write(self._seq, document)

    async def flush(self, document: Mapping[str, Any]) -> None:
        """Write on the writer thread; StorageFailed when the disk refuses."""
        self._seq += 1
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._write, self._seq, document)
        except OSError as exc:
            raise errors.StorageFailed(f"cannot write {self.path}", str(exc)) from None

    def _write(self, seq: int, document: Mapping[str, Any]) -> None:
        with self._lock:
            if seq <= self._written:
                return
            store.save(self.path, document)
            self._written = seq

    def close(self) -> None:
        """Finish pending writes and stop the thread."""
        self._writer.shutdown()


class Addresses:
    """The node's pod addresses over ``ipam``. ``wake`` asks the daemon for a coordinator step
    now; ``follow`` runs one and waits until the node is in line with IPAM (gateways)."""

    def __init__(
        self,
        ipam: Ipam,
        state: StateFile,
        timeout: float,
        wake: Callable[[], None],
        follow: Callable[[], Awaitable[None]],
    ) -> None:
        self.ipam = ipam
        self.state = state
        self.timeout = timeout
        self.wake = wake
        self.follow = follow
        self.started = False  # the node is set up: requests are taken
        self._space = asyncio.Event()

    def ready(self) -> bool:
        """Whether ADD may proceed now (it may still wait for space)."""
        return self.started and self.ipam.can_allocate()

    def space_arrived(self) -> None:
        """The coordinator stepped: waiting requests try again."""
        self._space.set()

    async def allocate(self, container_id: str, ifname: str) -> tuple[IPv4Interface, IPv4Address]:
        """The key's address and gateway; durable only after ``persist``."""
        a = await self.take(container_id, ifname)
        return a.address, a.gateway

    async def take(self, container_id: str, ifname: str) -> Allocation:
        """The key's allocation, waiting for space up to ``timeout``."""
        gateways = self.ipam.gateways
        allocation = self.ipam.allocate(container_id, ifname)
        if allocation is None:
            allocation = await self._wait_for_space(container_id, ifname)
        if self.ipam.gateways != gateways:
            await self.follow()
        return allocation

    async def _wait_for_space(self, container_id: str, ifname: str) -> Allocation:
        """Counted as pending (so the next step asks for space; it is asked for now), try
        again after every step until the deadline."""
        deadline = time.monotonic() + self.timeout
        self.ipam.pending += 1
        try:
            self.wake()
            while True:
                self._space.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.TimedOut(self.ipam.waiting_message(self.timeout))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._space.wait()
                allocation = self.ipam.allocate(container_id, ifname)
                if allocation is not None:
                    return allocation
        finally:
            self.ipam.pending -= 1

    async def persist(self) -> None:
        """Make every allocation so far durable."""
        await self.state.flush(self.ipam.document())

    async def release(self, container_id: str, ifname: str | None) -> None:
        """Give the key's addresses back (None: every interface); not held is no error."""
        await self.free(container_id, ifname)

    async def free(self, container_id: str, ifname: str | None) -> list[Allocation]:
        """Free the key's addresses and say which; written before the answer."""
        gateways = self.ipam.gateways
        released = self.ipam.release(container_id, ifname)
        if released:
            await self.persist()
        if self.ipam.gateways != gateways:
            await self.follow()
        return released

    def held(self) -> list[tuple[str, str]]:
        """Every (container id, ifname) holding an address."""
        return [(a.container_id, a.ifname) for a in self.ipam.pool.allocations()]
