"""The values the netlink seam (``overlay.kernel``) speaks: links and routes as the kernel
reports them, the links it can create, the changes it can make, our nftables NAT table, and its
one failure."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

RTPROT_KERNEL = 2
RTPROT_WEAVE_PY = 119
MAIN_TABLE = 254


class NetlinkFailure(Exception):
    """A kernel refusal, with the operation and errno name in the message."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: {errno.errorcode.get(code, str(code))}")
        self.code = code


@dataclass(frozen=True)
class Link:
    """A network device as the kernel reports it (``master``: the bridge's index, or 0)."""

    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: int
    gso_max_size: int
    mac: str = ""
    hairpin: bool = False  # a bridge port that may send a frame back out where it came in


@dataclass(frozen=True)
class Route:
    """An IPv4 route of the main table, its device by name."""

    destination: IPv4Network
    device: str
    gateway: IPv4Address | None = None


@dataclass(frozen=True)
class RouteEntry:
    """An IPv4 unicast route of the main table as a dump reports it: the device by index."""

    destination: IPv4Network
    index: int
    gateway: IPv4Address | None
    protocol: int


@dataclass(frozen=True)
class LinkChange:
    """The attributes one request sets on a link; None leaves an attribute alone."""

    mtu: int | None = None
    up: bool | None = None
    master: int | None = None  # a bridge's index; 0 takes the link off its bridge
    gso_max_size: int | None = None
    hairpin: bool | None = None  # only on a link that already is a bridge port (EOPNOTSUPP)


@dataclass(frozen=True)
class Bridge:
    """A new bridge device (down, kernel defaults)."""

    name: str


@dataclass(frozen=True)
class Veth:
    """A new veth pair: ``name`` here and ``peer`` in ``peer_netns`` (a name under /run/netns,
    an open fd, or None: here). ``mtu`` applies to both ends; ``master``, ``up`` and ``mac`` to
    this end; the peer is born down (the kernel takes no flags for it)."""

    name: str
    peer: str
    peer_netns: str | int | None = None
    mtu: int | None = None
    master: int | None = None
    up: bool = False
    mac: str | None = None
    peer_mac: str | None = None
    peer_gso_max_size: int | None = None


@dataclass(frozen=True)
class Vxlan:
    """A new point-to-point kernel VXLAN device (``remote`` set: no fdb entries needed)."""

    name: str
    vni: int
    local: IPv4Address
    remote: IPv4Address
    port: int


NewLink = Bridge | Veth | Vxlan


@dataclass(frozen=True)
class Masquerade:
    """A rule of our NAT table: IPv4 packets from ``source`` to any address outside ``exempt``
    leave with the address of the interface they leave by."""

    source: IPv4Network
    exempt: IPv4Network


@dataclass(frozen=True)
class NatTable:
    """An nftables table (family ip) as the kernel reports it. ``chained``: it holds exactly
    our chain (postrouting, type nat, srcnat priority, policy accept) and nothing else;
    ``rules``: the rules in it, None for each of a shape we do not make."""

    chained: bool
    rules: tuple[Masquerade | None, ...]
