"""The cluster's pods as the lab reaches them: name, node, address, and the network namespace
of their first container's process (``/proc/PID/ns/net``, the pid read from the node's
containerd state), which the probes enter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.lab.kube.cluster import Cluster


@dataclass(frozen=True)
class Pod:
    """One running pod."""

    name: str
    node: str
    ip: str
    container_id: str
    pid: int  # 0 when its container has no task (yet)

    @property
    def netns(self) -> str:
        """Its network namespace, as a path the probes enter."""
        return f"/proc/{self.pid}/ns/net"


def from_json(item: dict[str, Any]) -> Pod | None:
    """A pod of ``kubectl get pods -o json`` (pid 0); None unless it runs a container."""
    status = item.get("status", {})
    containers = status.get("containerStatuses") or []
    running = [c for c in containers if "running" in c.get("state", {})]
    if status.get("phase") != "Running" or not running or not status.get("podIP"):
        return None
    container_id = running[0].get("containerID", "").partition("://")[2]
    return Pod(item["metadata"]["name"], item["spec"].get("nodeName", ""), status["podIP"],
               container_id, 0)  # fmt: skip


def running(cluster: Cluster, selector: str, namespace: str = "default") -> list[Pod]:
    """The running pods ``selector`` picks, each with its container's pid, by node then
    name."""
    items = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    found = []
    for item in items:
        pod = from_json(item)
        if pod is None or not pod.node:
            continue
        node = cluster.node(cluster.plan.node_index(pod.node))
        pid = node.runtime.task_pid(pod.container_id) or 0
        found.append(Pod(pod.name, pod.node, pod.ip, pod.container_id, pid))
    return sorted(found, key=lambda p: (cluster.plan.node_index(p.node), p.name))
