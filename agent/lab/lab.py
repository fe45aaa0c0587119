"""Build, run and tear down a lab.

Topology: an underlay namespace holding a bridge, one namespace per node wired to it by a veth
pair (node i = 192.168.1.(6+i)), a real agent process per node, and pods (namespaces) attached
to each node's bridge with addresses the node's agent allocates (gossip IPAM: no node is given
a block; static mode: fixed blocks 10.244.i.0/24). Nothing is created in the caller's own
namespace. Everything the lab made is written to ``<directory>/lab.json`` so ``down`` removes
exactly that, also after a crash. The parts are rooms of their own (agent/lab/__init__.py
lists them); ``Lab`` puts them together and waits for the agents through their API.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent import client
from agent.lab import agents, cni, state
from agent.lab.agents import Agents
from agent.lab.plan import LabPlan
from agent.lab.underlay import Underlay
from overlay import netlink


class Lab:
    """One lab: its underlay, an agent per node and the pods, built and removed as a whole."""

    def __init__(
        self,
        plan: LabPlan,
        agent_args: tuple[str, ...] = (),
        gossip: bool = True,
        line: bool = False,
        node_args: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        self.plan = plan
        self.agent_args = agent_args
        # per node, after agent_args (e.g. {3: ["--no-fastdp"]}); a restart reads it again
        self.node_args = {i: tuple(args) for i, args in (node_args or {}).items()}
        self.gossip = gossip or line  # agents find each other from one seed each; else static
        # line: two underlay segments, node 1 and node 3 on one each, node 2 on both, so 1 and
        # 3 reach each other only through node 2's agent (3 nodes exactly)
        self.line = line
        self.underlay = Underlay(plan, line)
        self.agents = Agents(plan)
        self.pod_addresses: dict[tuple[int, int], ipaddress.IPv4Interface] = {}

    @property
    def pids(self) -> dict[int, int]:
        """Node -> pid of each running agent."""
        return self.agents.pids

    @property
    def procs(self) -> dict[int, subprocess.Popen[bytes]]:
        """Node -> process handle of each agent this process started."""
        return self.agents.procs

    # -- building ----------------------------------------------------------------------------

    def up(self, timeout: float = 20.0, start: int | None = None) -> None:
        """Create namespaces, start the agents (of the first ``start`` nodes; default all),
        attach their pods. Raises on any failure."""
        p = self.plan
        os.makedirs(p.directory, exist_ok=True)
        self._save()
        self.underlay.build()
        for i in range(1, p.nodes + 1):
            os.makedirs(p.node_dir(i), exist_ok=True)
            cni.install(p, i)
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

    def address(self, i: int) -> ipaddress.IPv4Interface:
        """Node i's underlay address (node 3 of a line lab sits on the second segment)."""
        return self.underlay.address(i)

    def set_uplinks(self, i: int, up: bool) -> None:
        """Cut (or restore) node i's underlay links, leaving its agent running."""
        self.underlay.set_uplinks(i, up)

    # -- agents ------------------------------------------------------------------------------

    def agent_command(self, i: int) -> list[str]:
        """The command line node i's agent runs with."""
        extra = (*self.agent_args, *self.node_args.get(i, ()))
        return agents.command(self.underlay, i, self.gossip, extra)

    def start_agent(self, i: int) -> int:
        pid = self.agents.start(i, self.agent_command(i))
        self._save()
        return pid

    def stop_agent(self, i: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal node i's agent and wait for it; its exit status (None if it was not ours)."""
        try:
            return self.agents.stop(i, sig, timeout)
        finally:
            self._save()

    def wait_ready(self, timeout: float) -> None:
        """Until every agent answers and has a working data path to every peer: established
        directly, or relayed through a next hop."""
        deadline = time.monotonic() + timeout
        running = sorted(self.pids)
        for i in running:
            while not self._ready(i, len(running) - 1):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"node {i} not ready within {timeout}s; see "
                        f"{self.plan.node_dir(i)}/agent.log"
                    )
                time.sleep(0.05)

    def _ready(self, i: int, peers: int) -> bool:
        status = self.agents.exit_status(i)
        if status is not None:
            log_path = f"{self.plan.node_dir(i)}/agent.log"
            raise RuntimeError(f"agent of node {i} exited with status {status}; see {log_path}")
        try:
            snap = self.report(i)
            return bool(
                snap["ready"]
                and len(snap["peers"]) == peers
                and all(x["state"] == "established" or x.get("via") for x in snap["peers"])
            )
        except OSError:
            return False

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

    def routed_blocks(self, i: int) -> set[str]:
        """The remote space node i's agent routes (into the TUN or via a VTEP), without the
        /32 routes to the VTEPs themselves."""
        vteps = {f"{v}/32" for v in self._vteps(i)}
        return {r["destination"] for r in self.report(i)["routes"]} - vteps

    def _vteps(self, i: int) -> set[str]:
        """The VTEP addresses node i routes to (the /32 routes on the VXLAN device)."""
        return {
            r["destination"].removesuffix("/32")
            for r in self.report(i)["routes"]
            if r["device"] == self.plan.vxlan and r["destination"].endswith("/32")
        }

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

    def paths(self, i: int) -> dict[int, tuple[str, str]]:
        """Node i's data path to each peer node, as its ``/report`` shows it: node ->
        (path, reason); path "" when the agent reports none."""
        nodes = {self.plan.node_name(k): k for k in range(1, self.plan.nodes + 1)}
        return {nodes[x["nickname"]]: (x.get("path") or "", x.get("path_reason") or "")
                for x in self.report(i)["peers"] if x["nickname"] in nodes}  # fmt: skip

    def wait_paths(self, want: Mapping[tuple[int, int], str], timeout: float) -> None:
        """Until node i reports path ``want[i, k]`` ("fastdp" or "sleeve") towards node k and
        its kernel routes node k's space through that path's device, for every pair in
        ``want`` (a switch is reported before the next reconcile puts it in the kernel);
        TimeoutError naming the pairs that differ."""
        deadline = time.monotonic() + timeout
        while wrong := self._paths_differing(want):
            if time.monotonic() > deadline:
                raise TimeoutError(f"paths within {timeout}s: want {dict(want)}, differ {wrong}")
            time.sleep(0.1)

    def _paths_differing(self, want: Mapping[tuple[int, int], str]) -> dict[tuple[int, int], str]:
        try:
            seen = {i: self.paths(i) for i in sorted({i for i, _ in want})}
            found = {pair: seen[pair[0]].get(pair[1], ("none", ""))[0] for pair in want}
            wrong = {pair: path for pair, path in found.items() if path != want[pair]}
            return wrong or self._routes_differing(want)
        except OSError as exc:
            return {pair: f"no report ({exc})" for pair in want}

    def _routes_differing(self, want: Mapping[tuple[int, int], str]) -> dict[tuple[int, int], str]:
        """The pairs whose kernel routes do not yet carry node k's space by ``want[i, k]``."""
        device = {"fastdp": self.plan.vxlan, "sleeve": self.plan.tun}
        owned = {k: self.owned(k) for k in sorted({k for _, k in want})}
        routes = {
            i: {r["destination"]: r["device"] for r in self.report(i)["routes"]}
            for i in sorted({i for i, _ in want})
        }
        return {
            (i, k): f"{path} chosen, routed by {sorted({str(routes[i].get(b)) for b in owned[k]})}"
            for (i, k), path in want.items()
            if any(routes[i].get(b) != device.get(path) for b in owned[k])
        }

    # -- pods --------------------------------------------------------------------------------

    def add_pod(self, i: int, j: int) -> ipaddress.IPv4Interface:
        """A pod namespace on node i, attached through the node's CNI plugin (ADD), as a
        container runtime does it."""
        address = cni.add_pod(self.plan, i, j)
        self.pod_addresses[i, j] = address
        self._save()
        return address

    def pod_address(self, i: int, j: int) -> ipaddress.IPv4Interface:
        return self.pod_addresses[i, j]

    def pod_ips(self) -> dict[str, str]:
        """Pod namespace -> address, for every pod the lab attached."""
        pods = sorted(self.pod_addresses.items())
        return {self.plan.pod_ns(i, j): str(a.ip) for (i, j), a in pods}

    # -- tearing down ------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop our agents, delete our namespaces and files. Safe to repeat."""
        p = self.plan
        self.agents.stop_all(state.saved_pids(p.directory))
        removed = [ns for ns in netlink.list_netns() if ns.startswith(p.prefix + "-")]
        for ns in removed:
            netlink.remove_netns(ns)
        if os.path.isdir(p.directory):
            subprocess.run(["rm", "-rf", "--one-file-system", p.directory], check=False)
        return removed

    def _save(self) -> None:
        state.save(self.plan, self.pids, self.pod_addresses)
