"""What the cluster lab runs on its cluster: weave-py from deploy/daemonset.yaml (only the
image reference substituted), and a workload of ``pods`` pods per node behind ClusterIP
Services.

The workload is one Deployment, ``lab-echo``, of nodes x pods replicas spread by a topology
constraint (max skew 1 over ``kubernetes.io/hostname``, DoNotSchedule): with every node Ready
the scheduler can only place exactly ``pods`` on each (a node that is not Ready yet carries a
NoSchedule taint, so pods wait for it rather than crowd the others). Each pod answers a TCP
connection on 8080 with its name (busybox ``nc -ll -e hostname``). Service ``lab-echo``
(port 80) fronts them all; Service ``lab-self`` fronts only the pod labelled ``lab-self=yes``,
so that pod can reach itself through a Service (hairpin).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent.lab.kube.images import TEST_IMAGE

MANIFEST = Path(__file__).resolve().parents[3] / "deploy" / "daemonset.yaml"
NAME = "lab-echo"
SELF = "lab-self"
PORT = 80
TARGET_PORT = 8080
IMAGE_LINE = re.compile(r"^(\s*(?:-\s+)?image:\s*)(\S+)\s*$", re.MULTILINE)


def manifest_images(text: str) -> set[str]:
    """Every image reference of a manifest."""
    return {m.group(2).strip("\"'") for m in IMAGE_LINE.finditer(text)}


def substitute_image(text: str, image: str) -> str:
    """The manifest with every ``image:`` reference replaced by ``image`` and nothing else
    changed (ValueError when it names no image or more than one)."""
    found = manifest_images(text)
    if len(found) != 1:
        raise ValueError(f"the manifest names {len(found)} images ({sorted(found)}); expected 1")
    return IMAGE_LINE.sub(lambda m: m.group(1) + image, text)


def deployment(replicas: int, name: str = NAME, node: str = "") -> dict[str, Any]:
    """The echo Deployment (``node``: all its pods on that node, by a nodeSelector)."""
    labels = {"app": name}
    spread = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": labels},
    }
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "echo", "image": TEST_IMAGE, "imagePullPolicy": "Never",
            "command": ["nc", "-ll", "-p", str(TARGET_PORT), "-e", "/bin/hostname"],
            "ports": [{"containerPort": TARGET_PORT}],
        }],
    }  # fmt: skip
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    else:
        spec["topologySpreadConstraints"] = [spread]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": spec}},
    }  # fmt: skip


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    """A ClusterIP Service on PORT in front of the pods ``selector`` picks."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"port": PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]},
    }  # fmt: skip


def workload(nodes: int, pods: int) -> str:
    """The Deployment and both Services, as a JSON List ``kubectl apply -f -`` takes."""
    items = [deployment(nodes * pods), service(NAME, {"app": NAME}),
             service(SELF, {"app": NAME, SELF: "yes"})]  # fmt: skip
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
