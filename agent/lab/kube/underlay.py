"""The cluster lab's underlay: the bridge in the underlay namespace (which also holds the
gateway address the nodes route through by default), the control plane's namespace, a
namespace per node, and the outside host, each plugged into the bridge by a veth pair.

Nodes and the control plane route 0.0.0.0/0 via the gateway (protocol ``boot``, as ``ip route
add`` makes it, so the agent, which only touches its own protocol's routes, leaves it alone).
The gateway's namespace forwards but has no route beyond the underlay, so it answers anything
bound elsewhere with ICMP "unreachable": a connection to the world (a cloud's metadata address,
which kubelet tries at start) fails at once instead of timing out. The outside host
has no default route at all, so it can answer a pod only when the pod's packets come from a
node's address (masqueraded): it is the host "on the underlay that is not a node".
"""

from __future__ import annotations

import ipaddress

from agent.lab.kube.plan import CONTROL, GATEWAY, OUTSIDE, KubePlan
from agent.lab.underlay import wire_node
from overlay import netlink
from overlay.netdev import Route
from overlay.netlink import Netlink
from overlay.netns import run_in_netns
from overlay.sysctl import ensure_sysctl

RTPROT_BOOT = 3
DEFAULT = ipaddress.IPv4Network("0.0.0.0/0")


class KubeUnderlay:
    """The namespaces and links of one cluster lab."""

    def __init__(self, plan: KubePlan) -> None:
        self.plan = plan

    def build(self) -> None:
        """The underlay namespace and bridge, the control plane's and the outside host's
        namespaces, and every node's."""
        p = self.plan.lab
        netlink.ensure_netns(p.underlay_ns)
        with Netlink(p.underlay_ns) as ul:
            ul.set_link("lo", up=True)
            ul.ensure_bridge(p.underlay_bridge)
            ul.set_link(p.underlay_bridge, up=True)
            ul.ensure_address(p.underlay_bridge, GATEWAY)
        run_in_netns(p.underlay_ns, ensure_sysctl, "net.ipv4.ip_forward", "1")
        with Netlink(p.underlay_ns) as ul:
            self._wire(ul, self.plan.control_ns, "cp", CONTROL, default_route=True)
            self._wire(ul, self.plan.outside_ns, "o", OUTSIDE, default_route=False)
        for i in range(1, self.plan.nodes + 1):
            self.add_node(i)

    def add_node(self, i: int) -> None:
        """Node i's namespace, on the bridge, with its default route."""
        with Netlink(self.plan.lab.underlay_ns) as ul:
            wire_node(self.plan.lab, ul, i)
        with Netlink(self.plan.node_ns(i)) as nl:
            nl.ensure_route(Route(DEFAULT, self.plan.lab.node_uplink(i)[1], GATEWAY.ip),
                            protocol=RTPROT_BOOT)  # fmt: skip

    def remove_node(self, i: int) -> None:
        """Node i's namespace (its veth pair goes with it)."""
        netlink.remove_netns(self.plan.node_ns(i))

    def _wire(
        self, ul: Netlink, ns: str, tag: str, address: ipaddress.IPv4Interface,
        default_route: bool,
    ) -> None:  # fmt: skip
        outer, inner = f"{self.plan.prefix}u{tag}", f"{self.plan.prefix}e{tag}"
        netlink.ensure_netns(ns)
        ul.ensure_veth(outer, inner, ns)
        ul.set_link(outer, master=self.plan.lab.underlay_bridge, up=True)
        with Netlink(ns) as nl:
            nl.set_link("lo", up=True)
            nl.set_link(inner, up=True)
            nl.ensure_address(inner, address)
            if default_route:
                nl.ensure_route(Route(DEFAULT, inner, GATEWAY.ip), protocol=RTPROT_BOOT)

    def namespaces(self) -> list[str]:
        """Every namespace of this lab that exists now."""
        return sorted(ns for ns in netlink.list_netns() if ns.startswith(self.plan.prefix + "-"))

    def remove(self) -> list[str]:
        """Delete every namespace of this lab; their names."""
        removed = self.namespaces()
        for ns in removed:
            netlink.remove_netns(ns)
        return removed
