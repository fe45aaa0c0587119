"""weave-py on a real cluster (the cluster lab's: kubelet, containerd and kube-proxy per node,
deploy/daemonset.yaml as written): Prometheus scraping it through the API, then while the
cluster changes: an agent pod deleted, a rolling update, a fourth node joining (one whose
mount namespace has no python3), a pod made and removed there through kubelet, and that node
deleted. One cluster for all of them (the
``kube_lab`` fixture); they run in this order and each leaves the cluster working."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import time
from typing import Any

import pytest

from agent import client
from agent.lab import probe
from agent.lab.kube import checks, pods, prometheus, rollout, workload
from agent.lab.kube.cluster import Cluster
from agent.lab.kube.images import TEST_IMAGE
from agent.lab.kube.pods import Pod
from overlay.netns import run_in_netns
from tests.kube.pinger import AgentWatch, Pinger

pytestmark = pytest.mark.netns
# Seconds a ping may lose per agent restarted on its path, besides what Kubernetes itself adds
# (AgentWatch: from the old agent's exit to the new one's start). On kubelet 1.20 that gap is
# 5-8 s: the DaemonSet controller makes the new pod only once the old one is deleted, and
# kubelet deletes a terminated pod on its status manager's 10 s batch.
OUTAGE = 5.0
TIMEOUT = 120.0


def agents(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Node -> its weave-py pod: name, restarts, container id."""
    items = cluster.get("pods", "-n", "kube-system", "-l", "app=weave-py")["items"]
    found = {}
    for item in items:
        statuses = item["status"].get("containerStatuses") or [{}]
        found[item["spec"].get("nodeName", "")] = {
            "name": item["metadata"]["name"],
            "restarts": statuses[0].get("restartCount", 0),
            "container": statuses[0].get("containerID", ""),
        }
    return found


def echo_pods(cluster: Cluster) -> list[Pod]:
    return pods.running(cluster, f"app={workload.NAME}")


def on(running: list[Pod], node: str) -> Pod:
    return next(p for p in running if p.node == node)


def report(cluster: Cluster, i: int) -> dict[str, Any]:
    """Node i's agent's /report, asked on its HTTP API inside the node."""
    ns = f"/run/netns/{cluster.plan.node_ns(i)}"
    return run_in_netns(ns, lambda: client.report(http_addr="127.0.0.1:6784"))


def make_pod(cluster: Cluster, name: str, node: str) -> Pod:
    """A busybox pod bound to ``node`` (kubelet makes it: no scheduler), once it runs."""
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"test-pod": name}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": TEST_IMAGE, "imagePullPolicy": "Never"}]},
    }  # fmt: skip
    cluster.apply(json.dumps(manifest))
    rollout.wait(f"pod {name}", lambda: bool(pods.running(cluster, f"test-pod={name}")), TIMEOUT)
    (pod,) = pods.running(cluster, f"test-pod={name}")
    return pod


def delete_pod(cluster: Cluster, name: str) -> None:
    done = cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s")
    assert done.returncode == 0, done.stderr


def wait_agents_replaced(cluster: Cluster, old: dict[str, dict[str, Any]], nodes: int) -> None:
    def replaced() -> bool:
        now = agents(cluster)
        return all(now[n]["name"] != old[n]["name"] for n in old) and rollout.daemonset_available(
            cluster, nodes
        )

    rollout.wait("agents replaced", replaced, TIMEOUT)


def test_prometheus_finds_every_agent_and_each_pairs_path_and_traffic(kube_lab: Cluster) -> None:
    """Debian's Prometheus, given only the API and the manifest's annotations, scrapes every
    agent; every node pair shows its path, all on the fast path here, and per-peer byte
    counters that rise while pods exchange traffic (the kernel's counts for the fast path);
    promtool finds nothing to say about the exposition."""
    proofs = prometheus.prove(kube_lab, echo_pods(kube_lab))
    failed = [f"{c.what}: {c.seen}" for c in proofs if not c.ok]
    assert not failed, failed
    fastdp = next(c for c in proofs if c.what.startswith("weave_py_peer_fastdp"))
    assert fastdp.seen == "6 of 6 pairs on the fast path", fastdp.seen  # nothing on the sleeve
    rising = [c.what for c in proofs if "rises for every node pair" in c.what]
    assert len(rising) == 2, rising


