"""What the mesh core reports to its driver: one small frozen dataclass per kind of event.

``Mesh.events()`` returns them in the order they happened; the driver hands each to its
``on_event`` callback. They only say *that* something changed and for which peer: the state
itself is read from the mesh (``topology.records``, ``routes()``, ``live()``), so a consumer
that falls behind never acts on a stale copy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordUpdated:
    """A new or newer record of peer ``name`` was merged (endpoints, blocks or claim)."""

    name: str


@dataclass(frozen=True)
class PeerReachable:
    """The routes now reach peer ``name``, directly or through a next hop."""

    name: str


@dataclass(frozen=True)
class PeerUnreachable:
    """The routes no longer reach peer ``name``."""

    name: str


@dataclass(frozen=True)
class RoutesChanged:
    """The next-hop table changed; ``Mesh.routes()`` holds the new one."""


@dataclass(frozen=True)
class PeerForgotten:
    """Peer ``name`` departed or stayed unreachable too long: its record was dropped."""

    name: str


MeshEvent = RecordUpdated | PeerReachable | PeerUnreachable | RoutesChanged | PeerForgotten
