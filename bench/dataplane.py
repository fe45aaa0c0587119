"""Data-plane benchmark: one TCP stream pod->pod across two nodes, weave-py against the kernel.

``python -m bench.dataplane [--seconds N] [--rounds R] [--name NAME] [--quick]
[--baseline-rev REV] [--encrypted]`` builds three topologies side by side (idle ones cost
nothing):

1. ``weave-py``: a real two-node lab (:class:`agent.lab.lab.Lab`), agents and all;
2. ``vxlan``: the same shape, cross-node traffic over kernel VXLAN (MTU 1450);
3. ``routing``: the same shape, plain kernel routing over the underlay (MTU 1500).

and, with ``--baseline-rev``, a fourth: ``baseline``, the same lab whose agents run the code of
git revision REV (checked out into a temporary ``git worktree`` outside the checkout, removed
afterwards; the agents import it through ``PYTHONPATH`` with ``PYTHONSAFEPATH`` set, which is
checked before the run), and with ``--encrypted`` another: ``encrypted``, the same lab whose
agents hold a password (``--password-file``), so the sleeve seals every frame
(overlay/seal.py); a capture on its underlay during each of its measurements checks that the
sleeve's datagrams are sealed (``encrypted_sealed_share``, which must be 1). It then measures
them in turn, R rounds (the weave labs taking turns at going first, then vxlan and routing), so
that the slow drifts of a shared VM fall on every case alike. The A/B figures are medians over
rounds: ``ab_ratio`` of throughput, weave-py / baseline, and ``ab_cpu_ratio`` of CPU cost,
baseline / weave-py, from both agents' CPU seconds per GB moved (above 1: this code is cheaper;
a cost per byte moves far less with a shared VM's noise than throughput does). Each
measurement: ``iperf3`` from pod 1 (node 1) to pod 2 (node 2) for ``--seconds`` (received rate
and sender retransmits) and the average of a fast ICMP ping. A case's figure is the median of
its rounds. Prints a table, then ONE JSON line with every figure (throughput in Gbit/s, RTT in
µs, ratios weave/vxlan and weave/routing, each round's throughputs, the load average before and
after). The bars it documents: weave-py >= 0.5 x kernel VXLAN; encrypted >= 0.35 x kernel VXLAN
(``encrypted_ratio_vxlan``). Every namespace is named ``wp<name>...`` and removed in
``finally``, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from agent.lab.lab import Lab
from agent.lab.plan import LabPlan
from bench import topology
from bench.topology import Baseline
from overlay.frame import FLAG_AEAD

BAR = 0.5  # weave-py throughput / kernel VXLAN throughput
ENCRYPTED_BAR = 0.35  # encrypted sleeve throughput / kernel VXLAN throughput
SLEEVE_PORT = 6783
NAME = re.compile(r"^[a-z0-9]{1,9}$")  # + one letter per case must fit LabPlan's 10
IPERF_PORT = 5201
RTT = re.compile(r"= [\d.]+/([\d.]+)/")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout


@dataclass(frozen=True)
class Result:
    case: str
    gbps: float
    retransmits: int
    rtt_us: float
    mtu: int
    cpu_s_per_gb: float | None = None  # both agents' CPU seconds per GB moved (weave cases)
    sealed_share: float | None = None  # of the sleeve datagrams captured (encrypted case)


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
    log(f"{c.name}: ping x{pings}, iperf3 {seconds}s")
    rtt = ping_rtt_us(c.pair, pings)
    before = cpu_seconds(c.pids)
    capture = start_capture(c.capture_ns, seconds) if c.capture_ns else None
    gbps, retransmits = iperf(c.pair, seconds)
    cpu = cpu_seconds(c.pids) - before
    per_gb = cpu / (gbps * seconds / 8) if c.pids and gbps > 0 else None
    share = None if capture is None else captured_share(capture)
    return Result(c.name, gbps, retransmits, rtt, c.mtu, per_gb, share)


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


def weave_case(lab: Lab, case: str = "weave-py") -> Case:
    plan = lab.plan
    mtu = int(lab.report(1)["router"]["mtu"])
    pair = Pair(plan.pod_ns(1, 1), plan.pod_ns(2, 1), str(lab.pod_address(2, 1).ip))
    capture_ns = plan.node_ns(2) if case == "encrypted" else ""
    return Case(case, pair, mtu, tuple(lab.pids[i] for i in (1, 2)), capture_ns)


def encrypted_lab(name: str) -> Lab:
    """A bench lab whose agents hold a fresh random password (a file in the lab's directory)."""
    plan = bench_plan(name)
    os.makedirs(plan.directory, exist_ok=True)
    path = os.path.join(plan.directory, "password")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    return Lab(plan, ("--password-file", path))


class OldCodeLab(Lab):
    """A lab whose agents import the code checked out at ``code`` instead of this checkout's:
    ``PYTHONPATH`` puts it first and ``PYTHONSAFEPATH`` keeps ``python -m`` from putting the
    working directory (this checkout) before it."""

    def __init__(self, plan: LabPlan, code: str) -> None:
        super().__init__(plan)
        self.code = code

    def agent_command(self, i: int) -> list[str]:
        return ["env", *code_environment(self.code), *super().agent_command(i)]


def code_environment(code: str) -> list[str]:
    return ["PYTHONSAFEPATH=1", f"PYTHONPATH={code}"]


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[str]:
    """Revision ``rev`` checked out in a temporary git worktree outside the checkout."""
    path = tempfile.mkdtemp(prefix="weave-py-baseline-")
    git = ["git", "-C", ROOT, "worktree"]
    try:
        subprocess.run([*git, "add", "--detach", path, rev], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", path], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def imported_from(code: str) -> str:
    """Where an agent started as OldCodeLab starts it imports ``agent`` and ``overlay`` from;
    raises RuntimeError unless both come from ``code``."""
    script = "import agent, overlay.sleeve; print(agent.__file__, overlay.sleeve.__file__)"
    argv = ["env", *code_environment(code), sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    paths = done.stdout.split()
    if done.returncode != 0 or len(paths) != 2:
        raise RuntimeError(f"baseline code does not import: {done.stderr.strip()}")
    if not all(path.startswith(code + os.sep) for path in paths):
        raise RuntimeError(f"baseline agents would run {paths}, not the code in {code}")
    return os.path.dirname(paths[0])


def run_all(
    name: str,
    seconds: int,
    pings: int,
    rounds: int,
    baseline_code: str | None = None,
    encrypted: bool = False,
) -> dict[str, list[Result]]:
    """Build the topologies, measure them ``rounds`` times in turn, remove them."""
    labs = [(Lab(bench_plan(f"{name}w")), "weave-py")]
    if baseline_code is not None:
        labs.append((OldCodeLab(bench_plan(f"{name}a"), baseline_code), "baseline"))
    if encrypted:
        labs.append((encrypted_lab(f"{name}e"), "encrypted"))
    baselines = [Baseline.named(f"{name}{mode[0]}", mode) for mode in ("vxlan", "routing")]
    built: list[Baseline] = []
    started: list[Lab] = []
    try:
        cases = []
        for lab, case in labs:
            log(f"{case}: lab {lab.plan.name} up")
            started.append(lab)
            lab.up()
            cases.append(weave_case(lab, case))
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


def in_turn(cases: list[Case], k: int, labs: int) -> list[Case]:
    """Round ``k``'s order: the weave labs (this code, the baseline, the encrypted one) take
    turns at going first, so none is always measured first (the first of a round measures a
    little differently on this VM, even with identical code on both sides)."""
    turn = k % labs
    return [*cases[turn:labs], *cases[:turn], *cases[labs:]]


def bench_plan(lab_name: str) -> LabPlan:
    return LabPlan(lab_name, nodes=2, pods=1, directory=f"/tmp/weave-py-bench/{lab_name}")


def median_result(runs: list[Result]) -> Result:
    """The case's figures: median throughput and RTT, the median run's retransmits."""
    middle = sorted(runs, key=lambda r: r.gbps)[len(runs) // 2]
    rtt = statistics.median(r.rtt_us for r in runs)
    return Result(
        middle.case, statistics.median(r.gbps for r in runs), middle.retransmits, rtt, middle.mtu
    )


def summary(runs: dict[str, list[Result]], name: str, seconds: int) -> dict[str, Any]:
    results = {case: median_result(r) for case, r in runs.items()}
    w, v, r = results["weave-py"], results["vxlan"], results["routing"]
    out: dict[str, Any] = {"name": name, "seconds": seconds, "rounds": len(runs["weave-py"])}
    for key, res, case in (
        ("weave", w, "weave-py"),
        ("vxlan", v, "vxlan"),
        ("routing", r, "routing"),
    ):
        out[f"{key}_gbps"] = round(res.gbps, 3)
        out[f"{key}_rtt_us"] = round(res.rtt_us, 1)
        out[f"{key}_retransmits"] = res.retransmits
        out[f"{key}_mtu"] = res.mtu
        out[f"{key}_gbps_rounds"] = [round(x.gbps, 3) for x in runs[case]]
    out["ratio_vxlan"] = round(w.gbps / v.gbps, 3)
    out["ratio_routing"] = round(w.gbps / r.gbps, 3)
    pairs = zip(runs["weave-py"], runs["vxlan"], strict=True)
    out["ratio_vxlan_rounds"] = [round(a.gbps / b.gbps, 3) for a, b in pairs]
    out["bar_ratio_vxlan"] = BAR
    out["meets_bar"] = w.gbps >= BAR * v.gbps
    out["order"] = list(runs)
    out["weave_cpu_s_per_gb"] = cpu_median(runs["weave-py"])
    if "baseline" in runs:
        out |= ab_summary(runs, results["baseline"], v)
    if "encrypted" in runs:
        out |= encrypted_summary(runs["encrypted"], results["encrypted"], v)
    return out


def encrypted_summary(runs: list[Result], e: Result, v: Result) -> dict[str, Any]:
    """The encrypted sleeve's figures beside the plain sleeve's, against kernel VXLAN."""
    shares = [r.sealed_share for r in runs if r.sealed_share is not None]
    return {
        "encrypted_gbps": round(e.gbps, 3),
        "encrypted_rtt_us": round(e.rtt_us, 1),
        "encrypted_retransmits": e.retransmits,
        "encrypted_mtu": e.mtu,
        "encrypted_gbps_rounds": [round(x.gbps, 3) for x in runs],
        "encrypted_ratio_vxlan": round(e.gbps / v.gbps, 3),
        "encrypted_bar_ratio_vxlan": ENCRYPTED_BAR,
        "encrypted_meets_bar": e.gbps >= ENCRYPTED_BAR * v.gbps,
        "encrypted_sealed_share": round(min(shares), 4) if shares else None,
        "encrypted_cpu_s_per_gb": cpu_median(runs),
    }


def ab_summary(runs: dict[str, list[Result]], b: Result, v: Result) -> dict[str, Any]:
    """The interleaved A/B figures: this code (weave-py) against the baseline revision."""
    pairs = list(zip(runs["weave-py"], runs["baseline"], strict=True))
    ab = [x.gbps / y.gbps for x, y in pairs]
    cost = [y.cpu_s_per_gb / x.cpu_s_per_gb for x, y in pairs if x.cpu_s_per_gb and y.cpu_s_per_gb]
    return {
        "baseline_gbps": round(b.gbps, 3),
        "baseline_rtt_us": round(b.rtt_us, 1),
        "baseline_retransmits": b.retransmits,
        "baseline_gbps_rounds": [round(x.gbps, 3) for x in runs["baseline"]],
        "baseline_ratio_vxlan": round(b.gbps / v.gbps, 3),
        "ab_ratio": round(statistics.median(ab), 3),
        "ab_ratio_rounds": [round(x, 3) for x in ab],
        "baseline_cpu_s_per_gb": cpu_median(runs["baseline"]),
        "ab_cpu_ratio": round(statistics.median(cost), 3) if cost else None,
        "ab_cpu_ratio_rounds": [round(x, 3) for x in cost],
    }


def cpu_median(runs: list[Result]) -> float | None:
    """The median of the rounds' CPU seconds per GB (None when not measured)."""
    costs = [r.cpu_s_per_gb for r in runs if r.cpu_s_per_gb is not None]
    return round(statistics.median(costs), 3) if costs else None


def render(results: dict[str, Result]) -> str:
    weave = results["weave-py"]
    lines = [
        f"{'case':<10} {'throughput':>12} {'ratio(weave/x)':>15} {'rtt(avg)':>10} "
        f"{'retr':>7} {'mtu':>5}"
    ]
    for res in results.values():
        ratio = "-" if res is weave else f"{weave.gbps / res.gbps:.2f}"
        lines.append(
            f"{res.case:<10} {res.gbps:>7.2f} Gb/s {ratio:>15} {res.rtt_us:>7.0f} µs "
            f"{res.retransmits:>7} {res.mtu:>5}"
        )
    return "\n".join(lines)


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
        help="also measure agents running this git revision, in turns (A/B: ab_ratio)",
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
                code = stack.enter_context(worktree(args.baseline_rev))
                extra["baseline_rev"] = args.baseline_rev
                extra["baseline_code"] = imported_from(code)
                log(f"baseline: {args.baseline_rev} in {code}")
            runs = run_all(args.name, args.seconds, pings, args.rounds, code, args.encrypted)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; everything removed")
        return 130
    print(render({case: median_result(r) for case, r in runs.items()}))
    print(f"medians of {args.rounds} round(s); bar: weave-py >= {BAR} x kernel VXLAN")
    if args.encrypted:
        print(f"bar: encrypted >= {ENCRYPTED_BAR} x kernel VXLAN")
    extra["loadavg_before"] = [round(x, 2) for x in load]
    extra["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary(runs, args.name, args.seconds) | extra), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
