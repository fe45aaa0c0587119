"""Peer sources: where this node learns of the other nodes.

One interface, several sources: a static list from configuration (agent/peers/static.py), the
gossip mesh (agent/peers/gossip.py), and the mesh with the Kubernetes Nodes as its dial targets
(agent/peers/kube.py); agent/peers/source.py picks one for a configuration. The coordinator
(agent/coordinator.py) reads a source's ``view()`` and never asks which kind of source it is;
the daemon runs the source's driver and hands it what the coordinator decides to publish.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gossip.secret import Secrets
from gossip.topology import PeerRecord

Address = tuple[str, int]
Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class Member:
    """A remote node as a source knows it. ``record`` is its gossiped record, whose address
    claim IPAM reads to decide which blocks to route to it; without one (a static peer),
    ``blocks`` are the blocks configured for it."""

    name: str  # the mesh name ("aa:bb:..."), derived from the node name
    nickname: str  # the node name
    endpoint: Address  # its sleeve endpoint (heartbeats go here)
    via: Address | None = None  # the next hop's endpoint when its data is relayed
    record: PeerRecord | None = None
    blocks: tuple[Net, ...] = ()


@dataclass(frozen=True)
class View:
    """What a source knows at one moment: the members routes reach, every peer's record (what
    IPAM learns the ring from; empty for a static list) and the peers the control graph
    reaches."""

    members: tuple[Member, ...] = ()
    records: Mapping[str, PeerRecord] = field(default_factory=dict)
    live: frozenset[str] = frozenset()


class PeerSource(Protocol):
    """A source of peers: a view to read, a record to publish into, a driver to run."""

    kind: str  # "static", "gossip" or "kubernetes": for status and logs only

    def view(self) -> View:
        """The current knowledge (cheap: the coordinator reads it on every step)."""
        ...

    def publish(self, fields: Mapping[str, Any]) -> None:
        """Put ``fields`` (address claim, unreachable peers) into our record and send it out."""
        ...

    async def run(self, changed: Callable[[], None]) -> None:
        """Drive the source until cancelled; call ``changed`` whenever the view may differ."""
        ...

    def leave(self) -> None:
        """Tell the other nodes we are going (clean shutdown)."""
        ...

    def connections(self) -> list[dict[str, str]]:
        """Control connections for the status views (empty when the source has none)."""
        ...

    def terminations(self) -> int:
        """Control connections ended so far (Weave's weave_connection_terminations_total)."""
        ...

    def rejections(self) -> Mapping[str, int]:
        """Control-plane input refused so far, by reason (empty when the source has none)."""
        ...

    def accept_secrets(self, secrets: Secrets) -> None:
        """What peers must prove from now on (the password file changed)."""
        ...
