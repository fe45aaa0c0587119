"""A real Kubernetes cluster on this machine: the cluster lab's building and tearing down.

The underlay and its namespaces (agent/lab/kube/underlay.py), the PKI and the control plane
(pki.py, control.py) in ``wp<name>-cp``, and per node a holder of its namespaces, containerd
with the lab's images imported, kubelet and kube-proxy (node.py). The control plane and the
nodes start at the same time (kubelets wait for the apiserver on their own). Every process is
written to the state file as soon as it runs, so ``down`` (also from another process, after a
crash) stops exactly those: kubelets and kube-proxies first, then every container task, then
containerd and its shims, the holders (the last processes in the nodes' mount namespaces, whose
mounts go with them), the control plane; then the namespaces and the lab's directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.lab.kube import processes, runtime, state
from agent.lab.kube.control import ControlPlane
from agent.lab.kube.node import Node
from agent.lab.kube.pki import Pki
from agent.lab.kube.plan import CLUSTER_CIDR, CONTROL, SERVICE_CIDR, KubePlan
from agent.lab.kube.processes import Daemon
from agent.lab.kube.runtime import Runtime
from agent.lab.kube.underlay import KubeUnderlay

log = logging.getLogger("weave-py.lab")
KUBECTL_TIMEOUT = 60.0


class Cluster:
    """One cluster lab: built with ``up``, grown with ``add_node``, removed with ``down``."""

    def __init__(
        self, plan: KubePlan, daemons: list[Daemon] | None = None, cgroups: list[str] | None = None
    ) -> None:
        self.plan = plan
        self.underlay = KubeUnderlay(plan)
        self.pki = Pki(plan.pki_dir)
        self.control = ControlPlane(plan.control_ns, str(CONTROL.ip), plan.control_dir,
                                    self.pki, plan.bin_dir, cluster_cidr=str(CLUSTER_CIDR),
                                    service_cidr=str(SERVICE_CIDR))  # fmt: skip
        self.daemons: list[Daemon] = list(daemons or [])
        self.cgroups = runtime.missing_cgroup_parents() if cgroups is None else cgroups
        self.nodes: dict[int, Node] = {}
        self.images: list[Path] = []  # what up imported into every node
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name: str, directory: str) -> Cluster:
        """The cluster a state file describes (ValueError when there is none)."""
        plan, daemons, cgroups = state.load(name, directory)
        return cls(plan, daemons, cgroups)

    # -- building ------------------------------------------------------------------------------

    def up(self, images: list[Path]) -> None:
        """Namespaces, control plane and every node with ``images`` imported, until every
        node is registered (Ready comes with a CNI configuration: the DaemonSet's)."""
        self.plan.root.mkdir(parents=True, exist_ok=True)
        self.images = list(images)
        self.record(None)
        self.underlay.build()
        indices = range(1, self.plan.nodes + 1)
        self.pki.make(str(CONTROL.ip), [self.plan.node_name(i) for i in indices])
        self.nodes = {i: Node(self.plan, i, self.pki, self.control.server) for i in indices}
        with ThreadPoolExecutor(self.plan.nodes + 1) as pool:
            started = [pool.submit(self._start_control)]
            started += [pool.submit(n.start, images, self.record)
                        for n in self.nodes.values()]  # fmt: skip
            for future in started:
                future.result()
        started_at = time.monotonic()
        self.wait_registered([n.name for n in self.nodes.values()])
        log.info("register nodes: %d after %.1fs more", len(self.nodes),
                 time.monotonic() - started_at)  # fmt: skip

    def _start_control(self) -> None:
        started = time.monotonic()
        self.control.start()
        log.info("start control plane: apiserver ready after %.1fs", time.monotonic() - started)
        for process in self.control.processes:
            self.record(Daemon(process.name, process.popen.pid, str(self.plan.control_dir)))

    def start_node(self, i: int, images: list[Path], python: bool = True) -> Node:
        """Node i's processes (its namespace must exist)."""
        node = Node(self.plan, i, self.pki, self.control.server)
        self.nodes[i] = node
        node.start(images, self.record, python)
        return node

    def add_node(self, i: int, images: list[Path] | None = None, python: bool = True) -> Node:
        """A node joining the running cluster (with ``images``, by default those of ``up``):
        its namespace and processes, until it is registered."""
        self.plan = self.plan.grown(max(i, self.plan.nodes))
        self.underlay = KubeUnderlay(self.plan)
        self.record(None)
        self.underlay.add_node(i)
        node = self.start_node(i, self.images if images is None else images, python)
        self.wait_registered([node.name])
        return node

    def record(self, daemon: Daemon | None) -> None:
        """Keep ``daemon`` (one the lab started) in the state file, for ``down``."""
        with self._lock:
            if daemon is not None:
                self.daemons.append(daemon)
            state.save(self.plan, self.daemons, self.cgroups)

    # -- using ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None,
                timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """The cluster's own kubectl as the admin, run in the control plane's namespace."""
        argv = ["nsenter", f"--net=/run/netns/{self.plan.control_ns}", "--",
                str(self.plan.kubectl()), "--kubeconfig", str(self.control.admin_kubeconfig),
                *args]  # fmt: skip
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ... -o json``, parsed (RuntimeError when kubectl fails)."""
        done = self.kubectl("get", *args, "-o", "json")
        if done.returncode != 0:
            raise RuntimeError(f"kubectl get {' '.join(args)}: {done.stderr.strip()}")
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def apply(self, text: str) -> str:
        """``kubectl apply -f -``; its output (RuntimeError when it fails)."""
        done = self.kubectl("apply", "-f", "-", stdin=text)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl apply: {done.stderr.strip()}")
        return done.stdout

    def node(self, i: int) -> Node:
        """Node i (one of an earlier process is found from its recorded holder)."""
        if i not in self.nodes:
            node = Node(self.plan, i, self.pki, self.control.server)
            holders = [d for d in self.daemons if d.name == "holder"
                       and d.marker == str(node.dir) and processes.runs(d)]  # fmt: skip
            node.holder_pid = holders[-1].pid if holders else 0
            self.nodes[i] = node
        return self.nodes[i]

    def wait_registered(self, names: list[str], timeout: float = 60.0) -> None:
        """Until every node in ``names`` has registered its Node object."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.kubectl("get", "nodes", "-o", "name")
            have = {line.removeprefix("node/") for line in done.stdout.split()}
            if set(names) <= have:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(names) - have)
                raise RuntimeError(f"nodes {missing} did not register within {timeout:.0f}s")
            time.sleep(0.25)

    # -- tearing down --------------------------------------------------------------------------

    def stop_node(self, i: int, grace: float = 0.0) -> None:
        """Stop node i's processes and delete its namespace (a node gone); ``grace``: seconds
        its containers get to exit on SIGTERM first, as at a shutdown."""
        node = self.node(i)
        mine = [d for d in self.daemons if str(node.dir) in d.marker
                or d.marker == f"unix://{node.socket}"]  # fmt: skip
        if grace:
            processes.stop([d for d in mine if d.name in ("kubelet", "kube-proxy")])
            node.runtime.stop_tasks(grace)
        self._stop_nodes({i: node}, mine)
        self.underlay.remove_node(i)

    def down(self) -> list[str]:
        """Stop everything, delete the namespaces and the directory; the namespaces removed.
        Safe to repeat."""
        nodes = {i: self.node(i) for i in range(1, self.plan.nodes + 1)}
        control = [d for d in self.daemons if d.marker == str(self.plan.control_dir)]
        self._stop_nodes(nodes, [d for d in self.daemons if d not in control])
        for names in (("kube-controller-manager", "kube-scheduler"), ("kube-apiserver",)):
            processes.stop([d for d in control if d.name in names])
        processes.stop(control)  # etcd last: an apiserver without it takes long to stop
        removed = self.underlay.remove()
        runtime.remove_cgroup_parents(self.cgroups)
        left = mounts_under(self.plan.root)
        if left:
            raise RuntimeError(f"mounts left under {self.plan.root}: {left}")
        shutil.rmtree(self.plan.root, ignore_errors=True)
        return removed

    def _stop_nodes(self, nodes: dict[int, Node], daemons: list[Daemon]) -> None:
        first = [d for d in daemons if d.name in ("kubelet", "kube-proxy")]
        processes.stop(first)
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            list(pool.map(lambda n: n.runtime.remove_tasks(), nodes.values()))
        processes.stop([d for d in daemons if d.name == "containerd"])
        for node in nodes.values():
            _clean_runtime(node.runtime, node.socket)
        processes.stop([d for d in daemons if d.name == "holder"])


def _clean_runtime(node_runtime: Runtime, socket: Path) -> None:
    """What a containerd that died first leaves: containers runc still knows, and shims."""
    for container_id in node_runtime.leftover_containers():
        node_runtime.force_delete(container_id)
    shims = [Daemon("shim", pid, f"-address {socket}")
             for pid in processes.matching(f"-address {socket}")]  # fmt: skip
    processes.stop([s for s in shims if "containerd-shim" in processes.command_line(s.pid)])


def mounts_under(root: Path) -> list[str]:
    """Mount points under ``root`` in this process's mount namespace."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if p.startswith(prefix) or p == str(root))
