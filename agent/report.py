"""The status tree: one typed report of the node behind ``/report``, the status views and the
Prometheus collector.

``Report.to_json()`` is the ``/report`` document: the keys, their order and the value types the
clients read (networks as "a.b.c.d/n" strings, counters as objects of reason -> count).
``Report.from_json()`` reads such a document back in a client (the lab, the CLI) that fetched it
from another process: every field is checked, and a document that is not a report raises one
``document.DocumentError`` naming the first field at fault.

agent/snapshot.py takes a Report of the running cores.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from agent.document import DocumentError, Fields
from overlay.paths import Path

Net = ipaddress.IPv4Network
Json = dict[str, Any]
PEER_STATES = ("established", "pending")
PATHS = tuple(p.value for p in Path)  # "fastdp", "sleeve"
DIRECTIONS = ("->", "<-")
IPAM_MODES = ("gossip", "static", "kube")
OMITTED_WHEN_NONE = {"omit": True}  # field metadata: no key at all in the JSON when None


class _Node:
    """A part of the tree: ``to_json()`` gives its part of the ``/report`` document."""

    def to_json(self) -> Json:
        """This part as JSON: field order is key order; see the module docstring."""
        out: Json = _json(self)
        return out


@dataclass(frozen=True)
class Router(_Node):
    """This node's router: its mesh identity, control port and the data-path modes in use."""

    name: str  # the mesh name, "aa:bb:cc:dd:ee:ff"
    nickname: str  # the node name
    uid: str  # this process's random uid, hexadecimal
    port: int  # control (TCP) and sleeve (UDP) port
    mtu: int  # overlay MTU given to pods, bytes
    underlay_mtu: int  # MTU of the interface towards the peers, bytes
    offload: str  # the TUN's offload mode ("off", "csum", "tso+csum", ...)
    super_packets: str  # how super-packets cross the wire: "udp-gso" or "ip-fragments"
    encryption: bool  # peers must prove a shared secret; the sleeve and control are sealed

    @classmethod
    def from_json(cls, data: object, where: str = "router") -> Self:
        """The router part of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(
            name=f.text("name"),
            nickname=f.text("nickname"),
            uid=f.text("uid"),
            port=f.integer("port"),
            mtu=f.integer("mtu"),
            underlay_mtu=f.integer("underlay_mtu"),
            offload=f.text("offload"),
            super_packets=f.text("super_packets"),
            encryption=f.flag("encryption"),
        )


@dataclass(frozen=True)
class Owner(_Node):
    """A peer that owns address space, as ``status ipam`` lists it."""

    name: str
    nickname: str
    local: bool  # this node
    reachable: bool  # in the mesh's live set (the local node may show False before it joins)
    owned: tuple[Net, ...]
    addresses: int  # addresses in ``owned``
    share: float  # percentage of the whole range, one decimal
    active: int  # addresses in use (as the owner last published it)

    @classmethod
    def from_json(cls, data: object, where: str = "owner") -> Self:
        """One owner of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(
            name=f.text("name"),
            nickname=f.text("nickname"),
            local=f.flag("local"),
            reachable=f.flag("reachable"),
            owned=f.nets("owned"),
            addresses=f.integer("addresses"),
            share=f.number("share"),
            active=f.integer("active"),
        )


@dataclass(frozen=True)
class IpamStatus(_Node):
    """Address management: the mode, the ring's status, this node's space and every owner."""

    mode: str  # one of IPAM_MODES
    status: str  # Weave's words: "ready", "idle", "awaiting consensus", ...
    range: Net  # the cluster range (IPALLOC_RANGE)
    block_prefix: int  # prefix length of the pod blocks
    blocks: tuple[Net, ...]  # this node's active blocks (a gateway on the bridge each)
    conflict: str | None  # why this node's ring disagrees with another's, if it does
    owners: tuple[Owner, ...]
    used: int  # pod addresses in use on this node
    capacity: int  # pod addresses this node's space holds
    pending_allocates: int  # requests waiting for space
    pending_claims: int  # 1 while this node asks a peer for space
    unreachable_addresses: int  # addresses owned by unreachable peers
    unreachable_percentage: float  # the same as a percentage of the range, two decimals
    refused: Mapping[str, int]  # other peers' claims refused since start, by reason

    @classmethod
    def from_json(cls, data: object, where: str = "ipam") -> Self:
        """The IPAM part of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(
            mode=f.text("mode", IPAM_MODES),
            status=f.text("status"),
            range=f.net("range"),
            block_prefix=f.integer("block_prefix"),
            blocks=f.nets("blocks"),
            conflict=f.maybe_text("conflict"),
            owners=tuple(Owner.from_json(d, w) for d, w in f.items("owners")),
            used=f.integer("used"),
            capacity=f.integer("capacity"),
            pending_allocates=f.integer("pending_allocates"),
            pending_claims=f.integer("pending_claims"),
            unreachable_addresses=f.integer("unreachable_addresses"),
            unreachable_percentage=f.number("unreachable_percentage"),
            refused=f.counts("refused"),
        )


@dataclass(frozen=True)
class Peer(_Node):
    """A remote peer of the data plane: its route, data path, health and counters."""

    name: str  # the mesh name
    via: str | None  # "host:port" of the next hop while relayed, else None
    nickname: str
    address: str  # "host:port" of its sleeve endpoint
    blocks: tuple[Net, ...]  # the space routed to it
    state: str  # "established" while heartbeats are answered, else "pending"
    rtt_ms: float | None  # last heartbeat round trip, None before the first answer
    mtu: int  # overlay MTU towards it
    path: str  # one of PATHS: what carries its pod traffic
    path_reason: str  # why it is on that path, in words
    path_since: float | None  # unix seconds of its last switch, None when it never switched
    path_switches: int  # switches since this agent started
    tx_packets: int  # on both paths (the fast path's as the kernel counted them)
    tx_bytes: int  # inner bytes, both paths
    rx_packets: int
    rx_bytes: int  # inner bytes, both paths
    relayed: int  # frames for it forwarded on behalf of another peer
    drops: Mapping[str, int]  # frames dropped, by reason

    @classmethod
    def from_json(cls, data: object, where: str = "peer") -> Self:
        """One peer of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(
            name=f.text("name"),
            via=f.maybe_text("via"),
            nickname=f.text("nickname"),
            address=f.text("address"),
            blocks=f.nets("blocks"),
            state=f.text("state", PEER_STATES),
            rtt_ms=f.maybe_number("rtt_ms"),
            mtu=f.integer("mtu"),
            path=f.text("path", PATHS),
            path_reason=f.text("path_reason"),
            path_since=f.maybe_number("path_since"),
            path_switches=f.integer("path_switches"),
            tx_packets=f.integer("tx_packets"),
            tx_bytes=f.integer("tx_bytes"),
            rx_packets=f.integer("rx_packets"),
            rx_bytes=f.integer("rx_bytes"),
            relayed=f.integer("relayed"),
            drops=f.counts("drops"),
        )


