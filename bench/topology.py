"""Kernel-only baselines with the lab's exact shape, for the data-plane benchmark.

Same names and addresses as :class:`agent.lab.plan.LabPlan` gives a lab: an underlay namespace
holding a bridge, node namespaces 192.168.1.7/.8 wired to it by veth pairs, in each node a bridge
with the pod block's first address and one pod namespace behind a veth pair (10.244.N.2/24,
default route via 10.244.N.1, gso_max_size as the lab sets it). No agent: cross-node traffic is
forwarded by the kernel, either

- ``vxlan``: a point-to-point kernel VXLAN device per node (``remote`` set, so no fdb entries),
  addressed 172.31.255.N/24, the remote pod block routed via the other node's VXLAN address;
  pod and VXLAN MTU 1450; or
- ``routing``: the remote pod block routed via the other node's underlay address; MTU 1500.

All netlink goes through :mod:`overlay.netlink`; nothing is created outside our namespaces.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from agent.lab.plan import LabPlan
from agent.lab.underlay import wire_node
from overlay import netlink
from overlay.netdev import Route
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
from overlay.sysctl import ensure_sysctl

Mode = Literal["vxlan", "routing"]
VXLAN_VNI = 42
VXLAN_PORT = 4789
VXLAN_MTU = 1450
ROUTING_MTU = 1500
VXLAN_NET = ipaddress.IPv4Network("172.31.255.0/24")
POD_GSO_MAX_SIZE = 62000  # what agent.lab.lab.Lab.add_pod gives its pods
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True)
class Baseline:
    """A two-node, one-pod-per-node kernel baseline named like a lab called ``plan.name``."""

    plan: LabPlan
    mode: Mode

    @classmethod
    def named(cls, name: str, mode: Mode) -> Baseline:
        return cls(LabPlan(name, nodes=2, pods=1, directory="/nonexistent"), mode)

    @property
    def mtu(self) -> int:
        return VXLAN_MTU if self.mode == "vxlan" else ROUTING_MTU

    @property
    def vxlan_device(self) -> str:
        return f"{self.plan.prefix}vx"

    def vxlan_address(self, i: int) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{VXLAN_NET.network_address + i}/{VXLAN_NET.prefixlen}")

    def host_veth(self, i: int) -> str:
        return f"{self.plan.prefix}h{i}"

    @property
    def pod_ifname(self) -> str:
        return f"{self.plan.prefix}p"

    def gateway(self, i: int) -> ipaddress.IPv4Interface:
        block = self.plan.block(i)
        return ipaddress.IPv4Interface(f"{block.network_address + 1}/{block.prefixlen}")


def build(b: Baseline) -> None:
    """Create the whole baseline; raises on any failure (call :func:`teardown` regardless)."""
    p = b.plan
    netlink.ensure_netns(p.underlay_ns)
    with Netlink(p.underlay_ns) as ul:
        ul.set_link("lo", up=True)
        ul.ensure_bridge(p.underlay_bridge)
        ul.set_link(p.underlay_bridge, up=True)
        for i in (1, 2):
            _add_node(b, ul, i)
    for i in (1, 2):
        with Netlink(p.node_ns(i)) as nl:
            _add_pod(b, nl, i)
            _cross_node(b, nl, i, 3 - i)


def _add_node(b: Baseline, ul: Netlink, i: int) -> None:
    p = b.plan
    ns = p.node_ns(i)
    wire_node(p, ul, i)
    run_in_netns(ns, ensure_sysctl, "net.ipv4.ip_forward", "1")
    with Netlink(ns) as nl:
        nl.ensure_bridge(p.bridge)
        nl.ensure_address(p.bridge, b.gateway(i))
        nl.set_link(p.bridge, up=True)


def _add_pod(b: Baseline, nl: Netlink, i: int) -> None:
    p = b.plan
    pod_ns = p.pod_ns(i, 1)
    netlink.ensure_netns(pod_ns)
    host = b.host_veth(i)
    nl.ensure_veth(host, b.pod_ifname, pod_ns)
    nl.set_link(host, mtu=b.mtu, master=p.bridge, up=True)
    nl.set_link(p.bridge, mtu=b.mtu)
    with Netlink(pod_ns) as inside:
        inside.set_link("lo", up=True)
        inside.set_link(b.pod_ifname, mtu=b.mtu, gso_max_size=POD_GSO_MAX_SIZE, up=True)
        inside.ensure_address(b.pod_ifname, p.pod_address(i, 1))
        inside.ensure_route(Route(DEFAULT_ROUTE, b.pod_ifname, b.gateway(i).ip))


def _cross_node(b: Baseline, nl: Netlink, i: int, k: int) -> None:
    """Route node k's pod block from node i, over VXLAN or plainly via the underlay."""
    p = b.plan
    if b.mode == "routing":
        nl.ensure_route(Route(p.block(k), p.node_uplink(i)[1], p.node_address(k).ip))
        return
    dev = b.vxlan_device
    nl.ensure_vxlan(dev, VXLAN_VNI, p.node_address(i).ip, p.node_address(k).ip, VXLAN_PORT)
    nl.set_link(dev, mtu=VXLAN_MTU, up=True)
    nl.ensure_address(dev, b.vxlan_address(i))
    nl.ensure_route(Route(p.block(k), dev, b.vxlan_address(k).ip))


def teardown(b: Baseline) -> list[str]:
    """Remove every namespace of this baseline (their links go with them). Safe to repeat."""
    removed = []
    for ns in netlink.list_netns():
        if ns.startswith(b.plan.prefix + "-"):
            netlink.remove_netns(ns)
            removed.append(ns)
    return removed
