"""The cluster's Nodes as this agent knows them (sans-IO): the table a list fills and a watch
keeps current, what each change means for the mesh, and the back-off between failed requests.

Theory of operation. The driver (agent/peers/kube.py) lists the Nodes, then watches from the
list's resourceVersion; each answer goes in here (``listed``, ``event``) and comes back as
``Changes``: Nodes that appeared, Nodes that went (each with the uid of the object that went,
so a Node deleted and created again under the same name is two changes) and whether the dial
targets moved. A relist is compared with the table it replaces, so a deletion that happened
while no watch ran is still seen. When the apiserver says the resourceVersion is too old (410
Gone), ``expire`` forgets it and the next request is a list.

Rules this module keeps: no I/O, no clock; the table holds only what the agent uses of a Node
(name, uid, InternalIP, podCIDR). The node's own Node is in the table but never a target.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass

Address = tuple[str, int]
Net = ipaddress.IPv4Network
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"  # watch event types


@dataclass(frozen=True)
class NodeInfo:
    """What the agent reads of one Node object."""

    name: str
    uid: str
    address: str | None = None  # its InternalIP
    pod_cidr: Net | None = None  # spec.podCIDR, once the controller-manager assigned it


@dataclass(frozen=True)
class Changes:
    """What one answer changed in the table."""

    added: tuple[NodeInfo, ...] = ()
    removed: tuple[NodeInfo, ...] = ()
    targets_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.targets_changed)


class NodeTable:
    """The Nodes of the cluster; ``own`` is this node's name."""

    def __init__(self, own: str, port: int) -> None:
        self.own = own
        self.port = port
        self.nodes: dict[str, NodeInfo] = {}
        self.version: str | None = None  # resourceVersion to watch from; None: list first

    @property
    def count(self) -> int:
        """How many Nodes the cluster has."""
        return len(self.nodes)

    @property
    def mine(self) -> NodeInfo | None:
        """This node's own Node, when it is listed."""
        return self.nodes.get(self.own)

    def targets(self) -> tuple[Address, ...]:
        """Every other Node's InternalIP at the agent's port: the mesh's dial targets."""
        return tuple(sorted(
            (n.address, self.port) for n in self.nodes.values()
            if n.name != self.own and n.address
        ))  # fmt: skip

    def listed(self, nodes: Iterable[NodeInfo], version: str) -> Changes:
        """A full list at ``version``: it replaces the table."""
        fresh = {n.name: n for n in nodes}
        before = self.targets()
        added = [n for n in fresh.values() if _is_new(self.nodes.get(n.name), n)]
        removed = [n for n in self.nodes.values() if _is_new(fresh.get(n.name), n)]
        self.nodes, self.version = fresh, version
        return Changes(_by_name(added), _by_name(removed), self.targets() != before)

    def event(self, kind: str, node: NodeInfo, version: str) -> Changes:
        """One watch event (ADDED, MODIFIED or DELETED) at ``version``."""
        self.version = version
        before = self.targets()
        old = self.nodes.get(node.name)
        if kind == DELETED:
            if old is None or old.uid != node.uid:
                return Changes()
            del self.nodes[node.name]
            return Changes(removed=(old,), targets_changed=self.targets() != before)
        self.nodes[node.name] = node
        added: tuple[NodeInfo, ...] = ()
        removed: tuple[NodeInfo, ...] = ()
        if old is None or old.uid != node.uid:
            added = (node,)
            removed = (old,) if old is not None else ()
        return Changes(added, removed, self.targets() != before)

    def expire(self) -> None:
        """The watch's resourceVersion is too old (410 Gone): the next request is a list."""
        self.version = None


def _is_new(old: NodeInfo | None, node: NodeInfo) -> bool:
    """Whether ``node`` is a Node object ``old`` was not (none, or another uid)."""
    return old is None or old.uid != node.uid


def _by_name(nodes: list[NodeInfo]) -> tuple[NodeInfo, ...]:
    return tuple(sorted(nodes, key=lambda n: n.name))


class Backoff:
    """Delays between failed requests: ``initial`` seconds, times ``factor`` per failure up to
    ``cap``, each jittered by up to a quarter so a cluster's agents do not retry in step."""

    def __init__(
        self,
        initial: float = 1.0,
        factor: float = 2.0,
        cap: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.factor, self.cap = initial, factor, cap
        self.rng = rng or random.Random()
        self.failures = 0

    def failed(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        delay = min(self.cap, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay * (1.0 - 0.25 * self.rng.random())

    def succeeded(self) -> None:
        """A request got through: the next failure waits ``initial`` again."""
        self.failures = 0
