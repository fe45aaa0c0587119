"""Attach a pod's network namespace to the node bridge with a veth pair (and detach it).

``Pods`` is the node's side of a CNI request, keyed by (container id, interface name):
``has_link``, ``attach``, ``detach``, ``check``. It works through two seams: a netlink handle
in the *node* namespace and ``enter``, which runs a function with a handle inside the pod's
namespace (an open fd), so the caller's thread never changes namespace. ``Pods.on_kernel()``
binds both to the real kernel; tests bind them to ``overlay.fake_kernel``.

Veth naming: the host side is ``host_ifname(pod_key(container id, ifname))`` (``wp`` + 11 hex
digits; for eth0 simply ``host_ifname(container id)``); the pod side is created directly in the
pod namespace under the interface name the runtime asked for. Host names are stable, so DEL
and GC find the host side from the key alone; deleting it takes the pod side with it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from overlay import netlink
from overlay.kernel import EnterNetns, NetlinkHandle
from overlay.netdev import LinkChange, NetlinkFailure, Route, Veth

HOST_PREFIX = "wp"
DEFAULT_IFNAME = "eth0"
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


def host_ifname(key: str) -> str:
    """``wp`` + 11 hex digits of the key's hash: unique, stable, within IFNAMSIZ."""
    return HOST_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:11]


def pod_key(container_id: str, ifname: str) -> str:
    """One key per attachment: the container id for ``eth0`` (a pod's host veth is then
    ``host_ifname(container id)``), ``<container id>/<ifname>`` for any other interface.
    Unambiguous because CNI container ids never hold '/'."""
    return container_id if ifname == DEFAULT_IFNAME else f"{container_id}/{ifname}"


def random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel gives a veth by default;
    chosen here so the result needs no read-back)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


class InterfaceExists(Exception):
    """The pod namespace already has a link with the requested interface name."""


@dataclass(frozen=True)
class Attachment:
    """What ADD wires: the pod side ``ifname`` in namespace ``netns`` (an open fd), addressed,
    with a default route via ``gateway`` and ``routes`` (destination, gateway) besides."""

    netns: int
    container_id: str
    ifname: str
    bridge: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    mtu: int
    gso_max_size: int
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = ()
    mac: str | None = None  # the pod side's MAC; None: a random one
    hairpin: bool = True  # the host side's bridge port may send frames back to the pod


@dataclass(frozen=True)
class Attached:
    """What ADD made: the host side's name and MAC, and the pod side's MAC."""

    host: str
    host_mac: str
    pod_mac: str


@dataclass(frozen=True)
class Expected:
    """What CHECK verifies (from the runtime's prevResult)."""

    netns: int
    container_id: str
    ifname: str
    bridge: str
    addresses: tuple[ipaddress.IPv4Interface, ...]
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address | None], ...] = ()
    mac: str | None = None