@dataclass(frozen=True)
class Route(_Node):
    """A kernel route of the node's table, as the last reconcile listed it."""

    destination: Net
    device: str

    @classmethod
    def from_json(cls, data: object, where: str = "route") -> Self:
        """One route of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(destination=f.net("destination"), device=f.text("device"))


@dataclass(frozen=True)
class Connection(_Node):
    """A control (gossip) connection or dial target, with Weave's states: "connecting",
    "retrying", "failed", "established", or "pending" while the peer's data path is not."""

    direction: str  # "->" dialled by us, "<-" accepted
    address: str  # "host:port" (for "<-", the remote end of the TCP connection)
    state: str
    peer: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # "name(nickname)"
    name: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # the peer's mesh name
    detail: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # why it failed
    mtu: int | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # when established

    @classmethod
    def from_json(cls, data: object, where: str = "connection") -> Self:
        """One connection of a fetched document (DocumentError when it is not one)."""
        f = Fields(data, where)
        return cls(
            direction=f.text("direction", DIRECTIONS),
            address=f.text("address"),
            state=f.text("state"),
            peer=f.maybe_text("peer", optional=True),
            name=f.maybe_text("name", optional=True),
            detail=f.maybe_text("detail", optional=True),
            mtu=f.maybe_integer("mtu", optional=True),
        )


@dataclass(frozen=True)
class Report(_Node):
    """Everything the views show about one node, taken at one moment."""

    version: str
    ready: bool  # the node can carry pod traffic: the readiness probe's answer
    waiting_for: tuple[str, ...]  # what it still lacks, in words (empty when ready)
    uptime_seconds: float
    router: Router
    ipam: IpamStatus
    peers: tuple[Peer, ...]
    drops: Mapping[str, int]  # datagrams and packets dropped, by reason (all peers)
    super_packets_received: Mapping[str, int]  # how received super-packets were handled
    routes: tuple[Route, ...]
    connections: tuple[Connection, ...]  # empty with static peers
    connection_terminations: int  # control connections ended so far (Weave's metric)
    control_rejected: Mapping[str, int]  # control-plane input refused, by reason

    @classmethod
    def from_json(cls, data: object, where: str = "report") -> Self:
        """A document fetched from ``/report``; DocumentError names the first field at fault."""
        f = Fields(data, where)
        return cls(
            version=f.text("version"),
            ready=f.flag("ready"),
            waiting_for=_texts(f, "waiting_for"),
            uptime_seconds=f.number("uptime_seconds"),
            router=Router.from_json(*f.child("router")),
            ipam=IpamStatus.from_json(*f.child("ipam")),
            peers=tuple(Peer.from_json(d, w) for d, w in f.items("peers")),
            drops=f.counts("drops"),
            super_packets_received=f.counts("super_packets_received"),
            routes=tuple(Route.from_json(d, w) for d, w in f.items("routes")),
            connections=tuple(Connection.from_json(d, w) for d, w in f.items("connections")),
            connection_terminations=f.integer("connection_terminations"),
            control_rejected=f.counts("control_rejected"),
        )


def _texts(f: Fields, key: str) -> tuple[str, ...]:
    """A list of strings."""
    out = []
    for value, where in f.items(key):
        if not isinstance(value, str):
            raise DocumentError(f"{where}: expected a string, got {value!r}")
        out.append(value)
    return tuple(out)


def _json(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if not (item is None and f.metadata.get("omit")):
                out[f.name] = _json(item)
        return out
    if isinstance(value, Net):
        return str(value)
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value
