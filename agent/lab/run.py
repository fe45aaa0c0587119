"""``weave-py lab up`` / ``lab down``: build the lab, print peers, routes and the matrix; with
``--kubernetes``, a real cluster running weave-py from its DaemonSet (agent/lab/kube/session.py)."""

from __future__ import annotations

import sys
import time

from agent import status
from agent.lab import probe
from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from agent.lab.state import default_directory, load_plan
from agent.report import Report


def up(
    name: str,
    nodes: int,
    pods: int,
    directory: str | None,
    gossip: bool = True,
    kubernetes: bool = False,
) -> int:
    """Build a lab and print it; the exit status."""
    if kubernetes:
        from agent.lab.kube import session

        return session.up(name, nodes, pods, directory or default_directory(name))
    try:
        plan = LabPlan(name, nodes, pods, directory or default_directory(name))
    except ValueError as exc:
        print(f"weave-py lab: {exc}", file=sys.stderr)
        return 2
    lab = Lab(plan, gossip=gossip)
    started = time.monotonic()
    if not _build(lab):
        return 1
    print(
        f"lab {name}: {nodes} node(s), {pods} pod(s) each, up in "
        f"{time.monotonic() - started:.1f}s; logs in {plan.directory}\n"
    )
    _print_nodes(lab)
    return _print_matrix(lab)


def _build(lab: Lab) -> bool:
    """Bring the lab up; False (and what to do, on stderr) when that failed."""
    try:
        lab.up()
    except (OSError, RuntimeError) as exc:
        print(f"weave-py lab: up failed: {exc}", file=sys.stderr)
        print(
            f"weave-py lab: logs are in {lab.plan.directory}; "
            f"run 'weave-py lab down --name {lab.plan.name}'",
            file=sys.stderr,
        )
        return False
    return True


def _print_nodes(lab: Lab) -> None:
    """Each node's connections and routes, then the address space."""
    plan = lab.plan
    for i in range(1, plan.nodes + 1):
        report = Report.from_json(lab.report(i))
        owned = ", ".join(lab.owned(i)) or "none"
        print(f"== node{i} ({plan.node_ns(i)}, {plan.node_address(i).ip}, owns {owned})")
        print(status.render_connections(report) + status.render_routes(report))
    print(status.render_ipam(Report.from_json(lab.report(1))))


def _print_matrix(lab: Lab) -> int:
    """Probe every pair of pods and print the matrix; 1 when a pair failed."""
    addresses = lab.pod_ips()
    if len(addresses) < 2:
        print("fewer than two pods: no reachability matrix")
        return 0
    results = probe.matrix(addresses)
    print("pod-to-pod reachability (rows send; ok = ICMP + TCP, receiver saw the sender's pod IP):")
    print(probe.render(addresses, results))
    failed = [pair for pair, r in results.items() if not r.ok(addresses[pair[0]])]
    rtts = [r.rtt_ms for r in results.values() if r.rtt_ms is not None]
    if rtts:
        print(f"ICMP rtt: min {min(rtts):.3f} ms, max {max(rtts):.3f} ms over {len(rtts)} pairs")
    if failed:
        print(f"{len(failed)} of {len(results)} pod pairs FAILED", file=sys.stderr)
        return 1
    print(
        f"all {len(results)} pod pairs reach each other. Remove with: "
        f"weave-py lab down --name {lab.plan.name}"
    )
    return 0


def down(name: str, directory: str | None) -> int:
    """Remove a lab (a cluster lab when its state file says so); the exit status."""
    from agent.lab.kube import state as kube_state

    if kube_state.exists(directory or default_directory(name)):
        from agent.lab.kube import session

        return session.down(name, directory or default_directory(name))
    try:
        plan = load_plan(name, directory)
    except ValueError as exc:
        print(f"weave-py lab: {exc}", file=sys.stderr)
        return 2
    removed = Lab(plan).down()
    print(f"lab {name}: removed {len(removed)} namespace(s)")
    return 0
