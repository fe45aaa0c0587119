"""A link of ``overlay.fake_netns.FakeNetns`` as the fake kernel keeps it, and the address rules
its namespace and routes share: the first address of a subnet on a link is its primary, the
others secondaries; only primaries of an up link make connected routes (none for a /32)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Protocol

from overlay.netdev import Link, VxlanInfo

LOOPBACK = 1
DEFAULT_MTU = 1500
DEFAULT_GSO_MAX_SIZE = 65536


class PeerSpace(Protocol):
    """The namespace a veth's peer lives in, as the link sees it."""

    def drop_link(self, index: int) -> None:
        """Delete link ``index`` with what it takes along, if it is still there."""


@dataclass
class FakeDevice:
    """One link: what ``Link`` reports, plus its veth peer and its addresses in order."""

    index: int
    name: str
    kind: str
    mac: str
    mtu: int = DEFAULT_MTU
    up: bool = False
    master: int = 0
    gso_max_size: int = DEFAULT_GSO_MAX_SIZE
    hairpin: bool = False
    peer: tuple[PeerSpace, int] | None = None
    addresses: list[IPv4Interface] = field(default_factory=list)
    vxlan: VxlanInfo | None = None

    def link(self) -> Link:
        """The link as the kernel reports it."""
        return Link(self.index, self.name, self.kind, self.mtu, self.up, self.master,
                    self.gso_max_size, self.mac, self.hairpin, self.vxlan)  # fmt: skip

    def primaries(self) -> list[IPv4Interface]:
        """The addresses that are the first of their subnet on the link."""
        return [a for i, a in enumerate(self.addresses) if _primary_of(self.addresses[:i], a)]

    def connected(self) -> list[IPv4Interface]:
        """The addresses whose subnets the link reaches directly: none while it is down."""
        if not self.up:
            return []
        return [a for a in self.primaries() if a.network.prefixlen < 32]


def _primary_of(earlier: list[IPv4Interface], address: IPv4Interface) -> bool:
    return not any(same_subnet(e, address) for e in earlier)


def same_subnet(a: IPv4Interface, b: IPv4Interface) -> bool:
    """Whether two addresses share a subnet (address and prefix)."""
    return a.network == b.network
