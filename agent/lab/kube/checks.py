"""What the cluster lab proves on a running cluster, each through a pod's own network
namespace (agent/lab/probe.py): every pod reaches every other with its own address seen; the
ClusterIP Service answers a pod on every node, and a pod reaches itself through a Service
(hairpin); a pod reaches a host on the underlay that is not a node, which answers and saw the
node's address (masquerade)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.lab import probe
from agent.lab.kube import rollout, workload
from agent.lab.kube.cluster import Cluster
from agent.lab.kube.plan import OUTSIDE
from agent.lab.kube.pods import Pod

Matrix = dict[tuple[str, str], probe.Result]


@dataclass(frozen=True)
class Check:
    """One proof: what was tried, whether it held, and what was seen."""

    what: str
    ok: bool
    seen: str


def addresses(pods: list[Pod]) -> dict[str, str]:
    """Network namespace -> address of every pod, as the probe's matrix takes them."""
    return {p.netns: p.ip for p in pods}


def matrix(pods: list[Pod], timeout: float = 2.0) -> Matrix:
    """Every ordered pair of pods: ICMP and TCP, and the source address the receiver saw."""
    return probe.matrix(addresses(pods), timeout)


def failed_pairs(pods: list[Pod], results: Matrix) -> list[tuple[str, str]]:
    """The pairs that are not ok (rows send)."""
    ips = addresses(pods)
    return [pair for pair, result in results.items() if not result.ok(ips[pair[0]])]


def first_per_node(pods: list[Pod]) -> list[Pod]:
    """One pod of every node that has one (the first by name)."""
    chosen: dict[str, Pod] = {}
    for pod in pods:
        chosen.setdefault(pod.node, pod)
    return list(chosen.values())


def service(cluster: Cluster, pods: list[Pod]) -> list[Check]:
    """From one pod on every node, a connection to the echo Service answers with the name of
    one of the Deployment's pods."""
    ip = rollout.cluster_ip(cluster, workload.NAME)
    names = {p.name for p in pods}
    checks = []
    for pod in first_per_node(pods):
        answer = _answer(pod, ip, lambda a: a in names)
        checks.append(Check(f"{pod.node} {pod.name} -> service {workload.NAME} {ip}",
                            answer in names, answer or "no answer"))  # fmt: skip
    return checks


def hairpin(cluster: Cluster, pod: Pod, timeout: float = 30.0) -> Check:
    """``pod`` reaches itself through the Service that fronts only it (it is labelled so)."""
    done = cluster.kubectl("label", "pod", pod.name, f"{workload.SELF}=yes", "--overwrite")
    if done.returncode != 0:
        return Check(f"label {pod.name}", False, done.stderr.strip())

    def only_itself() -> bool:
        return rollout.endpoints(cluster, workload.SELF) == {pod.ip}

    rollout.wait(f"endpoints of {workload.SELF}", only_itself, timeout)
    ip = rollout.cluster_ip(cluster, workload.SELF)
    answer = _answer(pod, ip, lambda a: a == pod.name)
    return Check(f"{pod.node} {pod.name} -> service {workload.SELF} {ip} (itself)",
                 answer == pod.name, answer or "no answer")  # fmt: skip


def _answer(pod: Pod, ip: str, good: Callable[[str], bool], timeout: float = 15.0) -> str:
    """What the Service at ``ip`` answers ``pod``, asked again until the answer is good or
    ``timeout`` passed (kube-proxy writes a Service's rules a moment after its endpoints
    change)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe.tcp_source(pod.netns, ip, workload.PORT) or ""
        if good(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def outside(cluster: Cluster, pods: list[Pod]) -> list[Check]:
    """From one pod on every node, ICMP and TCP to the outside host, which must have seen the
    node's own address."""
    target = str(OUTSIDE.ip)
    checks = []
    with probe.Responder(cluster.plan.outside_ns):
        for pod in first_per_node(pods):
            node = str(cluster.plan.node_address(cluster.plan.node_index(pod.node)).ip)
            rtt = probe.ping(pod.netns, target)
            seen = probe.tcp_source(pod.netns, target) or ""
            ok = rtt is not None and seen == node
            checks.append(Check(f"{pod.node} {pod.name} -> outside host {target}", ok,
                                f"{'echo' if rtt is not None else 'no echo'}, "
                                f"it saw {seen or 'nothing'} (node {node})"))  # fmt: skip
    return checks


def until_matrix_ok(pods: list[Pod], timeout: float) -> tuple[Matrix, float]:
    """Probe the matrix until every pair is ok or ``timeout`` passed; the last results and
    the seconds it took."""
    started = time.monotonic()
    while True:
        results = matrix(pods)
        if not failed_pairs(pods, results) or time.monotonic() - started > timeout:
            return results, time.monotonic() - started
        time.sleep(1.0)
