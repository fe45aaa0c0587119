"""A node of the cluster lab: its namespaces' holder, containerd, kubelet and kube-proxy.

Every process of a node runs in the node's network namespace and in the mount and UTS
namespaces the holder keeps (agent/lab/kube/holder.py), entered with ``nsenter -t HOLDER -m -n
-u`` (nsenter then becomes the process, so the pid kept is the daemon's). kubelet 1.20 talks CRI
v1alpha2 to containerd 1.6; cgroups by cgroupfs, no QoS hierarchy, no node allocatable, so it
makes no cgroups of its own; image garbage collection and disk eviction are off, since the lab's
images cannot be pulled again. kube-proxy (iptables) leaves the host's conntrack settings alone.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.lab.agents import source_root
from agent.lab.kube import holder, processes, runtime
from agent.lab.kube.images import TEST_IMAGE
from agent.lab.kube.pki import Pki
from agent.lab.kube.plan import CLUSTER_CIDR, KubePlan
from agent.lab.kube.processes import Daemon
from agent.lab.kube.runtime import Runtime

log = logging.getLogger("weave-py.lab")
HOLDER_TIMEOUT = 10.0
PKI_LOCK = threading.Lock()  # nodes start on threads of their own; the PKI writes shared files
# no cloud here: the AWS SDK in kubelet would otherwise retry the metadata address for 4 s
NO_CLOUD = {"AWS_EC2_METADATA_DISABLED": "true"}


class Node:
    """Node i of a cluster lab."""

    def __init__(self, plan: KubePlan, i: int, pki: Pki, server: str) -> None:
        self.plan = plan
        self.i = i
        self.name = plan.node_name(i)
        self.address = str(plan.node_address(i).ip)
        self.dir = plan.node_dir(i)
        self.pki = pki
        self.server = server
        self.socket = self.dir / "containerd.sock"
        self.runtime = Runtime(self.socket, self.dir / "host")
        self.holder_pid = 0

    def start(self, images: list[Path], record: Callable[[Daemon], None],
              python: bool = True) -> None:  # fmt: skip
        """Every process of the node (``start_runtime``, then ``start_kubelet``)."""
        self.start_runtime(images, record, python)
        self.start_kubelet(record)

    def start_runtime(self, images: list[Path], record: Callable[[Daemon], None],
                      python: bool = True) -> None:  # fmt: skip
        """The holder and containerd with ``images`` imported; ``record`` is given each
        process as soon as it runs. Raises RuntimeError with the log's tail."""
        started = time.monotonic()
        holder.prepare(self.dir)
        self._start_holder(record, python)
        config = self.dir / "containerd.toml"
        config.write_text(runtime.config(self.socket, TEST_IMAGE))
        record(self._spawn("containerd", ["containerd", "--config", str(config)], str(config)))
        try:
            self.runtime.wait_ready()
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}:\n{self.log_tail('containerd')}") from None
        for archive in images:
            self.runtime.import_image(archive)
        log.info("start %s: containerd ready with %d image(s) after %.1fs", self.name,
                 len(images), time.monotonic() - started)  # fmt: skip

    def start_kubelet(self, record: Callable[[Daemon], None]) -> None:
        """kubelet and kube-proxy. (kubelet takes ~6 s to start here, 5 of them in cAdvisor
        waiting for a Docker that is not there, so it is best started with the control plane:
        it registers as soon as the apiserver answers, within its 7 s back-off.)"""
        with PKI_LOCK:
            self.pki.add_node(self.name)
            kubeconfig = self.pki.kubeconfig(self.name, self.server)
            proxy_kubeconfig = self.pki.kubeconfig("kube-proxy", self.server)
        record(self._spawn("kubelet", self._kubelet(kubeconfig), f"unix://{self.socket}",
                           env=NO_CLOUD))  # fmt: skip
        proxy = self.dir / "kube-proxy.json"
        proxy.write_text(json.dumps(self._kube_proxy(proxy_kubeconfig), indent=2))
        argv = [str(self.plan.bin_dir / "kube-proxy"), f"--config={proxy}"]
        record(self._spawn("kube-proxy", argv, str(proxy)))

    def in_node(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the node's namespaces."""
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-n", "-u", "--", *argv]

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of one of the node's process logs."""
        path = self.dir / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _start_holder(self, record: Callable[[Daemon], None], python: bool) -> None:
        ready = self.dir / holder.READY
        ready.unlink(missing_ok=True)
        argv = ["nsenter", f"--net=/run/netns/{self.plan.node_ns(self.i)}", "--",
                sys.executable, "-m", "agent.lab.kube.holder", str(self.dir), self.name,
                *([] if python else ["--no-python"])]  # fmt: skip
        daemon = processes.spawn("holder", argv, self.dir / "logs" / "holder.log", str(self.dir),
                                 cwd=source_root())  # fmt: skip
        record(daemon)
        self.holder_pid = daemon.pid
        deadline = time.monotonic() + HOLDER_TIMEOUT
        while not ready.exists():
            if not processes.alive(daemon.pid) or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: holder not ready:\n{self.log_tail('holder')}")
            time.sleep(0.02)

    def _spawn(
        self, name: str, argv: list[str], marker: str, env: dict[str, str] | None = None
    ) -> Daemon:
        return processes.spawn(name, self.in_node(argv), self.dir / "logs" / f"{name}.log",
                               marker, env=env)  # fmt: skip

    def _kubelet(self, kubeconfig: Path) -> list[str]:
        endpoint = f"unix://{self.socket}"
        return [str(self.plan.bin_dir / "kubelet"), f"--kubeconfig={kubeconfig}",
                f"--hostname-override={self.name}", f"--node-ip={self.address}",
                "--container-runtime=remote", f"--container-runtime-endpoint={endpoint}",
                f"--image-service-endpoint={endpoint}", "--runtime-request-timeout=5m",
                "--root-dir=/var/lib/kubelet", "--cert-dir=/var/lib/kubelet/pki",
                "--volume-plugin-dir=/var/lib/kubelet/volume-plugins",
                "--cgroup-driver=cgroupfs", "--cgroups-per-qos=false",
                "--enforce-node-allocatable=", "--fail-swap-on=false",
                f"--pod-infra-container-image={TEST_IMAGE}",
                "--image-gc-high-threshold=100", "--image-gc-low-threshold=99",
                "--eviction-hard=memory.available<1Mi",
                f"--address={self.address}", "--port=10250", "--read-only-port=0",
                "--healthz-bind-address=127.0.0.1",
                "--anonymous-auth=false", f"--client-ca-file={self.pki.ca_cert}",
                "--authentication-token-webhook=true", "--authorization-mode=Webhook",
                "--cluster-domain=cluster.local", "--rotate-certificates=false",
                "--node-status-update-frequency=4s", "--v=1"]  # fmt: skip

    def _kube_proxy(self, kubeconfig: Path) -> dict[str, Any]:
        """kube-proxy's configuration (JSON is YAML)."""
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": self.address,
            "clusterCIDR": str(CLUSTER_CIDR),
            "mode": "iptables",
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        }  # fmt: skip
