"""Putting weave-py and the workload on the cluster, and waiting for what Kubernetes reports:
Nodes Ready, the DaemonSet available on every node, the Deployment's pods running and a
Service's endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.lab.kube import workload
from agent.lab.kube.cluster import Cluster

DAEMONSET = ("-n", "kube-system", "daemonset", "weave-py")
POLL_INTERVAL = 0.5


def apply_weave(cluster: Cluster, image: str, manifest: Path = workload.MANIFEST) -> str:
    """``kubectl apply`` of the manifest, only its image reference set to ``image``."""
    return cluster.apply(workload.substitute_image(manifest.read_text(), image))


def apply_workload(cluster: Cluster) -> str:
    """The echo Deployment (pods per node x nodes) and its two Services."""
    return cluster.apply(workload.workload(cluster.plan.nodes, cluster.plan.pods))


def wait(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    broken: Callable[[], str] = lambda: "",
) -> float:
    """Poll ``ready`` until it is true; the seconds that took. TimeoutError naming ``what``
    after ``timeout``, RuntimeError as soon as ``broken`` says what went wrong."""
    started = time.monotonic()
    while not _quietly(ready):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        problem = broken()
        if problem:
            raise RuntimeError(f"{what}: {problem}")
        time.sleep(POLL_INTERVAL)
    return time.monotonic() - started


def _quietly(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except (RuntimeError, KeyError, ValueError):
        return False


def nodes_ready(cluster: Cluster) -> dict[str, bool]:
    """Node name -> whether its Ready condition is True."""
    items = cluster.get("nodes")["items"]
    return {n["metadata"]["name"]: _condition(n, "Ready") for n in items}


def _condition(item: dict[str, Any], kind: str) -> bool:
    conditions = item.get("status", {}).get("conditions", [])
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def daemonset_status(cluster: Cluster) -> dict[str, int]:
    """The weave-py DaemonSet's desired, updated and available counts."""
    status = cluster.get(*DAEMONSET)["status"]
    return {key: int(status.get(key, 0)) for key in
            ("desiredNumberScheduled", "updatedNumberScheduled", "numberAvailable")}  # fmt: skip


def daemonset_available(cluster: Cluster, nodes: int) -> bool:
    """Whether weave-py runs, updated and available, on ``nodes`` nodes."""
    status = daemonset_status(cluster)
    return status["desiredNumberScheduled"] == nodes and all(v == nodes for v in status.values())


def crashing(cluster: Cluster, namespace: str = "kube-system", selector: str = "app=weave-py",
             restarts: int = 2) -> str:  # fmt: skip
    """What the first pod that ``selector`` picks and that restarted ``restarts`` times said
    last (its previous log's tail); empty while none did."""
    try:
        items = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    except RuntimeError:
        return ""
    for item in items:
        for container in item.get("status", {}).get("containerStatuses") or []:
            if int(container.get("restartCount", 0)) >= restarts:
                name = item["metadata"]["name"]
                done = cluster.kubectl("-n", namespace, "logs", name, "-c", container["name"],
                                       "--previous", "--tail=15")  # fmt: skip
                return f"{name} restarted {container['restartCount']} times:\n{done.stdout}"
    return ""


def deployment_available(cluster: Cluster, name: str, replicas: int) -> bool:
    """Whether the Deployment has ``replicas`` pods updated and available."""
    status = cluster.get("deployment", name)["status"]
    return all(int(status.get(k, 0)) == replicas
               for k in ("updatedReplicas", "availableReplicas", "readyReplicas"))  # fmt: skip


def endpoints(cluster: Cluster, service: str) -> set[str]:
    """The ready addresses behind a Service."""
    subsets = cluster.get("endpoints", service).get("subsets") or []
    return {a["ip"] for s in subsets for a in s.get("addresses", [])}


def cluster_ip(cluster: Cluster, service: str) -> str:
    """A Service's ClusterIP."""
    ip: str = cluster.get("service", service)["spec"]["clusterIP"]
    return ip
