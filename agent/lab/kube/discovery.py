"""Prometheus' Kubernetes pod discovery, for the cluster lab's Prometheus.

Debian's prometheus 2.42 is built without its Kubernetes service discovery (its binary holds
aws, azure, dns, file, http and others, not kubernetes). So this small process does what
``kubernetes_sd_configs: [{role: pod}]`` does, through the same API: it lists the pods of a
namespace every few seconds and writes them, with the meta labels the pod role gives
(``__meta_kubernetes_pod_annotation_*``, ``..._pod_name``, ``..._pod_node_name``,
``..._namespace``), as a ``file_sd_configs`` file, replaced atomically. The scrape config then
relabels exactly as it would with the pod role.

``python -m agent.lab.kube.discovery KUBECONFIG NAMESPACE OUT`` runs it until killed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.resources.core_v1 import Pod

INTERVAL = 2.0  # seconds between lists (Prometheus' pod role watches; this polls)
log = logging.getLogger("weave-py.lab")


def label_name(key: str) -> str:
    """An annotation key as Prometheus turns it into a label name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def target_groups(pods: list[Pod]) -> list[dict[str, Any]]:
    """One target group per running pod with an address: its IP and the pod role's labels."""
    groups = []
    for pod in pods:
        meta, status = pod.metadata, pod.status
        if meta is None or status is None or not status.podIP or status.phase != "Running":
            continue
        labels = {
            "__meta_kubernetes_namespace": meta.namespace or "",
            "__meta_kubernetes_pod_name": meta.name or "",
            "__meta_kubernetes_pod_node_name": (pod.spec.nodeName or "") if pod.spec else "",
        }
        for key, value in (meta.annotations or {}).items():
            labels[f"__meta_kubernetes_pod_annotation_{label_name(key)}"] = value
        groups.append({"targets": [status.podIP], "labels": labels})
    return groups


def write(path: Path, groups: list[dict[str, Any]]) -> None:
    """Replace the file_sd file atomically (Prometheus never reads half of it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(temporary, path)


def run(kubeconfig: str, namespace: str, out: Path) -> None:
    """List and write until killed; API errors are logged and retried."""
    client = Client(KubeConfig.from_file(kubeconfig))
    while True:
        try:
            write(out, target_groups(list(client.list(Pod, namespace=namespace))))
        except (ApiError, OSError) as exc:
            log.warning("list pods: %s", exc)
        time.sleep(INTERVAL)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
