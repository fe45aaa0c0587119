"""The cluster lab's stand-in for Prometheus' pod role (Debian's Prometheus lacks it): the
targets and meta labels it writes for Prometheus' file discovery."""

from __future__ import annotations

import json
from pathlib import Path

from lightkube.models.core_v1 import PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from agent.lab.kube.discovery import label_name, target_groups, write


def pod(name: str, ip: str | None, phase: str = "Running", **annotations: str) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace="kube-system", annotations=annotations),
        spec=PodSpec(containers=[], nodeName="node1"),
        status=PodStatus(podIP=ip, phase=phase),
    )


def test_running_pods_become_targets_with_the_pod_roles_labels() -> None:
    agent = pod("weave-py-x", "192.168.1.7", **{"prometheus.io/scrape": "true",
                                                "prometheus.io/port": "6782"})  # fmt: skip
    groups = target_groups([agent, pod("pending", None, "Pending"), pod("gone", "10.0.0.9",
                                                                        "Succeeded")])  # fmt: skip
    assert groups == [{
        "targets": ["192.168.1.7"],
        "labels": {
            "__meta_kubernetes_namespace": "kube-system",
            "__meta_kubernetes_pod_name": "weave-py-x",
            "__meta_kubernetes_pod_node_name": "node1",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": "6782",
        },
    }]  # fmt: skip


def test_annotation_keys_become_label_names_as_prometheus_makes_them() -> None:
    assert label_name("prometheus.io/scrape") == "prometheus_io_scrape"
    assert label_name("a-b.c/d_e") == "a_b_c_d_e"


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "pods.json"
    write(out, [{"targets": ["1.2.3.4"], "labels": {}}])
    write(out, [])
    assert json.loads(out.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["pods.json"]
