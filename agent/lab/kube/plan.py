"""Names, addresses and paths of a cluster lab, derived from its name and size alone (so ``lab
down`` can find everything again from the state file).

Underlay 192.168.1.0/24 on the bridge ``wp<name>ul`` in ``wp<name>-ul``, which holds the
gateway 192.168.1.1 (the nodes' default route: a Service address must be routable before
kube-proxy's DNAT rewrites it). The control plane is 192.168.1.2 in ``wp<name>-cp``; node i is
``node<i>`` at 192.168.1.(6+i) in ``wp<name>-n<i>`` (as the agent lab); the outside host, a
namespace on the underlay that is no node, is 192.168.1.254 in ``wp<name>-out``. Pods get
addresses from 10.32.0.0/12 (the agent's default range; the controller-manager cuts it into a
/24 per Node), Services from 10.96.0.0/12.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

from agent.lab.plan import NAME, UNDERLAY, LabPlan

BIN_DIR = Path("/var/cache/weave-py/kubernetes-v1.20.2/bin")
CLUSTER_CIDR = ipaddress.IPv4Network("10.32.0.0/12")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
GATEWAY = ipaddress.IPv4Interface(f"{UNDERLAY.network_address + 1}/{UNDERLAY.prefixlen}")
CONTROL = ipaddress.IPv4Interface(f"{UNDERLAY.network_address + 2}/{UNDERLAY.prefixlen}")
OUTSIDE = ipaddress.IPv4Interface(f"{UNDERLAY.network_address + 254}/{UNDERLAY.prefixlen}")
MAX_NODES = 40  # node addresses 192.168.1.7 .. .46 stay clear of the outside host


@dataclass(frozen=True)
class KubePlan:
    """One cluster lab: ``nodes`` nodes, ``pods`` workload pods on each."""

    name: str
    nodes: int
    pods: int
    directory: str
    bin_dir: Path = BIN_DIR

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"nodes: {self.nodes} is outside 1..{MAX_NODES}")
        if not 1 <= self.pods <= 50:
            raise ValueError(f"pods: {self.pods} is outside 1..50")
        if not NAME.match(self.name):
            raise ValueError(f"lab name {self.name!r}: use 1-10 lowercase letters and digits")

    @property
    def lab(self) -> LabPlan:
        """The agent lab's plan of the same name: the underlay's and nodes' names."""
        return LabPlan(self.name, self.nodes, 0, self.directory)

    @property
    def prefix(self) -> str:
        """What every namespace and link of this lab starts with."""
        return self.lab.prefix

    def grown(self, nodes: int) -> KubePlan:
        """The same lab with ``nodes`` nodes."""
        return replace(self, nodes=nodes)

    # -- namespaces and links ------------------------------------------------------------------

    @property
    def control_ns(self) -> str:
        """The control plane's network namespace."""
        return f"{self.prefix}-cp"

    @property
    def outside_ns(self) -> str:
        """The outside host's network namespace."""
        return f"{self.prefix}-out"

    def node_ns(self, i: int) -> str:
        """Node i's network namespace."""
        return self.lab.node_ns(i)

    def node_name(self, i: int) -> str:
        """Node i's Kubernetes name (and host name)."""
        return f"node{i}"

    def node_address(self, i: int) -> ipaddress.IPv4Interface:
        """Node i's underlay address, its InternalIP."""
        return self.lab.node_address(i)

    def node_index(self, name: str) -> int:
        """i of the node named ``name``."""
        if not name.startswith("node") or not name[4:].isdigit():
            raise ValueError(f"not a lab node: {name!r}")
        return int(name[4:])

    # -- paths ---------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The lab's directory."""
        return Path(self.directory)

    @property
    def control_dir(self) -> Path:
        """The control plane's state and logs."""
        return self.root / "control"

    @property
    def pki_dir(self) -> Path:
        """Certificates, keys and kubeconfigs."""
        return self.root / "pki"

    @property
    def images_dir(self) -> Path:
        """Image archives made for the lab."""
        return self.root / "images"

    def node_dir(self, i: int) -> Path:
        """Everything of node i: its private host directories, containerd's state, logs."""
        return self.root / self.node_name(i)

    def kubectl(self) -> Path:
        """The kubectl built with the cluster (the same release as the apiserver)."""
        return self.bin_dir / "kubectl"
