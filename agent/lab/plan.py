"""Names and addresses of a lab, derived from its name alone (so ``lab down`` can find them).

Every namespace and link starts with ``wp<name>``; the longest link name, ``wp<name>tun``, must
fit the kernel's 15 characters, hence names of at most 10 lowercase letters and digits. Each
node namespace holds its own bridge, TUN and VXLAN device (the fast path), under the same names.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

NAME = re.compile(r"^[a-z0-9]{1,10}$")
UNDERLAY = ipaddress.IPv4Network("192.168.1.0/24")
FIRST_NODE_HOST = 7  # node 1 is 192.168.1.7, as in the seed
POD_RANGE = ipaddress.IPv4Network("10.244.0.0/16")


@dataclass(frozen=True)
class LabPlan:
    name: str
    nodes: int
    pods: int
    directory: str

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"lab name {self.name!r}: use 1-10 lowercase letters and digits")
        if not 1 <= self.nodes <= 200:
            raise ValueError(f"nodes: {self.nodes} is outside 1..200")
        if not 0 <= self.pods <= 200:
            raise ValueError(f"pods: {self.pods} is outside 0..200")

    @property
    def prefix(self) -> str:
        return f"wp{self.name}"

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def underlay_bridge(self) -> str:
        return f"{self.prefix}ul"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def tun(self) -> str:
        return f"{self.prefix}tun"

    @property
    def vxlan(self) -> str:
        """The fast path's VXLAN device in every node namespace."""
        return f"{self.prefix}vx"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def node_name(self, i: int) -> str:
        return f"node{i}"

    def node_uplink(self, i: int) -> tuple[str, str]:
        """(name in the underlay namespace, name in the node namespace)."""
        return f"{self.prefix}u{i}", f"{self.prefix}e{i}"

    def node_address(self, i: int) -> ipaddress.IPv4Interface:
        host = UNDERLAY.network_address + FIRST_NODE_HOST + i - 1
        return ipaddress.IPv4Interface(f"{host}/{UNDERLAY.prefixlen}")

    def block(self, i: int) -> ipaddress.IPv4Network:
        """Node i's block in static mode and in the benchmarks' baselines."""
        return ipaddress.IPv4Network(f"10.244.{i}.0/24")

    def pod_ns(self, i: int, j: int) -> str:
        return f"{self.prefix}-n{i}p{j}"

    def pod_address(self, i: int, j: int) -> ipaddress.IPv4Interface:
        """Fixed addressing for the benchmarks' baselines (the lab asks the agents)."""
        block = self.block(i)
        return ipaddress.IPv4Interface(f"{block.network_address + 1 + j}/{block.prefixlen}")

    def node_dir(self, i: int) -> str:
        return f"{self.directory}/node{i}"

    def socket_path(self, i: int) -> str:
        return f"{self.node_dir(i)}/agent.sock"

    def cni_socket(self, i: int) -> str:
        return f"{self.node_dir(i)}/cni.sock"

    def cni_bin_dir(self, i: int) -> str:
        return f"{self.node_dir(i)}/cni/bin"

    def cni_conf_dir(self, i: int) -> str:
        return f"{self.node_dir(i)}/cni/net.d"

    def all_pods(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(1, self.nodes + 1) for j in range(1, self.pods + 1)]