def test_an_agent_pod_deleted_is_recreated_and_its_pods_keep_their_addresses(
    kube_lab: Cluster,
) -> None:
    """A ping across the restarted agent's node loses at most 5 s end to end: the fast path's
    kernel state carries it while no agent runs (the sleeve alone lost 8-13 s here)."""
    running = echo_pods(kube_lab)
    before = {p.name: p.ip for p in running}
    old = agents(kube_lab)
    ping = Pinger(on(running, "node1").netns, on(running, "node2").ip)
    with AgentWatch(kube_lab.plan.node_ns(2)) as watch, ping:
        time.sleep(2)
        name = old["node2"]["name"]
        assert kube_lab.kubectl("-n", "kube-system", "delete", "pod", name).returncode == 0
        wait_agents_replaced(kube_lab, {"node2": old["node2"]}, 3)
        time.sleep(3)
    figures = f"ping outages {ping.outages()} s, Kubernetes' gap {watch.gaps()} s"
    print(f"agent pod deleted: {figures}")
    assert len(watch.gaps()) == 1, figures
    assert sum(ping.outages()) <= OUTAGE, figures
    assert {p.name: p.ip for p in echo_pods(kube_lab)} == before
    assert report(kube_lab, 2)["ipam"]["used"] == 1  # the new agent knows the pod it kept
    fresh = make_pod(kube_lab, "after-agent-restart", "node2")
    try:
        assert fresh.ip not in before.values()
    finally:
        delete_pod(kube_lab, fresh.name)


def test_a_rolling_update_adds_at_most_five_seconds_per_agent_to_kubernetes_gap(
    kube_lab: Cluster,
) -> None:
    """Issue 12 asks for <= 5 s lost per node, end to end. On kubelet 1.20 the DaemonSet's
    new pod comes only after the old pod object is deleted (kubelet's 10 s status batch), so
    a node runs no agent for several seconds; the fast path's kernel state carries pod traffic
    meanwhile (the sleeve alone lost 6-16 s per node here). Asserted end to end: at most 5 s
    per agent on the path; the figures are printed."""
    running = checks.first_per_node(echo_pods(kube_lab))
    old = agents(kube_lab)
    pairs = [(p, running[(k + 1) % len(running)]) for k, p in enumerate(running)]
    pingers = [Pinger(src.netns, dst.ip) for src, dst in pairs]
    watches = {i: AgentWatch(kube_lab.plan.node_ns(i)) for i in (1, 2, 3)}
    with contextlib.ExitStack() as stack:
        for watch in watches.values():
            stack.enter_context(watch)
        for pinger in pingers:
            stack.enter_context(pinger)
        time.sleep(2)
        stamp = {"spec": {"template": {"metadata": {"annotations": {
            "weave-py.test/restarted": str(time.time())}}}}}  # fmt: skip
        done = kube_lab.kubectl("-n", "kube-system", "patch", "daemonset", "weave-py",
                                "-p", json.dumps(stamp))  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_agents_replaced(kube_lab, old, 3)
        time.sleep(3)
    for (src, dst), pinger in zip(pairs, pingers, strict=True):
        ends = [kube_lab.plan.node_index(src.node), kube_lab.plan.node_index(dst.node)]
        gaps = [g for i in ends for g in watches[i].gaps()]
        figures = (
            f"{src.node}->{dst.node}: ping outages {pinger.outages()} s, Kubernetes' gaps {gaps} s"
        )
        print(f"rolling update: {figures}")
        assert sum(pinger.outages()) <= OUTAGE * 2, figures


