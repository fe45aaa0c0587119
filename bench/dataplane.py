"""Data-plane benchmark: one TCP stream pod->pod across two nodes, weave-py's two data paths
against the kernel.

``python -m bench.dataplane [--seconds N] [--rounds R] [--name NAME] [--quick]
[--baseline-rev REV] [--encrypted]`` builds these topologies side by side (idle ones cost
nothing):

1. ``weave-py``: a real two-node lab (:class:`agent.lab.lab.Lab`), agents and all, on its
   default path: the kernel fast path (VXLAN on UDP 6784);
2. ``sleeve``: the same lab with every agent ``--no-fastdp``: the userspace sleeve (UDP 6783);
3. ``vxlan``: the same shape, cross-node traffic over kernel VXLAN (MTU 1450);
4. ``routing``: the same shape, plain kernel routing over the underlay (MTU 1500);

with ``--baseline-rev``, ``baseline``: the same lab whose agents run the code of git revision REV
(checked out into a temporary ``git worktree`` outside the checkout, removed afterwards; the
agents import it through ``PYTHONPATH`` with ``PYTHONSAFEPATH`` set, which is checked before the
run), on the sleeve: an older revision has no fast path, and one that has it is started
``--no-fastdp``, so the A/B compares like with like, the ``sleeve`` case against ``baseline``;
and with ``--encrypted``, ``encrypted``: the same lab whose agents hold a password
(``--password-file``), so the sleeve seals every frame (overlay/seal.py; encrypted traffic never
takes the fast path); a capture on its underlay during each of its measurements checks that the
sleeve's datagrams are sealed (``encrypted_sealed_share``, which must be 1).

Before each measurement of an agents' lab, and again after it, both nodes' ``/report`` must
show the other on the path the case is for (``fastdp`` for weave-py; ``sleeve`` for sleeve and
encrypted; ``sleeve`` or none for baseline) with no switch in between; anything else fails the
run. The path node 1 reported goes into the JSON (``paths``, per case and round).

It measures the cases in turn, R rounds (the agents' labs taking turns at going first, then
vxlan and routing), so that the slow drifts of a shared VM fall on every case alike. The A/B
figures are medians over rounds: ``ab_ratio`` of throughput, sleeve / baseline, and
``ab_cpu_ratio`` of CPU cost, baseline / sleeve, from both agents' CPU seconds per GB moved
(above 1: this code is cheaper; a cost per byte moves far less with a shared VM's noise than
throughput does). Each measurement: ``iperf3`` from pod 1 (node 1) to pod 2 (node 2) for
``--seconds`` (received rate and sender retransmits) and the average of a fast ICMP ping. A
case's figure is the median of its rounds. Prints a table, then ONE JSON line with every figure
(:func:`bench.figures.summary`: throughput in Gbit/s, RTT in µs, ratios against vxlan and
routing, each round's figures, the load average before and after). ``weave_*`` and
``ratio_vxlan`` are the default path's, as ``fast_*`` are; ``sleeve_*`` the forced sleeve's.
The bars: fast path >= 0.9 x kernel VXLAN throughput and ping RTT <= kernel VXLAN's + 30 µs
(``fast_meets_bar_ratio_vxlan``, ``fast_meets_bar_rtt_extra_us``); sleeve >= 0.5 x kernel VXLAN
(``sleeve_meets_bar_ratio_vxlan``); encrypted >= 0.35 x kernel VXLAN (``encrypted_meets_bar``).
Every namespace is named ``wp<name>...`` and removed in ``finally``, also on failure, Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from bench import figures, revision, topology
from bench.figures import Result
from bench.revision import ROOT, SLEEVE_ARGS, OldCodeLab, has_fastdp
from bench.topology import Baseline
from overlay.frame import FLAG_AEAD

SLEEVE_PORT = 6783
NAME = re.compile(r"^[a-z0-9]{1,9}$")  # + one letter per case must fit LabPlan's 10
IPERF_PORT = 5201
RTT = re.compile(r"= [\d.]+/([\d.]+)/")


@dataclass(frozen=True)
class Pair:
    """Where to measure: client namespace, server namespace and the server pod's address."""

    client_ns: str
    server_ns: str
    server_ip: str


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def _listening(pid: int, port: int) -> bool:
    """True once process ``pid`` (in its own netns) has a TCP socket listening on ``port``."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            return False
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _start_server(ns: str, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        in_ns(ns, "iperf3", "-s", "-1", "-p", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _listening(server.pid, port):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            raise RuntimeError(f"iperf3 server in {ns} did not start")
        time.sleep(0.02)
    return server


def iperf(pair: Pair, seconds: int, port: int = IPERF_PORT) -> tuple[float, int]:
    """(received Gbit/s, sender retransmits) of one TCP stream client -> server."""
    server = _start_server(pair.server_ns, port)
    try:
        argv = ["iperf3", "-c", pair.server_ip, "-p", str(port), "-t", str(seconds), "-J"]
        done = subprocess.run(
            in_ns(pair.client_ns, *argv), capture_output=True, text=True, timeout=seconds + 30
        )
        report: dict[str, Any] = json.loads(done.stdout or "{}")
        if done.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 failed: {report.get('error') or done.stderr.strip()}")
        end = report["end"]
        return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"]["retransmits"])
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
        server.wait()


def ping_rtt_us(pair: Pair, count: int) -> float:
    """Average ICMP round trip in µs over ``count`` pings 10 ms apart (after a warm-up)."""
    base = ["ping", "-n", "-q", "-i", "0.01", "-W", "1"]
    warm = subprocess.run(
        in_ns(pair.client_ns, *base, "-c", "5", pair.server_ip), capture_output=True, timeout=30
    )
    if warm.returncode != 0:
        raise RuntimeError(f"{pair.client_ns} cannot ping {pair.server_ip}")
    done = subprocess.run(
        in_ns(pair.client_ns, *base, "-c", str(count), pair.server_ip),
        capture_output=True,
        text=True,
        timeout=count + 30,
    )
    found = RTT.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"ping {pair.server_ip} failed: {done.stdout}{done.stderr}")
    return float(found.group(1)) * 1000


def measure(c: Case, seconds: int, pings: int) -> Result:
    """One measurement of case ``c``, between two readings of its agents' paths that must both
    show the path the case is for, with no switch in between."""
    log(f"{c.name}: ping x{pings}, iperf3 {seconds}s")
    seen = checked_paths(c)
    rtt = ping_rtt_us(c.pair, pings)
    before = cpu_seconds(c.pids)
    capture = start_capture(c.capture_ns, seconds) if c.capture_ns else None
    gbps, retransmits = iperf(c.pair, seconds)
    cpu = cpu_seconds(c.pids) - before
    per_gb = cpu / (gbps * seconds / 8) if c.pids and gbps > 0 else None
    share = None if capture is None else captured_share(capture)
    after = checked_paths(c)
    if after != seen:
        raise RuntimeError(f"{c.name}: the path changed during the measurement: {seen} -> {after}")
    path = seen[0].path if seen else None
    return Result(c.name, gbps, retransmits, rtt, c.mtu, per_gb, share, path)


def start_capture(ns: str, seconds: int) -> subprocess.Popen[str]:
    """``capture`` run in namespace ``ns`` for about ``seconds`` (this checkout's code)."""
    script = f"import bench.dataplane as d; d.capture({max(1, seconds - 1)})"
    return subprocess.Popen(
        in_ns(ns, sys.executable, "-c", script), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def captured_share(capture: subprocess.Popen[str]) -> float:
    """The share of sealed sleeve datagrams a capture saw; RuntimeError when it saw none."""
    out, _ = capture.communicate(timeout=60)
    counts = json.loads(out or "{}")
    total = counts.get("sealed", 0) + counts.get("plain", 0)
    if capture.returncode != 0 or total == 0:
        raise RuntimeError(f"the underlay capture saw no sleeve datagram ({counts})")
    return float(counts["sealed"]) / total


def capture(seconds: float) -> None:
    """Count the sleeve's datagrams (UDP to SLEEVE_PORT, first fragments) on every interface
    of this namespace for ``seconds``, sealed or plain; print the counts as JSON."""
    counts = {"sealed": 0, "plain": 0}
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)) as sock:
        sock.settimeout(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                packet = sock.recv(64)
            except TimeoutError:
                continue
            ihl = (packet[0] & 0x0F) * 4
            if len(packet) < ihl + 11 or packet[9] != socket.IPPROTO_UDP:
                continue
            first = int.from_bytes(packet[6:8], "big") & 0x1FFF == 0
            if first and int.from_bytes(packet[ihl + 2 : ihl + 4], "big") == SLEEVE_PORT:
                counts["sealed" if packet[ihl + 10] & FLAG_AEAD else "plain"] += 1
    print(json.dumps(counts), flush=True)


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU time the processes ``pids`` have used so far, in seconds: a cost
    per byte that a busy VM's scheduling noise moves far less than throughput."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def pair_of(plan: LabPlan) -> Pair:
    """The baselines' pods: fixed addresses from the plan (weave-py's come from its IPAM)."""
    return Pair(plan.pod_ns(1, 1), plan.pod_ns(2, 1), str(plan.pod_address(2, 1).ip))


@dataclass(frozen=True)
class Case:
    name: str
    pair: Pair
    mtu: int
    pids: tuple[int, ...] = ()  # the agents whose CPU time a measurement counts
    capture_ns: str = ""  # where the sleeve's datagrams are checked for sealing, if anywhere
    lab: Lab | None = None  # whose agents' reports say which path the pair is on
    paths: tuple[str | None, ...] = ()  # the paths this case may measure (None: not reported)


EXPECTED_PATHS: dict[str, tuple[str | None, ...]] = {
    "weave-py": ("fastdp",),
    "sleeve": ("sleeve",),
    "encrypted": ("sleeve",),
    "baseline": ("sleeve", None),  # a revision before the fast path reports none
}


def weave_case(lab: Lab, case: str = "weave-py") -> Case:
    plan = lab.plan
    mtu = int(lab.report(1)["router"]["mtu"])
    pair = Pair(plan.pod_ns(1, 1), plan.pod_ns(2, 1), str(lab.pod_address(2, 1).ip))
    capture_ns = plan.node_ns(2) if case == "encrypted" else ""
    pids = tuple(lab.pids[i] for i in (1, 2))
    return Case(case, pair, mtu, pids, capture_ns, lab, EXPECTED_PATHS[case])


@dataclass(frozen=True)
class PeerPath:
    """What one node's /report says of its path to a peer."""

    node: int
    peer: str  # the peer's nickname
    path: str | None  # None: the agent reports no path (a revision before the fast path)
    switches: int
    reason: str = field(default="", compare=False)


def peer_path(report: dict[str, Any], node: int, nickname: str) -> PeerPath:
    """Node ``node``'s path to the peer called ``nickname``, from its /report."""
    for peer in report.get("peers", []):
        if peer.get("nickname") == nickname:
            switches = int(peer.get("path_switches") or 0)
            return PeerPath(node, nickname, peer.get("path"), switches, peer.get("path_reason", ""))
    raise RuntimeError(f"node {node} reports no peer {nickname}")


def checked_paths(c: Case) -> tuple[PeerPath, ...]:
    """Node 1's path to node 2 and node 2's to node 1 (a measurement's two directions);
    RuntimeError unless both are among those case ``c`` is for. Empty for kernel baselines."""
    if c.lab is None:
        return ()
    plan = c.lab.plan
    seen = tuple(peer_path(c.lab.report(i), i, plan.node_name(3 - i)) for i in (1, 2))
    for p in seen:
        if p.path not in c.paths:
            wanted = " or ".join(str(x) for x in c.paths)
            raise RuntimeError(
                f"{c.name}: node {p.node} reports path {p.path} to {p.peer}, not {wanted} "
                f"({p.reason or 'no reason given'})"
            )
    return seen


def wait_paths(c: Case, timeout: float) -> tuple[PeerPath, ...]:
    """Until both nodes report the path case ``c`` is for (a fast path is taken after a few
    answered probes); RuntimeError with what they said last after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return checked_paths(c)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def encrypted_lab(name: str) -> Lab:
    """A bench lab whose agents hold a fresh random password (a file in the lab's directory)."""
    plan = bench_plan(name)
    os.makedirs(plan.directory, exist_ok=True)
    path = os.path.join(plan.directory, "password")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    return Lab(plan, ("--password-file", path))


def run_all(
    name: str,
    seconds: int,
    pings: int,
    rounds: int,
    baseline_code: str | None = None,
    encrypted: bool = False,
) -> dict[str, list[Result]]:
    """Build the topologies, measure them ``rounds`` times in turn, remove them."""
    labs = [
        (Lab(bench_plan(f"{name}w")), "weave-py"),
        (Lab(bench_plan(f"{name}s"), SLEEVE_ARGS), "sleeve"),
    ]
    if baseline_code is not None:
        old = OldCodeLab(bench_plan(f"{name}a"), baseline_code, has_fastdp(baseline_code))
        labs.append((old, "baseline"))
    if encrypted:
        labs.append((encrypted_lab(f"{name}e"), "encrypted"))
    baselines = [Baseline.named(f"{name}{mode[0]}", mode) for mode in ("vxlan", "routing")]
    built: list[Baseline] = []
    started: list[Lab] = []
    try:
        cases = []
        for lab, case in labs:
            started.append(lab)
            cases.append(lab_up(lab, case))
        for b in baselines:
            log(f"{b.mode}: build {b.plan.prefix}")
            built.append(b)
            topology.build(b)
            cases.append(Case(b.mode, pair_of(b.plan), b.mtu))
        results: dict[str, list[Result]] = {c.name: [] for c in cases}
        for k in range(rounds):
            log(f"round {k + 1}/{rounds}")
            for c in in_turn(cases, k, len(labs)):
                results[c.name].append(measure(c, seconds, pings))
        return results
    finally:
        for b in reversed(built):
            topology.teardown(b)
        for lab in reversed(started):
            lab.down()


PATH_TIMEOUT = 20.0  # seconds for a new lab's agents to settle on the path under test


def lab_up(lab: Lab, case: str) -> Case:
    """Start ``lab`` and wait until its nodes are on the path ``case`` is for."""
    log(f"{case}: lab {lab.plan.name} up {' '.join(lab.agent_args)}".rstrip())
    lab.up()
    c = weave_case(lab, case)
    seen = wait_paths(c, PATH_TIMEOUT)
    log(f"{case}: paths " + ", ".join(f"node {p.node} -> {p.peer}: {p.path}" for p in seen))
    return c


def in_turn(cases: list[Case], k: int, labs: int) -> list[Case]:
    """Round ``k``'s order: the agents' labs (fast path, sleeve, baseline, encrypted) take
    turns at going first, so none is always measured first (the first of a round measures a
    little differently on this VM, even with identical code on both sides)."""
    turn = k % labs
    return [*cases[turn:labs], *cases[:turn], *cases[labs:]]


def bench_plan(lab_name: str) -> LabPlan:
    return LabPlan(lab_name, nodes=2, pods=1, directory=f"/tmp/weave-py-bench/{lab_name}")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


MAIN_PID = os.getpid()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Unwind (running every ``finally``) in our process only: pyroute2 forks helpers that
    inherit this handler (and are ended with SIGTERM); they must just die."""
    if os.getpid() != MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.dataplane", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 duration per run (10)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per case (3)")
    ap.add_argument("--name", default=None, help="unique part of names, 1-9 of [a-z0-9]")
    ap.add_argument(
        "--quick", action="store_true", help="short run (1 round, 2 s, 20 pings): smoke test"
    )
    ap.add_argument(
        "--encrypted",
        action="store_true",
        help="also measure a lab whose agents hold a password (sealed sleeve)",
    )
    ap.add_argument(
        "--baseline-rev",
        default=None,
        help="also measure agents running this git revision on the sleeve, in turns "
        "(A/B against the sleeve case: ab_ratio)",
    )
    args = ap.parse_args(argv)
    args.name = args.name or "b" + secrets.token_hex(2)
    if not NAME.match(args.name):
        ap.error(f"--name {args.name!r}: use 1-9 lowercase letters and digits")
    if args.quick:
        args.seconds, args.rounds = 2, 1
    if args.seconds < 1 or args.rounds < 1:
        ap.error("--seconds and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pings = 20 if args.quick else 50
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    log(f"run wp{args.name}: {args.rounds} x {args.seconds}s per case, in turns")
    load = os.getloadavg()
    extra: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            code = None
            if args.baseline_rev:
                code = stack.enter_context(revision.worktree(args.baseline_rev))
                extra["baseline_rev"] = args.baseline_rev
                extra["baseline_code"] = revision.imported_from(code)
                log(f"baseline: {args.baseline_rev} in {code}")
            runs = run_all(args.name, args.seconds, pings, args.rounds, code, args.encrypted)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; everything removed")
        return 130
    print(figures.render({case: figures.median_result(r) for case, r in runs.items()}))
    print(f"medians of {args.rounds} round(s)")
    print("\n".join(figures.bars(args.encrypted)))
    extra["loadavg_before"] = [round(x, 2) for x in load]
    extra["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures.summary(runs, args.name, args.seconds) | extra), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
