"""The values the netlink seam (``overlay.kernel``) speaks: links and routes as the kernel
reports them, the links it can create, the changes it can make, a VXLAN device's neighbours and
forwarding entries, our nftables table (masquerade and the UDP guard), and its one failure."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, collapse_addresses

RTPROT_KERNEL = 2
RTPROT_WEAVE_PY = 119
RT_SCOPE_HOST = 254  # an address never chosen as a source for traffic that leaves the host
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
    vxlan: VxlanInfo | None = None  # for a vxlan link, what it was made with


@dataclass(frozen=True)
class VxlanInfo:
    """What a VXLAN device reports of itself (``local``: None when it has no local address;
    ``learning``: whether it adds forwarding entries from the frames it receives)."""

    vni: int
    local: IPv4Address | None
    port: int
    learning: bool


@dataclass(frozen=True)
class Route:
    """An IPv4 route of the main table, its device by name."""

    destination: IPv4Network
    device: str
    gateway: IPv4Address | None = None
    onlink: bool = False  # the gateway is taken to be on the link, whatever its addresses


@dataclass(frozen=True)
class RouteEntry:
    """An IPv4 unicast route of the main table as a dump reports it: the device by index."""

    destination: IPv4Network
    index: int
    gateway: IPv4Address | None
    protocol: int
    onlink: bool = False  # RTNH_F_ONLINK


@dataclass(frozen=True)
class LinkChange:
    """The attributes one request sets on a link; None leaves an attribute alone."""

    mtu: int | None = None
    up: bool | None = None
    master: int | None = None  # a bridge's index; 0 takes the link off its bridge
    gso_max_size: int | None = None
    hairpin: bool | None = None  # only on a link that already is a bridge port (EOPNOTSUPP)
    mac: str | None = None  # "aa:bb:cc:dd:ee:ff"


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
    """A new kernel VXLAN device sending from ``local`` to UDP ``port``: point to point with
    ``remote`` set (no forwarding entries needed), else each frame goes where the forwarding
    entry of its destination MAC says (``FdbEntry``). ``mac`` and ``mtu`` None: the kernel's
    (a random MAC; MTU 1500, as it has no lower device to take one from)."""

    name: str
    vni: int
    local: IPv4Address
    remote: IPv4Address | None
    port: int
    learning: bool = True
    mac: str | None = None
    mtu: int | None = None


NewLink = Bridge | Veth | Vxlan


@dataclass(frozen=True)
class Neighbour:
    """A permanent IPv4 neighbour of a link: ``address`` is at ``mac`` (no ARP asked)."""

    address: IPv4Address
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    """A forwarding entry of a VXLAN device: frames to ``mac`` go to the VTEP at ``host``."""

    mac: str
    host: IPv4Address


@dataclass(frozen=True)
class Masquerade:
    """A rule of our NAT table: IPv4 packets from ``source`` to any address outside ``exempt``
    leave with the address of the interface they leave by."""

    source: IPv4Network
    exempt: IPv4Network


@dataclass(frozen=True)
class UdpGuard:
    """The input rule of our table for the VXLAN datagrams to ``port``: one is dropped unless
    its source host and the inner IPv4 source of the frame it carries are a pair of
    ``spaces`` (a host, a network its frames may come from; no pairs: every one is dropped).
    Build it with ``of``, which merges each host's networks as the kernel's set needs them."""

    port: int
    spaces: frozenset[tuple[IPv4Address, IPv4Network]]

    @classmethod
    def of(cls, port: int, spaces: Iterable[tuple[IPv4Address, IPv4Network]]) -> UdpGuard:
        """The guard of these pairs, each host's networks merged (none overlaps another)."""
        by_host: dict[IPv4Address, list[IPv4Network]] = {}
        for host, network in spaces:
            by_host.setdefault(host, []).append(network)
        return cls(port, frozenset(
            (host, merged) for host, networks in by_host.items()
            for merged in collapse_addresses(networks)
        ))  # fmt: skip

    @property
    def hosts(self) -> frozenset[IPv4Address]:
        """The hosts whose VXLAN datagrams may come in at all."""
        return frozenset(host for host, _ in self.spaces)


@dataclass(frozen=True)
class NatTable:
    """An nftables table (family ip) as the kernel reports it. ``chained``: it holds exactly
    our chains and nothing else -- postrouting (type nat, srcnat priority, policy accept) and,
    with a guard, input (type filter, priority 0, policy accept, its one rule and the set of
    hosts it reads) -- each of the shape we make; ``rules``: the masquerade rules, None for
    each of a shape we do not make; ``guard``: the input chain's rule (None: no input chain,
    or one not of our shape, which also reads as not ``chained``)."""

    chained: bool
    rules: tuple[Masquerade | None, ...]
    guard: UdpGuard | None = None
