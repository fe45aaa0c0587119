"""Attach a pod's network namespace to the node bridge with a veth pair (and detach it).

The CNI handler (agent/cni.py) gets the pod namespace as an open file descriptor from the
plugin and keys everything by (container id, interface name): ``has_link``, ``attach``,
``detach``, ``check``.

Every function here runs on a thread in the *node* namespace (the agent's netlink thread) and
enters the pod namespace on a short-lived thread of its own (netlink.run_in_netns), so the
caller's thread never changes namespace.

Veth naming: the host side is ``host_ifname(pod_key(container id, ifname))`` (``wp`` + 11 hex
digits; for eth0 simply ``host_ifname(container id)``); the pod side is created directly in the
pod namespace under the interface name the runtime asked for. Host names are stable, so DEL
and GC find the host side from the key alone; deleting it takes the pod side with it. ``wpt``
+ 12 hex digits of the same hash is the temporary pod-side name earlier versions used in the
node namespace: ``attach`` and ``detach`` still remove such a leftover.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import threading
from dataclasses import dataclass, field

from overlay.netlink import Netlink, NetlinkFailure, Route, run_in_netns

HOST_PREFIX = "wp"
TEMP_PREFIX = "wpt"
DEFAULT_IFNAME = "eth0"
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


def host_ifname(key: str) -> str:
    """``wp`` + 11 hex digits of the key's hash: unique, stable, within IFNAMSIZ."""
    return HOST_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:11]


# -- pods keyed by (container id, interface name), namespaces by file descriptor ---------------


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
    mac: str | None = None  # the pod side's MAC; None: the kernel's random one


@dataclass(frozen=True)
class Attached:
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


def pod_key(container_id: str, ifname: str) -> str:
    """One key per attachment: the container id for ``eth0`` (a pod's host veth is then
    ``host_ifname(container id)``), ``<container id>/<ifname>`` for any other interface.
    Unambiguous because CNI container ids never hold '/'."""
    return container_id if ifname == DEFAULT_IFNAME else f"{container_id}/{ifname}"


def veth_names(container_id: str, ifname: str) -> tuple[str, str]:
    """(host side, temporary pod side) of the attachment's veth pair."""
    key = pod_key(container_id, ifname)
    digest = hashlib.sha256(key.encode()).hexdigest()
    return host_ifname(key), TEMP_PREFIX + digest[:12]


def has_link(netns: int, ifname: str) -> bool:
    """Whether the pod namespace already has ``ifname``."""
    return run_in_netns(netns, _has_link, ifname)


def _has_link(ifname: str) -> bool:
    with Netlink() as nl:
        return nl.link(ifname) is not None


def attach(a: Attachment) -> Attached:
    """Create the attachment's veth pair and configure both sides. Raises InterfaceExists when
    the pod already has ``a.ifname`` (and then touches nothing). On any other failure the veth
    pair is removed again (the caller still owns the address).

    The fast path is what every pod start waits for: the pair is made in one request, its pod
    side born in the pod's namespace under its final name, and the pod side is configured by
    index with one request per change -- no read-before-write."""
    host, temp = veth_names(a.container_id, a.ifname)
    host_mac = random_mac()
    pod_mac = a.mac or random_mac()
    node = _node_netlink()  # kept per worker thread: a pod start opens no socket here
    master = _bridge_index(node, a.bridge)
    try:
        node.add_veth_into(host, a.ifname, a.netns, mtu=a.mtu, master=master,
                           macs=(host_mac, pod_mac), gso_max_size=a.gso_max_size)  # fmt: skip
    except NetlinkFailure as exc:
        if exc.code == errno.EEXIST and run_in_netns(a.netns, _has_link, a.ifname):
            raise InterfaceExists(
                f"interface {a.ifname} already exists in the pod's netns"
            ) from None
        if exc.code != errno.EEXIST:  # the bridge may have been re-created: look again
            _BRIDGES.pop(a.bridge, None)
            master = _bridge_index(node, a.bridge)
        node.remove_link(host)  # stale: left by an ADD that died half way
        node.remove_link(temp)
        node.add_veth_into(host, a.ifname, a.netns, mtu=a.mtu, master=master,
                           macs=(host_mac, pod_mac), gso_max_size=a.gso_max_size)  # fmt: skip
    try:
        run_in_netns(a.netns, _configure, a)
    except BaseException:
        node.remove_link(host)
        raise
    return Attached(host, host_mac, pod_mac)


_BRIDGES: dict[str, int] = {}  # bridge name -> index, looked up again when a request fails
_PER_THREAD = threading.local()


def _node_netlink() -> Netlink:
    """This thread's netlink socket in the node namespace (the agent's netlink worker lives
    as long as the agent)."""
    nl: Netlink | None = getattr(_PER_THREAD, "netlink", None)
    if nl is None:
        nl = _PER_THREAD.netlink = Netlink()
    return nl


def _bridge_index(node: Netlink, name: str) -> int:
    if name not in _BRIDGES:
        bridge = node.link(name)
        if bridge is None:
            raise NetlinkFailure(f"bridge {name}", errno.ENODEV)
        _BRIDGES[name] = bridge.index
    return _BRIDGES[name]


def random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel gives a veth by default;
    chosen here so the result needs no read-back)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _configure(a: Attachment) -> None:
    """Inside the pod: the pod side up, its address and routes (MAC, MTU and GSO size came
    with its creation). The loopback is not ours: runtimes bring it up (CNI's loopback
    plugin)."""
    with Netlink() as nl:
        link = nl.link(a.ifname)
        if link is None:
            raise NetlinkFailure(f"link {a.ifname}", errno.ENODEV)
        nl.set_index(link.index, state="up")
        nl.add_address_index(link.index, a.address)
        nl.replace_route_index(DEFAULT_ROUTE, link.index, a.gateway)
        for destination, gateway in a.routes:
            nl.replace_route_index(destination, link.index, gateway)


def detach(container_id: str, ifname: str) -> bool:
    """Remove the attachment's veth pair (the pod side goes with the host side); also a
    temporary pod side an ADD left in the node namespace. False when nothing was there."""
    host, temp = veth_names(container_id, ifname)
    node = _node_netlink()
    removed = node.remove_link(host)
    return node.remove_link(temp) or removed


def check(e: Expected) -> list[str]:
    """What is missing or different from ``e``; empty when the attachment is intact."""
    host, _ = veth_names(e.container_id, e.ifname)
    problems = []
    with Netlink() as node:
        link = node.link(host)
        if link is None:
            problems.append(f"host veth {host} is missing")
        else:
            bridge = node.link(e.bridge)
            if bridge is None or link.master != bridge.index:
                problems.append(f"host veth {host} is not on bridge {e.bridge}")
    try:
        inside = run_in_netns(e.netns, _observe, e.ifname)
    except NetlinkFailure as exc:
        if exc.code != errno.ENODEV:
            raise
        return [*problems, f"interface {e.ifname} is missing in the pod's netns"]
    return problems + _differences(e, inside)


def _observe(ifname: str) -> _Inside:
    with Netlink() as nl:
        link = nl.link(ifname)
        if link is None:
            raise NetlinkFailure(f"link {ifname}", errno.ENODEV)
        return _Inside(link.mac, nl.list_addresses(ifname), nl.list_routes(protocol=None))


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
