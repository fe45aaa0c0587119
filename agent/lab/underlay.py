"""The lab's underlay: node namespaces plugged into a private bridge inside a namespace of the
lab's own (nothing is created in the caller's namespace).

Segment A is the bridge ``wp<name>ul`` in ``wp<name>-ul``; node i's namespace joins it by a veth
pair and has the address 192.168.1.(6+i). A line lab adds segment B (``wp<name>ul2``): node 1
stays on A, node 3 moves to B, node 2 is on both (a second uplink), so nodes 1 and 3 reach each
other only through node 2's agent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.lab.plan import LabPlan
from overlay import netlink
from overlay.netlink import Netlink

SECOND_ADDRESS = ipaddress.IPv4Interface("192.168.2.8/24")  # node 2 on segment B
THIRD_ADDRESS = ipaddress.IPv4Interface("192.168.2.9/24")  # node 3, on segment B only


@dataclass(frozen=True)
class Underlay:
    """The segments of one lab and where each node sits on them."""

    plan: LabPlan
    line: bool = False

    def __post_init__(self) -> None:
        if self.line and self.plan.nodes != 3:
            raise ValueError("a line lab has exactly 3 nodes")

    @property
    def segment_b(self) -> str:
        return f"{self.plan.prefix}ul2"

    def address(self, i: int) -> ipaddress.IPv4Interface:
        """Node i's underlay address (node 3 of a line lab sits on the second segment)."""
        if self.line and i == 3:
            return THIRD_ADDRESS
        return self.plan.node_address(i)

    def seed_address(self, i: int, seed: int) -> ipaddress.IPv4Address:
        """The address node i dials to reach node ``seed``: one on a segment node i is on."""
        return SECOND_ADDRESS.ip if self.line and i == 3 else self.address(seed).ip

    def build(self) -> None:
        """The underlay namespace, its bridges, and every node's namespace wired to them."""
        p = self.plan
        netlink.ensure_netns(p.underlay_ns)
        with Netlink(p.underlay_ns) as ul:
            for bridge in [p.underlay_bridge] + ([self.segment_b] if self.line else []):
                ul.ensure_bridge(bridge)
                ul.set_link(bridge, up=True)
            for i in range(1, p.nodes + 1):
                self._wire(ul, i)

    def _wire(self, ul: Netlink, i: int) -> None:
        if self.line and i == 3:
            wire_node(self.plan, ul, 3, self.segment_b, self.address(3))
        else:
            wire_node(self.plan, ul, i)
        if self.line and i == 2:
            wire_node(self.plan, ul, 2, self.segment_b, SECOND_ADDRESS, suffix="b")

    def set_uplinks(self, i: int, up: bool) -> None:
        """Cut (or restore) node i's underlay links."""
        with Netlink(self.plan.node_ns(i)) as nl:
            for link in nl.list_links():
                if link.name.startswith(f"{self.plan.prefix}e"):
                    nl.set_link(link.name, up=up)


def wire_node(
    plan: LabPlan,
    ul: Netlink,
    i: int,
    bridge: str | None = None,
    address: ipaddress.IPv4Interface | None = None,
    suffix: str = "",
) -> None:
    """Node i's namespace, plugged into an underlay bridge with an address (no agent)."""
    ns = plan.node_ns(i)
    netlink.ensure_netns(ns)
    outer, inner = (name + suffix for name in plan.node_uplink(i))
    ul.ensure_veth(outer, inner, ns)
    ul.set_link(outer, master=bridge or plan.underlay_bridge, up=True)
    with Netlink(ns) as nl:
        nl.set_link("lo", up=True)
        nl.set_link(inner, up=True)
        nl.ensure_address(inner, address or plan.node_address(i))