@dataclass
class _Inside:
    """What one visit to the pod namespace saw."""

    mac: str | None = None
    addresses: list[ipaddress.IPv4Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


class Pods:
    """Pod attachments of one node: veth pairs from the node's bridge into pod network
    namespaces."""

    def __init__(self, node: NetlinkHandle, enter: EnterNetns) -> None:
        self._node = node
        self._enter = enter
        self._bridges: dict[str, int] = {}  # name -> index, looked up again when a request fails

    @classmethod
    def on_kernel(cls) -> Pods:
        """The real kernel, in the caller's network namespace (create and use it on one
        thread: the agent gives it a thread of its own)."""
        return cls(netlink.Netlink(), netlink.in_netns)

    def close(self) -> None:
        """Release the node-side netlink handle."""
        self._node.close()

    def has_link(self, netns: int, ifname: str) -> bool:
        """Whether the pod namespace (an open fd) already has ``ifname``."""
        return self._enter(netns, lambda nl: nl.link(ifname) is not None)

    def attach(self, a: Attachment) -> Attached:
        """Create the attachment's veth pair and configure both sides. Raises InterfaceExists
        when the pod already has ``a.ifname`` (and then touches nothing). On any other failure
        the veth pair is removed again (the caller still owns the address).

        The fast path is what every pod start waits for: the pair is made in one request, its
        pod side born in the pod's namespace under its final name; hairpin on the host side
        takes a second (the kernel reads a port's settings only on a link that already is a
        port, and by name: no read-before-write); the pod side is configured by index with one
        request per change."""
        host = host_ifname(pod_key(a.container_id, a.ifname))
        macs = (random_mac(), a.mac or random_mac())

        def veth(master: int) -> Veth:
            return Veth(host, a.ifname, a.netns, a.mtu, master, True, macs[0], macs[1],
                        a.gso_max_size)  # fmt: skip

        try:
            self._node.add_link(veth(self._bridge_index(a.bridge)))
        except NetlinkFailure as exc:
            self._add_again(a, exc, host, veth)
        try:
            if a.hairpin:
                self._node.set_link_by_name(host, LinkChange(hairpin=True))
            self._enter(a.netns, lambda nl: _configure(nl, a))
        except BaseException:
            self._node.remove_link(host)
            raise
        return Attached(host, *macs)

    def _add_again(
        self, a: Attachment, exc: NetlinkFailure, host: str, veth: Callable[[int], Veth]
    ) -> None:
        """After a refused add: InterfaceExists when the pod has the name; else the bridge's
        index afresh (it may have been re-created), a stale host side (left by an ADD that
        died half way) removed, and one more try."""
        if exc.code == errno.EEXIST and self.has_link(a.netns, a.ifname):
            raise InterfaceExists(f"interface {a.ifname} already exists in the pod's netns")
        if exc.code != errno.EEXIST:
            self._bridges.pop(a.bridge, None)
        master = self._bridge_index(a.bridge)
        self._node.remove_link(host)
        self._node.add_link(veth(master))

    def _bridge_index(self, name: str) -> int:
        if name not in self._bridges:
            bridge = self._node.link(name)
            if bridge is None:
                raise NetlinkFailure(f"bridge {name}", errno.ENODEV)
            self._bridges[name] = bridge.index
        return self._bridges[name]

    def detach(self, container_id: str, ifname: str) -> bool:
        """Remove the attachment's veth pair (the pod side goes with the host side). False
        when nothing was there."""
        return self._node.remove_link(host_ifname(pod_key(container_id, ifname)))

    def check(self, e: Expected) -> list[str]:
        """What is missing or different from ``e``; empty when the attachment is intact."""
        host = host_ifname(pod_key(e.container_id, e.ifname))
        problems = []
        link = self._node.link(host)
        if link is None:
            problems.append(f"host veth {host} is missing")
        else:
            bridge = self._node.link(e.bridge)
            if bridge is None or link.master != bridge.index:
                problems.append(f"host veth {host} is not on bridge {e.bridge}")
        inside = self._enter(e.netns, lambda nl: _observe(nl, e.ifname))
        if inside is None:
            return [*problems, f"interface {e.ifname} is missing in the pod's netns"]
        return problems + _differences(e, inside)


def _configure(nl: NetlinkHandle, a: Attachment) -> None:
    """Inside the pod: the pod side up, its address and routes (MAC, MTU and GSO size came
    with its creation). The loopback is not ours: runtimes bring it up (CNI's loopback
    plugin)."""
    link = nl.link(a.ifname)
    if link is None:
        raise NetlinkFailure(f"link {a.ifname}", errno.ENODEV)
    nl.set_link_index(link.index, LinkChange(up=True))
    try:
        nl.add_address_index(link.index, a.address)
    except NetlinkFailure as exc:
        if exc.code != errno.EEXIST:
            raise
    nl.replace_route_index(DEFAULT_ROUTE, link.index, a.gateway)
    for destination, gateway in a.routes:
        nl.replace_route_index(destination, link.index, gateway)


def _observe(nl: NetlinkHandle, ifname: str) -> _Inside | None:
    link = nl.link(ifname)
    if link is None:
        return None
    addresses = nl.list_addresses_index(link.index)
    return _Inside(link.mac, addresses, nl.list_routes(protocol=None))


def _differences(e: Expected, inside: _Inside) -> list[str]:
    problems = []
    if e.mac is not None and inside.mac is not None and e.mac.lower() != inside.mac.lower():
        problems.append(f"interface {e.ifname} has MAC {inside.mac}, expected {e.mac}")
    for address in e.addresses:
        if address not in inside.addresses:
            problems.append(f"address {address} is missing on {e.ifname}")
    for destination, gateway in e.routes:
        if not any(
            r.destination == destination and (gateway is None or r.gateway == gateway)
            for r in inside.routes
        ):
            via = f" via {gateway}" if gateway is not None else ""
            problems.append(f"route {destination}{via} is missing in the pod's netns")
    return problems
