"""A host on the lab's underlay that is not a node: where pods' traffic to outside the cluster
goes in the lab. A pod reaches it masqueraded as its node (the host has no route to pods), so a
TCP responder there (agent/lab/probe.py) answers with the node's underlay address.

The host is the namespace ``wp<name>-out`` (``lab down`` removes it with the lab's others),
plugged into the underlay bridge by the veth pair ``wp<name>uo`` -- ``wp<name>eo`` at
``OUTSIDE_ADDRESS``, past every node's address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agent.lab.plan import LabPlan
from overlay import netlink
from overlay.netlink import Netlink

OUTSIDE_ADDRESS = ipaddress.IPv4Interface("192.168.1.254/24")


@dataclass(frozen=True)
class OutsideHost:
    """One outside host: its namespace, the underlay it joins, its address there."""

    netns: str
    underlay_ns: str
    underlay_bridge: str
    links: tuple[str, str]  # (in the underlay namespace, in the host's)
    interface: ipaddress.IPv4Interface = OUTSIDE_ADDRESS

    @classmethod
    def of(cls, plan: LabPlan) -> OutsideHost:
        """The outside host of a lab (``agent/lab``'s names)."""
        p = plan.prefix
        return cls(f"{p}-out", plan.underlay_ns, plan.underlay_bridge, (f"{p}uo", f"{p}eo"))

    @property
    def address(self) -> str:
        """Its address, as a probe's destination."""
        return str(self.interface.ip)

    def build(self) -> None:
        """The namespace, wired to the underlay bridge and addressed (idempotent; the underlay
        must be up)."""
        netlink.ensure_netns(self.netns)
        outer, inner = self.links
        with Netlink(self.underlay_ns) as ul:
            ul.ensure_veth(outer, inner, self.netns)
            ul.set_link(outer, master=self.underlay_bridge, up=True)
        with Netlink(self.netns) as nl:
            nl.set_link("lo", up=True)
            nl.set_link(inner, up=True)
            nl.ensure_address(inner, self.interface)

    def remove(self) -> bool:
        """Remove the namespace (its end of the pair takes the other along); False when gone."""
        return netlink.remove_netns(self.netns)
