"""What the cluster lab's processes hold in memory (resident set sizes), by role."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lab.kube import pods, processes

if TYPE_CHECKING:
    from agent.lab.kube.cluster import Cluster

GROUPS = {"etcd": "control plane", "kube-apiserver": "control plane",
          "kube-controller-manager": "control plane", "kube-scheduler": "control plane",
          "kubelet": "kubelets", "kube-proxy": "kube-proxies", "containerd": "containerd",
          "holder": "holders"}  # fmt: skip


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def usage(cluster: Cluster) -> dict[str, int]:
    """Bytes by role: control plane, kubelets, kube-proxies, containerd, holders, shims, the
    weave-py agents, the other containers, and the total."""
    found: dict[str, int] = {}
    for daemon in cluster.daemons:
        if processes.runs(daemon):
            group = GROUPS.get(daemon.name, daemon.name)
            found[group] = found.get(group, 0) + rss(daemon.pid)
    agents = {p.pid for p in pods.running(cluster, "app=weave-py", namespace="kube-system")}
    for i in range(1, cluster.plan.nodes + 1):
        node = cluster.node(i)
        shims = processes.matching(f"-address {node.socket}")
        found["shims"] = found.get("shims", 0) + sum(rss(pid) for pid in shims)
        for pid in node.runtime.tasks().values():
            group = "agents" if pid in agents else "other containers"
            found[group] = found.get(group, 0) + rss(pid)
    found["total"] = sum(found.values())
    return found


def agent_rss(cluster: Cluster) -> dict[str, int]:
    """Node name -> resident bytes of its weave-py agent."""
    running = pods.running(cluster, "app=weave-py", namespace="kube-system")
    return {p.node: rss(p.pid) for p in running}
