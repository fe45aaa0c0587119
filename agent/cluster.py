"""Gossip mode: the mesh core and its driver, and what this node makes of the topology.

The node publishes its record (endpoints, address claim, data-plane exceptions); every change
in the routes the mesh computes becomes sleeve peers (direct or via a next hop) and kernel
routes, for the space IPAM says each peer owns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from gossip.driver import MeshDriver
from gossip.events import MeshEvent
from gossip.handshake import Hello
from gossip.identity import Identity, peer_id
from gossip.mesh import Mesh, MeshConfig
from gossip.topology import PeerRecord, Topology
from overlay.sleeve import PeerSpec

Address = tuple[str, int]


def seed_address(seed: str, port: int) -> Address:
    host, _, given = seed.partition(":")
    return host, int(given) if given else port


class Cluster:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        advertise: str,
        incarnation: int,
        claim: dict[str, Any],
        routable: Callable[[PeerRecord], tuple[ipaddress.IPv4Network, ...]],
    ) -> None:
        endpoint = (advertise, config.port)
        record = PeerRecord(
            name=identity.name, nickname=identity.nickname, incarnation=incarnation,
            version=1, uid=identity.uid, data_endpoint=endpoint, control_endpoint=endpoint,
            **claim,
        )  # fmt: skip
        self.routable = routable
        self.topology = Topology(record)
        self.mesh = Mesh(
            self.topology,
            MeshConfig(conn_limit=config.conn_limit),
            random.Random(),
            [seed_address(s, config.port) for s in config.seeds],
        )
        hello = Hello(
            identity.name, identity.nickname, identity.uid, record.incarnation, endpoint, endpoint
        )
        self.driver = MeshDriver(self.mesh, hello, (config.bind_address, config.port), self._event)
        self.changed = asyncio.Event()
        self.changed.set()

    def _event(self, event: MeshEvent) -> None:
        self.changed.set()  # every kind of mesh event can change peers, routes or claims

    def peer_specs(self) -> list[PeerSpec]:
        """Every peer the routes reach: sent to directly, or via the next hop's endpoint (at
        the host we reach a neighbour at, when it differs from what it advertises)."""
        records = self.topology.records

        def endpoint(name: str) -> tuple[str, int]:
            host, port = records[name].data_endpoint
            return self.driver.observed.get(name, host), port

        specs = []
        for name, hop in sorted(self.mesh.routes().items()):
            r = records.get(name)
            if r is None or hop not in records:
                continue
            via = None if hop == name else endpoint(hop)
            blocks = self.routable(r)
            specs.append(PeerSpec(peer_id(name), r.nickname, endpoint(name), blocks, via, name))
        return specs

    def publish(self, **changes: Any) -> None:
        """Change our record (the address claim) and send it out now."""
        self.mesh.set_local(time.monotonic(), **changes)
        self.driver.flush()

    def set_unreachable(self, names: list[str]) -> None:
        """Publish the peers whose direct data path does not answer (routes relay them)."""
        self.mesh.set_local(time.monotonic(), unreachable=tuple(names))
        self.driver.flush()
