"""Build, run and tear down a lab.

Topology: an underlay namespace holding a bridge, one namespace per node wired to it by a veth
pair (node i = 192.168.1.(6+i)), a real agent process per node, and pods (namespaces) attached
to each node's bridge with addresses the node's agent allocates (gossip IPAM: no node is given
a block; static mode: fixed blocks 10.244.i.0/24). Nothing is created in the caller's own
namespace. Everything the lab made is written to ``<directory>/lab.json`` so ``down`` removes
exactly that, also after a crash.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from agent import client
from agent.lab import cni
from agent.lab.plan import POD_RANGE, LabPlan
from overlay import netlink
from overlay.netlink import Netlink

log = logging.getLogger("weave-py.lab")
DEFAULT_ROOT = "/tmp/weave-py-lab"
SECOND_ADDRESS = ipaddress.IPv4Interface("192.168.2.8/24")  # node 2 on segment B
THIRD_ADDRESS = ipaddress.IPv4Interface("192.168.2.9/24")  # node 3, on segment B only


def default_directory(name: str) -> str:
    return f"{DEFAULT_ROOT}/{name}"


class Lab:
    def __init__(
        self,
        plan: LabPlan,
        agent_args: tuple[str, ...] = (),
        gossip: bool = True,
        line: bool = False,
    ) -> None:
        self.plan = plan
        self.agent_args = agent_args
        self.gossip = gossip or line  # agents find each other from one seed each; else static
        # line: two underlay segments, node 1 and node 3 on one each, node 2 on both, so 1 and
        # 3 reach each other only through node 2's agent (3 nodes exactly)
        self.line = line
        if line and plan.nodes != 3:
            raise ValueError("a line lab has exactly 3 nodes")
        self.pids: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.pod_addresses: dict[tuple[int, int], ipaddress.IPv4Interface] = {}

    # -- building ----------------------------------------------------------------------------

    def up(self, timeout: float = 20.0, start: int | None = None) -> None:
        """Create namespaces, start the agents (of the first ``start`` nodes; default all),
        attach their pods. Raises on any failure."""
        p = self.plan
        os.makedirs(p.directory, exist_ok=True)
        self._save()
        netlink.ensure_netns(p.underlay_ns)
        with Netlink(p.underlay_ns) as ul:
            for bridge in [p.underlay_bridge] + ([self.segment_b] if self.line else []):
                ul.ensure_bridge(bridge)
                ul.set_link(bridge, up=True)
            for i in range(1, p.nodes + 1):
                self._add_node(ul, i)
        for i in range(1, (start or p.nodes) + 1):
            self.start_agent(i)
        self.wait_ready(timeout)
        if self.gossip:
            self.wait_space(timeout)
        for i, j in p.all_pods():
            if i in self.pids:
                self.add_pod(i, j)

    def join(self, i: int, timeout: float = 20.0) -> None:
        """Start node i's agent in a running lab (a node joining later) and attach its pods."""
        self.start_agent(i)
        self.wait_ready(timeout)
        self.wait_space(timeout, self.pids)
        for j in range(1, self.plan.pods + 1):
            self.add_pod(i, j)

    def _add_node(self, ul: Netlink, i: int) -> None:
        if self.line and i == 3:
            wire_node(self.plan, ul, 3, self.segment_b, self.address(3))
        else:
            wire_node(self.plan, ul, i)
        if self.line and i == 2:
            wire_node(self.plan, ul, 2, self.segment_b, SECOND_ADDRESS, suffix="b")
        os.makedirs(self.plan.node_dir(i), exist_ok=True)
        cni.install(self.plan, i)

    @property
    def segment_b(self) -> str:
        return f"{self.plan.prefix}ul2"

    def address(self, i: int) -> ipaddress.IPv4Interface:
        """Node i's underlay address (node 3 of a line lab sits on the second segment)."""
        if self.line and i == 3:
            return THIRD_ADDRESS
        return self.plan.node_address(i)

    def set_uplinks(self, i: int, up: bool) -> None:
        """Cut (or restore) node i's underlay links, leaving its agent running."""
        with Netlink(self.plan.node_ns(i)) as nl:
            for link in nl.list_links():
                if link.name.startswith(f"{self.plan.prefix}e"):
                    nl.set_link(link.name, up=up)

    def agent_command(self, i: int) -> list[str]:
        p = self.plan
        cmd = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--netns",
            p.node_ns(i),
            "--node-name",
            p.node_name(i),
            "--ipalloc-range",
            str(POD_RANGE),
            "--bridge",
            p.bridge,
            "--tun",
            p.tun,
            "--socket",
            p.socket_path(i),
            "--cni-socket",
            p.cni_socket(i),
            "--state-dir",
            f"{p.node_dir(i)}/state",
        ]
        if self.gossip:
            seed = i - 1 if i > 1 else 2
            cmd += ["--advertise-address", str(self.address(i).ip)]
            cmd += ["--ipalloc-init", f"consensus={p.nodes}"]
            if seed <= p.nodes:
                seed_ip = SECOND_ADDRESS.ip if self.line and i == 3 else self.address(seed).ip
                cmd += ["--seed", str(seed_ip)]
            return cmd + list(self.agent_args)
        cmd += ["--pod-block", str(p.block(i))]  # static peers: fixed blocks (kube-style)
        for k in range(1, p.nodes + 1):
            if k != i:
                peer = f"{p.node_name(k)}@{p.node_address(k).ip}=" + str(p.block(k))
                cmd += ["--peer", peer]
        return cmd + list(self.agent_args)

    def start_agent(self, i: int) -> int:
        log_path = f"{self.plan.node_dir(i)}/agent.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                self.agent_command(i),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=_source_root(),
            )
        self.procs[i] = proc
        self.pids[i] = proc.pid
        self._save()
        return proc.pid

    def stop_agent(self, i: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal node i's agent and wait for it; its exit status (None if it was not ours)."""
        pid = self.pids.pop(i, None)
        self._save()
        proc = self.procs.pop(i, None)
        if pid is None or not _is_our_agent(pid, self.plan.node_ns(i)):
            return None
        os.kill(pid, sig)
        if proc is not None:
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # never leave an agent behind, even one that hangs on stop
                proc.wait()
                raise
        _wait_gone(pid, timeout)
        return None

    def wait_ready(self, timeout: float) -> None:
        """Until every agent answers and has a working data path to every peer: established
        directly, or relayed through a next hop."""
        deadline = time.monotonic() + timeout
        running = sorted(self.pids)
        for i in running:
            while True:
                proc = self.procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"agent of node {i} exited with status {proc.returncode}; "
                        f"see {self.plan.node_dir(i)}/agent.log"
                    )
                try:
                    snap = self.report(i)
                    peers = snap["peers"]
                    if (
                        snap["ready"]
                        and len(peers) == len(running) - 1
                        and all(x["state"] == "established" or x.get("via") for x in peers)
                    ):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"node {i} not ready within {timeout}s; see "
                        f"{self.plan.node_dir(i)}/agent.log"
                    )
                time.sleep(0.05)

    def report(self, i: int) -> dict[str, Any]:
        return client.report(socket_path=self.plan.socket_path(i), timeout=2.0)

    def allocate(self, i: int, key: str, ifname: str = "eth0") -> dict[str, Any]:
        """Ask node i's agent for a pod address, as the CNI plugin does; raises OSError with
        the agent's error."""
        path = f"/ip/{urllib.parse.quote(key, safe='')}?ifname={ifname}"
        code, body = client.request("POST", path, socket_path=self.plan.socket_path(i),
                                    timeout=30.0)  # fmt: skip
        answer: dict[str, Any] = json.loads(body) if body.startswith("{") else {"error": body}
        if code != 200:
            raise OSError(f"node {i}: address for {key}: {answer.get('error', body).strip()}")
        return answer

    def add_pod(self, i: int, j: int) -> ipaddress.IPv4Interface:
        """A pod namespace on node i, attached through the node's CNI plugin (ADD), as a
        container runtime does it."""
        p = self.plan
        ns = p.pod_ns(i, j)
        netlink.ensure_netns(ns)
        done = cni.call(p, i, "ADD", container_id=ns, netns=f"{netlink.NETNS_DIR}/{ns}")
        if done.returncode != 0:
            raise OSError(f"node {i}: CNI ADD of {ns}: {done.stdout.strip() or done.stderr}")
        with Netlink(ns) as inside:  # the runtime's part (CNI's loopback plugin)
            inside.set_link("lo", up=True)
        result = json.loads(done.stdout)
        address = ipaddress.IPv4Interface(result["ips"][0]["address"])
        self.pod_addresses[i, j] = address
        self._save()
        return address

    def pod_address(self, i: int, j: int) -> ipaddress.IPv4Interface:
        return self.pod_addresses[i, j]

    def pod_ips(self) -> dict[str, str]:
        """Pod namespace -> address, for every pod the lab attached."""
        pods = sorted(self.pod_addresses.items())
        return {self.plan.pod_ns(i, j): str(a.ip) for (i, j), a in pods}

    def owned(self, i: int) -> list[str]:
        """The space node i's agent owns, as it reports it."""
        owners = self.report(i)["ipam"]["owners"]
        return [n for o in owners if o["local"] for n in o["owned"]]

    def wait_space(self, timeout: float, nodes: Iterable[int] | None = None) -> None:
        """Until each node owns space and routes every other node's space through the TUN."""
        nodes = sorted(nodes or self.pids)
        deadline = time.monotonic() + timeout
        while True:
            try:
                owned = {i: self.owned(i) for i in nodes}
                routed = {i: {r["destination"] for r in self.report(i)["routes"]} for i in nodes}
                if all(owned.values()) and all(
                    set(owned[k]) <= routed[i] for i in nodes for k in nodes if k != i
                ):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nodes {nodes} did not all obtain and route address space within "
                    f"{timeout}s; see the agent logs in {self.plan.directory}"
                )
            time.sleep(0.1)

    # -- tearing down ------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop our agents, delete our namespaces and files. Safe to repeat."""
        p = self.plan
        saved = _load(p.directory)
        pids = {int(k): v for k, v in saved.get("pids", {}).items()}
        pids.update(self.pids)
        for i, pid in pids.items():
            if _is_our_agent(pid, p.node_ns(i)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for i, pid in pids.items():
            proc = self.procs.get(i)
            if proc is not None:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            elif not _wait_gone(pid, 5) and _is_our_agent(pid, p.node_ns(i)):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        self.procs.clear()
        removed = []
        for ns in netlink.list_netns():
            if ns.startswith(p.prefix + "-"):
                netlink.remove_netns(ns)
                removed.append(ns)
        if os.path.isdir(p.directory):
            subprocess.run(["rm", "-rf", "--one-file-system", p.directory], check=False)
        return removed

    def _save(self) -> None:
        p = self.plan
        addresses = {f"{i},{j}": str(a) for (i, j), a in self.pod_addresses.items()}
        state = {"name": p.name, "nodes": p.nodes, "pods": p.pods, "pids": self.pids,
                 "pod_addresses": addresses}  # fmt: skip
        tmp = f"{p.directory}/lab.json.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, f"{p.directory}/lab.json")


def wire_node(
    plan: LabPlan,
    ul: Netlink,
    i: int,
    bridge: str | None = None,
    address: ipaddress.IPv4Interface | None = None,
    suffix: str = "",
) -> None:
    """Node i's namespace, plugged into an underlay bridge with an address (no agent)."""
    ns = plan.node_ns(i)
    netlink.ensure_netns(ns)
    outer, inner = (name + suffix for name in plan.node_uplink(i))
    ul.ensure_veth(outer, inner, ns)
    ul.set_link(outer, master=bridge or plan.underlay_bridge, up=True)
    with Netlink(ns) as nl:
        nl.set_link("lo", up=True)
        nl.set_link(inner, up=True)
        nl.ensure_address(inner, address or plan.node_address(i))


def _load(directory: str) -> dict[str, Any]:
    try:
        with open(f"{directory}/lab.json") as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return {}


def load_plan(name: str, directory: str | None = None) -> LabPlan:
    directory = directory or default_directory(name)
    saved = _load(directory)
    return LabPlan(name, int(saved.get("nodes", 1)), int(saved.get("pods", 0)), directory)


def _is_our_agent(pid: int, node_ns: str) -> bool:
    """True only for a live agent process this lab started for ``node_ns`` (never a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"agent" in argv and node_ns.encode() in argv


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    return False


def _source_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
