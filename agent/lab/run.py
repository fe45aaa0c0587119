"""``weave-py lab up`` / ``lab down``: build the lab, print peers, routes and the matrix; with
``--kubernetes``, a real cluster running weave-py from its DaemonSet (agent/lab/kube/session.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from agent import status
from agent.lab import probe
from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from agent.lab.state import default_directory, load_plan
from agent.report import Report

PATHS_TIMEOUT = 15.0  # seconds for every path to settle after the agents are ready


def up(
    name: str,
    nodes: int,
    pods: int,
    directory: str | None,
    gossip: bool = True,
    kubernetes: bool = False,
    no_fastdp: Sequence[int] = (),
) -> int:
    """Build a lab and print it; the exit status. ``no_fastdp``: the nodes whose agents run
    with ``--no-fastdp`` (a mixed lab)."""
    if kubernetes:
        from agent.lab.kube import session

        return session.up(name, nodes, pods, directory or default_directory(name))
    try:
        plan = LabPlan(name, nodes, pods, directory or default_directory(name))
        if outside := sorted(set(no_fastdp) - set(range(1, nodes + 1))):
            raise ValueError(f"--no-fastdp-nodes: no node {outside[0]} in {nodes}")
    except ValueError as exc:
        print(f"weave-py lab: {exc}", file=sys.stderr)
        return 2
    lab = Lab(plan, gossip=gossip, node_args={i: ["--no-fastdp"] for i in no_fastdp})
    started = time.monotonic()
    if not _build(lab):
        return 1
    settled = _settle(lab, gossip, no_fastdp)
    print(
        f"lab {name}: {nodes} node(s), {pods} pod(s) each, up in "
        f"{time.monotonic() - started:.1f}s; logs in {plan.directory}\n"
    )
    _print_nodes(lab)
    return _print_matrix(lab) or (0 if settled else 1)


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


def _settle(lab: Lab, gossip: bool, no_fastdp: Sequence[int]) -> bool:
    """Until every pair of gossip peers whose nodes both run the fast path is on it, and every
    other pair on the sleeve (static peers have no records, hence no fast path); False (and
    what differs, on stderr) when they have not within PATHS_TIMEOUT."""
    n = lab.plan.nodes
    fast = {i for i in range(1, n + 1) if gossip and i not in no_fastdp}
    want = {(i, k): "fastdp" if {i, k} <= fast else "sleeve"
            for i in range(1, n + 1) for k in range(1, n + 1) if i != k}  # fmt: skip
    try:
        lab.wait_paths(want, PATHS_TIMEOUT)
    except TimeoutError as exc:
        print(f"weave-py lab: {exc}; logs are in {lab.plan.directory}", file=sys.stderr)
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
        print(_render_paths(lab, i))
    print(status.render_ipam(Report.from_json(lab.report(1))))


def _render_paths(lab: Lab, i: int) -> str:
    """One line: the data path to each peer node, with its reason."""
    paths = sorted(lab.paths(i).items())
    shown = [f"{lab.plan.node_name(k)} {path or '?'}" + (f" ({why})" if why else "")
             for k, (path, why) in paths]  # fmt: skip
    return "paths: " + (", ".join(shown) or "no peers") + "\n"


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
