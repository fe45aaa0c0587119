"""The Kubernetes peer source: the gossip mesh, dialling every Node the apiserver lists; and the
node's duties towards the cluster (NetworkUnavailable, reclaiming deleted Nodes' space).
Before it, agent/peers/startup.py completes the configuration from one list of the Nodes.

Running (``KubePeers.run``): the mesh's driver, plus three loops of this module's driver:
- Nodes: list, then watch from the list's resourceVersion; the watch is renewed every
  ``WATCH_TIMEOUT`` seconds from the last version seen, and a 410 Gone (version too old) means
  a relist, compared with the table so deletions in between are seen. Failures back off.
  Every change replaces the mesh's seeds with the other Nodes' InternalIPs.
- Readiness: once our own space is on the bridge and every member's published space is routed
  (or, with no member, after ``READY_GRACE``), the own Node's NetworkUnavailable goes to False.
- Reclaims (gossip IPAM only): agent/peers/reclaim.py decides the steps; this driver takes the
  Lease, calls rmpeer and deletes the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import Any

from agent import errors
from agent.peers import View
from agent.peers.gossip import GossipPeers
from agent.peers.kube_api import API_ERRORS, KubeApi, status_code, why
from agent.peers.nodes import Backoff, Changes, NodeTable
from agent.peers.reclaim import DELETE, REMOVE, TAKE, Reclaims, Step
from gossip.identity import name_for
from gossip.secret import Secrets

log = logging.getLogger("weave-py.kube")
WATCH_TIMEOUT = 300  # seconds the apiserver keeps one watch open; then it is renewed
WATCH_SLACK = 30.0  # seconds past that before a silent watch is given up as dead
READY_GRACE = 5.0  # seconds to wait for peers before an alone node declares itself ready
READY_INTERVAL = 1.0  # seconds between readiness checks until the condition is set

Net = ipaddress.IPv4Network
# rmpeer by peer name: the API's answer ({"name", "taken"}); errors.Conflict while it refuses
Rmpeer = Callable[[str], Awaitable[dict[str, Any]]]


class KubePeers:
    """The gossip source with Nodes as its dial targets, and the node's cluster duties.
    ``routed`` tells the destinations routed in the kernel now; ``rmpeer`` (None in kube IPAM
    mode: nothing to reclaim) removes a dead peer by name."""

    kind = "kubernetes"

    def __init__(
        self,
        gossip: GossipPeers,
        api: KubeApi,
        node_name: str,
        routed: Callable[[], Set[Net]],
        rmpeer: Rmpeer | None,
    ) -> None:
        self.gossip = gossip
        self.api = api
        self.node_name = node_name
        self.table = NodeTable(node_name, gossip.topology.local.control_endpoint[1])
        self.reclaims = Reclaims(node_name)
        self.routed = routed
        self.rmpeer = rmpeer
        self.network_available = False  # set once NetworkUnavailable=False was patched
        self._changed: Callable[[], None] = lambda: None
        self._reclaim_wake = asyncio.Event()

    # -- the source interface: the mesh's ------------------------------------------------------

    def view(self) -> View:
        """The mesh's view."""
        return self.gossip.view()

    def publish(self, fields: Mapping[str, Any]) -> None:
        """Into our record, out to the mesh."""
        self.gossip.publish(fields)

    def leave(self) -> None:
        """Goodbye to the mesh's neighbours."""
        self.gossip.leave()

    def terminations(self) -> int:
        """The mesh's."""
        return self.gossip.terminations()

    def rejections(self) -> Mapping[str, int]:
        """The mesh's."""
        return self.gossip.rejections()

    def connections(self) -> list[dict[str, str]]:
        """The mesh's control connections."""
        return self.gossip.connections()

    def accept_secrets(self, secrets: Secrets) -> None:
        """The mesh's."""
        self.gossip.accept_secrets(secrets)

    async def run(self, changed: Callable[[], None]) -> None:
        """The mesh and the three loops, until cancelled."""
        self._changed = changed
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.gossip.run(changed), name="gossip")
                tasks.create_task(self.follow_nodes(), name="nodes")
                tasks.create_task(self.mark_ready(), name="node-ready")
                if self.rmpeer is not None:
                    tasks.create_task(self.reclaim(), name="reclaim")
        finally:
            await self.api.close()

    # -- Nodes -----------------------------------------------------------------------------------

    async def follow_nodes(self) -> None:
        """List and watch the Nodes until cancelled."""
        backoff = Backoff()
        while True:
            try:
                if self.table.version is None:
                    self._apply(self.table.listed(*await self.api.list_nodes()))
                    log.info("list nodes: %d node(s), %d dial target(s)", self.table.count,
                             len(self.table.targets()))  # fmt: skip
                await self._watch()
                backoff.succeeded()
            except API_ERRORS as exc:
                if status_code(exc) != 410:
                    await _pause("watch nodes", exc, backoff)
                    continue
                log.info("relist nodes: the watch expired (resourceVersion too old)")
                self.table.expire()

    async def _watch(self) -> None:
        """One watch from the table's version; returns when it is due for renewal."""
        assert self.table.version is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCH_TIMEOUT + WATCH_SLACK):
                async for kind, node, version in self.api.watch_nodes(
                    self.table.version, WATCH_TIMEOUT
                ):
                    self._apply(self.table.event(kind, node, version))

    def _apply(self, changes: Changes) -> None:
        now = time.monotonic()
        for node in changes.removed:
            log.info("remove node: %s (uid %s)", node.name, node.uid)
            self.reclaims.node_deleted(node, now)
        for node in changes.added:
            self.reclaims.node_added(node, now)
        if changes.added or changes.removed:
            self._reclaim_wake.set()
        if changes.targets_changed:
            self.gossip.mesh.set_seeds(self.table.targets())
            self.gossip.driver.flush()
            self._changed()

    # -- readiness ------------------------------------------------------------------------------

    async def mark_ready(self) -> None:
        """Clear NetworkUnavailable once this node's routes are in place (then return)."""
        grace_until = time.monotonic() + READY_GRACE
        backoff = Backoff()
        while not self.network_available:
            await asyncio.sleep(READY_INTERVAL)
            if not self.routes_in_place(time.monotonic() >= grace_until):
                continue
            try:
                now = datetime.datetime.now(datetime.UTC)
                await self.api.set_network_available(self.node_name, now)
            except API_ERRORS as exc:
                await _pause("set node condition", exc, backoff)
                continue
            self.network_available = True
            log.info("set node condition: %s NetworkUnavailable=False", self.node_name)

    def routes_in_place(self, grace_over: bool) -> bool:
        """Our own space is ours and every member's published space is routed; with no
        member that has space, only once ``grace_over``."""
        if not self.gossip.topology.local.blocks:
            return False
        view = self.gossip.view()
        spaces = {b for m in view.members if m.record is not None for b in m.record.blocks}
        if not spaces:
            return grace_over
        routed = {str(n) for n in self.routed()}
        return spaces <= routed

    # -- reclaims -------------------------------------------------------------------------------

    async def reclaim(self) -> None:
        """Carry out the reclaim steps as they come due, until cancelled."""
        while True:
            for step in self.reclaims.due(time.monotonic()):
                await self._step(step)
            timeout = self.reclaims.next_at - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(0.0, timeout), 3600.0)):
                    await self._reclaim_wake.wait()
            self._reclaim_wake.clear()

    async def _step(self, step: Step) -> None:
        if step.kind == TAKE:
            await self._take(step)
        elif step.kind == REMOVE:
            await self._remove(step)
        elif step.kind == DELETE:
            await self._delete(step)

    async def _take(self, step: Step) -> None:
        taken: bool | None = None
        try:
            now = datetime.datetime.now(datetime.UTC)
            taken = await self.api.take_lease(step.lease, step.node, self.node_name, now)
        except API_ERRORS as exc:
            log.warning("reclaim node %s: lease %s: %s; retry", step.node, step.lease, why(exc))
        if taken:
            log.info("reclaim node %s: lease %s is ours, this node reclaims its space",
                     step.node, step.lease)  # fmt: skip
        elif taken is False:
            log.info("reclaim node %s: lease %s is another node's, it reclaims the space",
                     step.node, step.lease)  # fmt: skip
        self.reclaims.lease_taken(step.node, taken, time.monotonic())

    async def _remove(self, step: Step) -> None:
        assert self.rmpeer is not None
        name = self.peer_name(step.node)
        try:
            result = await self.rmpeer(name)
        except errors.Refused as exc:
            then = self.reclaims.removed(step.node, False, time.monotonic())
            log.info("reclaim node %s: rmpeer %s refused: %s; %s", step.node, name,
                     exc.message, then)  # fmt: skip
            return
        self.reclaims.removed(step.node, True, time.monotonic())
        taken = ", ".join(map(str, result.get("taken", []))) or "nothing"
        log.info("reclaim node %s: rmpeer %s(%s) took %s", step.node, name, step.node, taken)

    async def _delete(self, step: Step) -> None:
        done = False
        try:
            await self.api.delete_lease(step.lease)
            done = True
            log.info("reclaim node %s: lease %s deleted", step.node, step.lease)
        except API_ERRORS as exc:
            log.warning("reclaim node %s: delete lease %s: %s; retry", step.node, step.lease,
                        why(exc))  # fmt: skip
        self.reclaims.lease_deleted(step.node, done, time.monotonic())

    def peer_name(self, node: str) -> str:
        """The peer whose nickname is ``node`` (its record, else the name derived from it)."""
        for name, record in self.gossip.topology.records.items():
            if record.nickname == node and name != self.gossip.topology.local.name:
                return name
        return name_for(node)


async def _pause(what: str, exc: BaseException, backoff: Backoff) -> None:
    delay = backoff.failed()
    log.warning("%s: %s; retry in %.1fs", what, why(exc), delay)
    await asyncio.sleep(delay)
