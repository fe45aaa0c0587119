"""The gossip peer source: the mesh core, its driver, and the members its routes reach.

The node publishes its record (endpoints, address claim, data-plane exceptions); every peer the
mesh's routes reach is a member, sent to directly or through the next hop's endpoint.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.peers import Address, Member, View
from gossip.driver import MeshDriver
from gossip.events import MeshEvent
from gossip.handshake import Hello
from gossip.identity import Identity
from gossip.mesh import Mesh, MeshConfig
from gossip.secret import Secrets
from gossip.topology import PeerRecord, Topology

log = logging.getLogger("weave-py.mesh")


def membership(secrets: Secrets) -> str:
    """What the start-up log says of membership and encryption (Weave's wording for the
    latter); never the secrets themselves."""
    if not secrets.enabled:
        return (
            "no password, any host that reaches the port may join; "
            "communication between peers is unencrypted"
        )
    return (
        f"peers must prove the password ({len(secrets.accepted)} accepted); "
        "communication between peers is encrypted"
    )


def seed_address(seed: str, port: int) -> Address:
    """``HOST`` or ``HOST:PORT`` as an address (the agent's port by default)."""
    host, _, given = seed.partition(":")
    return host, int(given) if given else port


class GossipPeers:
    """Members from the mesh. ``endpoint`` is where this node is reached (control and sleeve),
    ``claim`` the record fields to start with, ``seeds`` the nodes to join through, ``secrets``
    what a peer must prove to join."""

    kind = "gossip"

    def __init__(
        self,
        identity: Identity,
        incarnation: int,
        endpoint: Address,
        listen: Address,
        seeds: tuple[str, ...],
        conn_limit: int,
        claim: Mapping[str, Any],
        secrets: Secrets | None = None,
    ) -> None:
        record = PeerRecord(
            name=identity.name, nickname=identity.nickname, incarnation=incarnation,
            version=1, uid=identity.uid, data_endpoint=endpoint, control_endpoint=endpoint,
            **claim,
        )  # fmt: skip
        self.topology = Topology(record)
        self.mesh = Mesh(
            self.topology,
            MeshConfig(conn_limit=conn_limit),
            random.Random(),
            [seed_address(s, endpoint[1]) for s in seeds],
        )
        hello = Hello(
            identity.name, identity.nickname, identity.uid, incarnation, endpoint, endpoint
        )
        self.secrets = secrets or Secrets.none()
        self.driver = MeshDriver(self.mesh, hello, listen, self._event, secrets=self.secrets)
        self._changed: Callable[[], None] = lambda: None

    def _event(self, event: MeshEvent) -> None:
        self._changed()  # every kind of mesh event can change members, routes or claims

    def view(self) -> View:
        """Every peer the routes reach, with the records and the live set."""
        records = self.topology.records
        members = []
        for name, hop in sorted(self.mesh.routes().items()):
            r = records.get(name)
            if r is None or hop not in records:
                continue
            via = None if hop == name else self._endpoint(records[hop])
            members.append(Member(name, r.nickname, self._endpoint(r), via, r))
        return View(tuple(members), records, frozenset(self.mesh.live()))

    def _endpoint(self, record: PeerRecord) -> Address:
        """A neighbour's sleeve endpoint at the host we reach it at (what it advertises may be
        on a segment we cannot reach)."""
        host, port = record.data_endpoint
        return self.driver.observed.get(record.name, host), port

    def publish(self, fields: Mapping[str, Any]) -> None:
        """Change our record and send it out now."""
        self.mesh.set_local(time.monotonic(), **fields)
        self.driver.flush()

    async def run(self, changed: Callable[[], None]) -> None:
        """Run the mesh driver until cancelled."""
        self._changed = changed
        log.info("start mesh: %s", membership(self.secrets))
        await self.driver.run()

    def leave(self) -> None:
        """Say goodbye to every neighbour."""
        self.driver.leave()

    def connections(self) -> list[dict[str, str]]:
        """Control connections and dial targets, Weave-style."""
        return self.driver.connections()

    def terminations(self) -> int:
        """Control connections the driver has seen end."""
        return self.driver.terminations

    def rejections(self) -> Mapping[str, int]:
        """What the mesh and its driver refused, by reason."""
        return dict(self.driver.mesh.rejections.counts)

    def accept_secrets(self, secrets: Secrets) -> None:
        """New handshakes use ``secrets``; connections under a dropped secret redial."""
        self.secrets = secrets
        self.driver.accept_secrets(secrets)
