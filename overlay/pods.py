"""Attach a pod's network namespace to the node bridge with a veth pair (and detach it).

The lab uses this directly; the CNI issue's agent calls the same code for the runtime.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from overlay.netlink import Netlink, Route

HOST_PREFIX = "wp"
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class PodSpec:
    netns: str  # a name under /run/netns
    key: str  # stable pod key (container id); names the host side of the veth
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    mtu: int
    gso_max_size: int
    ifname: str = "eth0"


def host_ifname(key: str) -> str:
    """``wp`` + 11 hex digits of the key's hash: unique, stable, within IFNAMSIZ."""
    return HOST_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:11]


def attach_pod(node: Netlink, bridge: str, pod: PodSpec) -> str:
    """Create (or complete) the pod's veth pair, address and default route. Idempotent."""
    host = host_ifname(pod.key)
    node.ensure_veth(host, pod.ifname, pod.netns)
    node.set_link(host, mtu=pod.mtu, master=bridge, up=True)
    with Netlink(pod.netns) as inside:
        inside.set_link("lo", up=True)
        inside.set_link(pod.ifname, mtu=pod.mtu, gso_max_size=pod.gso_max_size, up=True)
        inside.ensure_address(pod.ifname, pod.address)
        inside.ensure_route(Route(DEFAULT_ROUTE, pod.ifname, pod.gateway))
    return host


def detach_pod(node: Netlink, key: str) -> bool:
    """Remove the pod's veth pair (its peer goes with it). False when already gone."""
    return node.remove_link(host_ifname(key))
