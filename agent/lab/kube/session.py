"""``weave-py lab up --kubernetes`` and the ``lab down`` of a cluster lab: build the cluster,
deploy weave-py and the workload, prove the network, print what a user wants to see.

Printed: the Nodes, the DaemonSet and the pods (kubectl's own tables), the pod-to-pod matrix,
the Service, hairpin and outside-host checks, Prometheus finding the agents through the API and
their per-peer counters rising (agent/lab/kube/prometheus.py), the last lines of one agent's
``kubectl logs``, the timings (cluster up, ``kubectl apply`` to every pod pair ok) and the
memory of the lab's processes. Exit 0 only when every check holds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.lab import probe
from agent.lab.commands import CommandError
from agent.lab.image import ImageError, ensure_image
from agent.lab.kube import checks, images, memory, pods, prometheus, rollout, state, workload
from agent.lab.kube.checks import Check
from agent.lab.kube.cluster import Cluster
from agent.lab.kube.plan import KubePlan
from agent.lab.kube.underlay import KubeUnderlay

READY_TIMEOUT = 180.0  # seconds from kubectl apply to every Node Ready and every pod running
MATRIX_TIMEOUT = 60.0  # seconds more for every pod pair to be ok
LOG_LINES = 12


def agent_image() -> tuple[str, Path]:
    """The manifest's image reference and the archive of that image, built from this
    checkout when its inputs changed (agent/lab/image.py)."""
    (reference,) = workload.manifest_images(workload.MANIFEST.read_text())
    return reference, ensure_image(reference)


def up(name: str, nodes: int, pods_per_node: int, directory: str) -> int:
    """Build the cluster lab and print it; the exit status."""
    try:
        plan = KubePlan(name, nodes, pods_per_node, directory)
    except ValueError as exc:
        return _fail(f"{exc}")
    if state.exists(directory) or KubeUnderlay(plan).namespaces():
        return _fail(f"lab {name} exists ({directory}, {plan.prefix}-* namespaces): "
                     f"run 'weave-py lab down --name {name}'")  # fmt: skip
    started = time.monotonic()
    try:
        reference, archive = agent_image()
    except (ImageError, CommandError) as exc:
        return _fail(f"the weave-py image: {exc}")
    cluster = Cluster(plan)
    try:
        timings = {"image": time.monotonic() - started}
        return _build_and_prove(cluster, reference, archive, timings)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"weave-py lab: up failed: {exc}", file=sys.stderr)
        print(f"weave-py lab: logs are in {directory}; run 'weave-py lab down --name {name}'",
              file=sys.stderr)  # fmt: skip
        return 1


def _build_and_prove(cluster: Cluster, reference: str, archive: Path,
                     timings: dict[str, float]) -> int:  # fmt: skip
    plan = cluster.plan
    started = time.monotonic()
    cluster.up([images.archive(plan.images_dir), archive])
    timings["cluster up"] = time.monotonic() - started
    applied = time.monotonic()
    rollout.apply_weave(cluster, reference)
    rollout.apply_workload(cluster)
    wait_deployed(cluster)
    running = pods.running(cluster, f"app={workload.NAME}")
    results, _ = checks.until_matrix_ok(running, MATRIX_TIMEOUT)
    timings["apply -> all pods ok"] = time.monotonic() - applied
    proofs = [*checks.service(cluster, running), checks.hairpin(cluster, running[0]),
              *checks.outside(cluster, running), *prometheus.prove(cluster, running)]  # fmt: skip
    _print_cluster(cluster)
    ok = _print_matrix(running, results) & _print_checks(proofs)
    _print_agent_log(cluster)
    _print_figures(cluster, timings)
    print(
        f"{'all checks ok' if ok else 'checks FAILED'}. Remove with: "
        f"weave-py lab down --name {plan.name}"
    )
    return 0 if ok else 1


def wait_deployed(cluster: Cluster, timeout: float = READY_TIMEOUT) -> None:
    """Until every Node is Ready, weave-py available on each and the workload's pods too
    (RuntimeError with its log as soon as an agent keeps crashing)."""
    plan = cluster.plan
    names = [plan.node_name(i) for i in range(1, plan.nodes + 1)]

    def crashing() -> str:
        return rollout.crashing(cluster)

    def nodes_ready() -> bool:
        return all(rollout.nodes_ready(cluster).get(n) for n in names)

    rollout.wait("nodes Ready", nodes_ready, timeout, crashing)
    rollout.wait(
        "DaemonSet weave-py available",
        lambda: rollout.daemonset_available(cluster, plan.nodes),
        timeout,
        crashing,
    )
    rollout.wait(f"Deployment {workload.NAME} available",
                 lambda: rollout.deployment_available(cluster, workload.NAME,
                                                      plan.nodes * plan.pods), timeout)  # fmt: skip


def _print_cluster(cluster: Cluster) -> None:
    for args in (("get", "nodes", "-o", "wide"),
                 ("-n", "kube-system", "get", "daemonset", "weave-py", "-o", "wide"),
                 ("get", "pods", "-A", "-o", "wide")):  # fmt: skip
        print(f"$ kubectl {' '.join(args)}")
        print(cluster.kubectl(*args).stdout)


def _print_matrix(running: list[pods.Pod], results: checks.Matrix) -> bool:
    ips = checks.addresses(running)
    print("pod-to-pod reachability (rows send; ok = ICMP + TCP, receiver saw the sender's pod IP):")
    print(probe.render(ips, results))
    failed = checks.failed_pairs(running, results)
    print(f"{len(results) - len(failed)} of {len(results)} pod pairs ok\n")
    return not failed


def _print_checks(proofs: list[Check]) -> bool:
    for check in proofs:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.what}: {check.seen}")
    print()
    return all(c.ok for c in proofs)


def _print_agent_log(cluster: Cluster) -> None:
    agents = pods.running(cluster, "app=weave-py", namespace="kube-system")
    if not agents:
        print("no running weave-py pod to show the log of\n")
        return
    name = agents[0].name
    print(f"$ kubectl -n kube-system logs {name} --tail={LOG_LINES}")
    done = cluster.kubectl("-n", "kube-system", "logs", name, f"--tail={LOG_LINES}")
    print(done.stdout or done.stderr)


def _print_figures(cluster: Cluster, timings: dict[str, float]) -> None:
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    usage = memory.usage(cluster)
    print("memory (RSS): " + ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in usage.items()))


def down(name: str, directory: str) -> int:
    """Remove a cluster lab (also one whose builder crashed); the exit status."""
    try:
        cluster = Cluster.load(name, directory)
    except ValueError as exc:
        return _fail(f"{exc}")
    started = time.monotonic()
    try:
        removed = cluster.down()
    except RuntimeError as exc:
        return _fail(f"down: {exc}")
    print(f"lab {name}: removed {len(removed)} namespace(s) and every process of the cluster "
          f"in {time.monotonic() - started:.1f}s")  # fmt: skip
    return 0


def _fail(message: str) -> int:
    print(f"weave-py lab: {message}", file=sys.stderr)
    return 2
