"""What the hostile-peer tests watch: listeners that tell whether an injected packet reached a
pod or a host, the agents' counters (their Prometheus exposition), their logs, their memory,
and the lab's invariants (``Baseline``: who owns what, the kernel routes, pod addresses)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from agent.lab import probe
from agent.lab.lab import Lab
from overlay.netlink import Netlink
from overlay.netns import run_in_netns

METRICS_PORT = 6782
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


class Listener:
    """A UDP socket bound inside a namespace, collecting every payload that reaches it."""

    def __init__(self, ns: str, port: int, address: str = "0.0.0.0") -> None:
        self.sock = run_in_netns(ns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.setblocking(False)

    def heard(self, wait: float = 1.0) -> list[bytes]:
        """Payloads received so far, after waiting ``wait`` seconds for late ones."""
        time.sleep(wait)
        got = []
        while True:
            try:
                got.append(self.sock.recv(65536))
            except BlockingIOError:
                return got

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def metrics(lab: Lab, i: int) -> dict[str, float]:
    """Node i's ``/metrics``, sample -> value (series with labels as written)."""

    def fetch() -> str:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    out = {}
    for line in run_in_netns(lab.plan.node_ns(i), fetch).splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1)] = float(match.group(2))
    return out


def counters(lab: Lab, i: int) -> dict[str, float]:
    """Node i's counters wherever the agent keeps them: its ``/metrics`` samples, and every
    number of its ``/report`` as ``report:<path>`` (lists by nickname or name)."""
    out = metrics(lab, i)
    _flatten(lab.report(i), "report:", out)
    return out


def _flatten(node: object, path: str, out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{path}{'.' if path[-1] != ':' else ''}{key}", out)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            label = index
            if isinstance(value, dict):
                label = value.get("nickname") or value.get("name") or index
            _flatten(value, f"{path}[{label}]", out)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        out[path] = float(node)


def increased(before: dict[str, float], after: dict[str, float], pattern: str) -> dict[str, float]:
    """Series matching ``pattern`` (a regex) that rose between two scrapes, by how much."""
    rx = re.compile(pattern)
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if rx.search(k) and v > before.get(k, 0.0)
    }


REJECTIONS = r"(drop|reject|refus|invalid|conflict|ignored)"


class Logs:
    """Each node's agent.log from a mark on: what the agents said about an attack."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.marks = {i: self._size(i) for i in range(1, lab.plan.nodes + 1)}

    def _path(self, i: int) -> str:
        return f"{self.lab.plan.node_dir(i)}/agent.log"

    def _size(self, i: int) -> int:
        return os.path.getsize(self._path(i))

    def since(self, i: int) -> str:
        """Node i's log lines written since the mark."""
        with open(self._path(i), errors="replace") as f:
            f.seek(self.marks[i])
            return f.read()

    def wait_for(self, i: int, pattern: str, timeout: float, exclude: str = "") -> str | None:
        """The first line since the mark matching ``pattern`` and not ``exclude`` (regexes),
        within ``timeout``."""
        rx, skip = re.compile(pattern, re.IGNORECASE), re.compile(exclude or r"(?!)")
        deadline = time.monotonic() + timeout
        while True:
            lines = self.since(i).splitlines()
            found = next((ln for ln in lines if rx.search(ln) and not skip.search(ln)), None)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def allocated(lab: Lab, i: int) -> list[str]:
    """The pod addresses node i's agent has persisted (its ipam.json)."""
    path = f"{lab.plan.node_dir(i)}/state/ipam.json"
    with open(path) as f:
        pool = json.load(f).get("pool") or {}
    return [row[2] for row in pool.get("allocations", [])]


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """True as soon as ``condition()`` holds; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


Net = ipaddress.IPv4Network


@dataclass(frozen=True)
class Baseline:
    """The lab as it was before the attacks: what must still hold after each one."""

    owned: dict[int, frozenset[Net]]  # node -> the space it owns
    pods: dict[tuple[int, int], str]  # (node, pod) -> address
    pids: dict[int, int]

    @classmethod
    def capture(cls, lab: Lab) -> Baseline:
        """The lab as it is now."""
        nodes = range(1, lab.plan.nodes + 1)
        owned = {i: frozenset(Net(n) for n in lab.owned(i)) for i in nodes}
        pods = {k: str(a.ip) for k, a in lab.pod_addresses.items()}
        return cls(owned, pods, dict(lab.pids))

    def problems(self, lab: Lab) -> list[str]:
        """Every way the lab no longer matches the baseline (empty: intact)."""
        found = [f"agent of node {i} exited ({lab.procs[i].poll()})"
                 for i in self.pids if lab.procs[i].poll() is not None]  # fmt: skip
        if found:
            return found
        for i in self.owned:
            found += self._node_problems(lab, i)
        found += self._duplicates(lab)
        return found

    def _node_problems(self, lab: Lab, i: int) -> list[str]:
        found = []
        owned = frozenset(Net(n) for n in lab.owned(i))
        if owned != self.owned[i]:
            found.append(
                f"node {i} owns {sorted(map(str, owned))}, had {sorted(map(str, self.owned[i]))}"
            )
        routes = kernel_routes(lab, i)
        active = frozenset(Net(b) for b in lab.report(i)["ipam"]["blocks"])
        remote = (lab.plan.tun, lab.plan.vxlan)  # the sleeve or the fast path
        for k, space in self.owned.items():
            want = (lab.plan.bridge,) if k == i else remote
            for net in active if k == i else space:
                if routes.get(net) not in want:
                    found.append(f"node {i} routes node {k}'s {net} to {routes.get(net)}, "
                                 f"not {' or '.join(want)}")  # fmt: skip
        for peer in lab.report(i)["peers"]:
            number = peer["nickname"][4:]
            k = int(number) if number.isdigit() else 0
            blocks = frozenset(Net(b) for b in peer["blocks"])
            if k in self.owned and blocks != self.owned[k]:
                found.append(f"node {i} routes {sorted(map(str, blocks))} to node {k}")
            elif k not in self.owned and blocks:
                found.append(f"node {i} routes {sorted(map(str, blocks))} to {peer['nickname']!r}")
        return found

    def _duplicates(self, lab: Lab) -> list[str]:
        seen: dict[str, int] = {}
        found = []
        for i in self.owned:
            for address in allocated(lab, i):
                if address in seen:
                    found.append(f"{address} given out by node {seen[address]} and node {i}")
                seen[address] = i
        for (i, _), address in self.pods.items():
            if seen.get(address) != i:
                found.append(f"pod address {address} of node {i} is held by {seen.get(address)}")
        return found


def kernel_routes(lab: Lab, i: int) -> dict[Net, str]:
    """Node i's main-table routes inside the cluster range: destination -> device name."""
    with Netlink(lab.plan.node_ns(i)) as nl:
        names = {link.index: link.name for link in nl.list_links()}
        entries = nl.list_route_entries(protocol=None)
    return {e.destination: names.get(e.index, "?") for e in entries
            if e.destination.subnet_of(Net("10.0.0.0/8"))}  # fmt: skip


def pods_ping(lab: Lab, pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> list[str]:
    """The pairs of pods (node, pod) that cannot ping each other, as "a -> b"."""
    failed = []
    for src, dst in pairs:
        if probe.ping(lab.plan.pod_ns(*src), str(lab.pod_address(*dst).ip), 1.0) is None:
            failed.append(f"{src} -> {dst}")
    return failed