def test_a_fourth_node_joins_and_nothing_else_restarts(kube_lab: Cluster) -> None:
    before_agents = agents(kube_lab)
    before_pods = {p.name for p in echo_pods(kube_lab)}
    assert sorted(before_agents) == ["node1", "node2", "node3"]
    _join(kube_lab)
    after = agents(kube_lab)
    for name, agent in before_agents.items():
        assert after[name]["name"] == agent["name"] and after[name]["restarts"] == agent["restarts"]
    running = echo_pods(kube_lab)
    assert before_pods <= {p.name for p in running}
    assert {p.node for p in running} == {"node1", "node2", "node3", "node4"}
    results = checks.matrix(running)
    assert not checks.failed_pairs(running, results)
    peers = report(kube_lab, 4)["peers"]
    assert sorted(p["nickname"] for p in peers) == ["node1", "node2", "node3"]
    assert all(p["state"] == "established" for p in peers)


def _join(cluster: Cluster) -> None:
    """Node 4 (no python3 in its mount namespace) joins; the echo Deployment grows onto it."""
    if cluster.plan.nodes >= 4:
        return
    cluster.add_node(4, python=False)
    done = cluster.kubectl("scale", "deployment", workload.NAME, "--replicas=4")
    assert done.returncode == 0, done.stderr
    rollout.wait("weave-py on 4 nodes", lambda: rollout.daemonset_available(cluster, 4), TIMEOUT)
    rollout.wait("4 echo pods", lambda: rollout.deployment_available(cluster, workload.NAME, 4),
                 TIMEOUT)  # fmt: skip


def test_a_pod_comes_and_goes_through_kubelet_on_a_node_without_python(kube_lab: Cluster) -> None:
    _join(kube_lab)
    node = kube_lab.node(4)
    no_python = subprocess.run(node.in_node(["/usr/bin/python3", "-c", ""]),
                               capture_output=True, check=False)  # fmt: skip
    assert no_python.returncode != 0
    used = report(kube_lab, 4)["ipam"]["used"]
    pod = make_pod(kube_lab, "no-python", "node4")
    source = on(echo_pods(kube_lab), "node1")
    assert probe.ping(source.netns, pod.ip) is not None
    assert report(kube_lab, 4)["ipam"]["used"] == used + 1
    delete_pod(kube_lab, pod.name)
    rollout.wait("address released", lambda: report(kube_lab, 4)["ipam"]["used"] == used, 30)


def test_a_deleted_node_is_reclaimed_once_and_no_address_is_given_twice(
    kube_lab: Cluster,
) -> None:
    _join(kube_lab)
    owned_by_4 = [o for o in report(kube_lab, 1)["ipam"]["owners"] if o["nickname"] == "node4"]
    assert owned_by_4 and owned_by_4[0]["owned"]
    kube_lab.stop_node(4, grace=10.0)
    assert kube_lab.kubectl("delete", "node", "node4").returncode == 0

    def reclaimed() -> bool:
        return all(not _owned(report(kube_lab, i), "node4") for i in (1, 2, 3))

    rollout.wait("node4's space reclaimed", reclaimed, TIMEOUT)
    logs = [kube_lab.kubectl("-n", "kube-system", "logs", a["name"]).stdout
            for a in agents(kube_lab).values()]  # fmt: skip
    took = [
        line for log in logs for line in log.splitlines() if "rmpeer" in line and "took" in line
    ]
    assert len(took) == 1, took
    owners = report(kube_lab, 1)["ipam"]["owners"]
    blocks = [ipaddress.ip_network(n) for o in owners for n in o["owned"]]
    assert all(not a.overlaps(b) for k, a in enumerate(blocks) for b in blocks[k + 1 :])

    def four_echo_pods() -> bool:
        return rollout.deployment_available(kube_lab, workload.NAME, 4)

    rollout.wait("4 echo pods on 3 nodes", four_echo_pods, TIMEOUT)
    running = echo_pods(kube_lab)
    extra = [make_pod(kube_lab, f"after-reclaim-{i}", f"node{i}") for i in (1, 2, 3)]
    try:
        addresses = [p.ip for p in running + extra]
        assert len(addresses) == len(set(addresses)), addresses
    finally:
        for pod in extra:
            delete_pod(kube_lab, pod.name)


def _owned(document: dict[str, Any], nickname: str) -> list[str]:
    return [n for o in document["ipam"]["owners"] if o["nickname"] == nickname for n in o["owned"]]
