"""A Kubernetes control plane in one network namespace: etcd on the namespace's loopback,
kube-apiserver on ``ip:6443``, kube-controller-manager (it assigns every Node a podCIDR) and
kube-scheduler.

Every process runs in ``netns`` (entered with ``nsenter``, which then becomes the process, so
the pid kept is the daemon's), writes its log to ``directory/logs/<name>.log`` and keeps its
state under ``directory``: nothing is written to the host's paths (the controller-manager's
flex-volume directory and every ``--cert-dir`` point inside it). ``stop`` signals only the pids
this object started, after checking each still runs the binary it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent.lab.kube.pki import Pki

log = logging.getLogger("weave-py.lab")
ETCD_CLIENT = "http://127.0.0.1:2379"
API_PORT = 6443
READY_TIMEOUT = 120.0  # seconds the apiserver may take to answer /readyz (cold: ~5 s)
STOP_TIMEOUT = 5.0  # seconds a component may take to exit on SIGTERM before SIGKILL (the
# apiserver, once it stopped serving, retries removing its own endpoint until killed)
NETNS_DIR = "/run/netns"


@dataclass
class Process:
    """One component this control plane started."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]

    @property
    def binary(self) -> str:
        """The program's file name (what /proc/PID/cmdline starts with, after nsenter)."""
        return os.path.basename(self.argv[0])


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler of one lab cluster."""

    def __init__(
        self,
        netns: str,
        ip: str,
        directory: Path,
        pki: Pki,
        bin_dir: Path,
        cluster_cidr: str = "10.244.0.0/16",
        service_cidr: str = "10.96.0.0/12",
    ) -> None:
        self.netns = netns
        self.ip = ip
        self.directory = Path(directory)
        self.pki = pki
        self.bin_dir = Path(bin_dir)
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.processes: list[Process] = []

    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return f"https://{self.ip}:{API_PORT}"

    @property
    def admin_kubeconfig(self) -> Path:
        """The admin's kubeconfig (system:masters)."""
        return self.pki.kubeconfig("admin", self.server)

    def start(self) -> None:
        """Start the four components and wait until the apiserver is ready (RuntimeError with
        the log's tail when something does not come up; what did start is stopped)."""
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        self.pki.make(self.ip, [])
        try:
            self._spawn("etcd", self._etcd())
            self._spawn("kube-apiserver", self._apiserver())
            self._wait_ready()
            self._spawn("kube-controller-manager", self._controller_manager())
            self._spawn("kube-scheduler", self._scheduler())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what this object started, the last started first (SIGKILL after a timeout)."""
        while self.processes:
            _terminate(self.processes.pop())

    def restart(self, name: str) -> None:
        """Stop one component and start it again with the same command line (the apiserver:
        waits until it is ready). Its watch cache starts afresh, as after a failover."""
        process = next(p for p in self.processes if p.name == name)
        self.processes.remove(process)
        _terminate(process)
        self._spawn(name, process.argv)
        if name != "kube-apiserver":
            return
        self._wait_ready()
        for other in [p for p in self.processes if p.popen.poll() is not None]:
            # a component still starting exits when the apiserver goes away: start it again
            log.info("restart %s: it exited while the apiserver restarted", other.name)
            self.processes.remove(other)
            self._spawn(other.name, other.argv)

    def kubectl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``kubectl`` as the admin, run in the namespace; output captured as text."""
        kubectl = str(self.bin_dir / "kubectl")  # the cluster's own release, not the machine's
        argv = [kubectl, "--kubeconfig", str(self.admin_kubeconfig), *args]
        return subprocess.run(self._in_netns(argv), capture_output=True, text=True, check=check,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last ``lines`` of a component's log."""
        path = self.directory / "logs" / f"{name}.log"
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- the components ------------------------------------------------------------------------

    def _etcd(self) -> list[str]:
        data = self.directory / "etcd"
        data.mkdir(parents=True, exist_ok=True)
        return ["etcd", "--name", "lab", "--data-dir", str(data),
                "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "lab=http://127.0.0.1:2380",
                "--listen-metrics-urls", "http://127.0.0.1:2381"]  # fmt: skip

    def _apiserver(self) -> list[str]:
        p = self.pki
        return [str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={ETCD_CLIENT}",
                f"--bind-address={self.ip}", f"--advertise-address={self.ip}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={p.apiserver_cert}", f"--tls-private-key-file={p.apiserver_key}",
                f"--client-ca-file={p.ca_cert}",
                f"--kubelet-client-certificate={p.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={p.key('apiserver-kubelet-client')}",
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--cert-dir={self.directory / 'apiserver-certs'}",
                "--profiling=false", "--v=1"]  # fmt: skip

    def _controller_manager(self) -> list[str]:
        p = self.pki
        kubeconfig = p.kubeconfig("kube-controller-manager", self.server)
        return [str(self.bin_dir / "kube-controller-manager"), "--port=0",
                *_kubeconfigs(kubeconfig),
                "--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
                f"--service-account-private-key-file={p.sa_key}",
                f"--root-ca-file={p.ca_cert}", "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={p.ca_cert}",
                f"--cluster-signing-key-file={p.ca_key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--allocate-node-cidrs=true", f"--cluster-cidr={self.cluster_cidr}",
                "--node-cidr-mask-size=24",
                f"--cert-dir={self.directory / 'kcm-certs'}",
                f"--flex-volume-plugin-dir={self.directory / 'flex-volume'}",
                "--profiling=false", "--v=1"]  # fmt: skip

    def _scheduler(self) -> list[str]:
        kubeconfig = self.pki.kubeconfig("kube-scheduler", self.server)
        return [str(self.bin_dir / "kube-scheduler"), "--port=0",
                *_kubeconfigs(kubeconfig),
                "--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false",
                f"--cert-dir={self.directory / 'scheduler-certs'}",
                "--profiling=false", "--v=1"]  # fmt: skip

    # -- processes -----------------------------------------------------------------------------

    def _in_netns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.netns}", "--", *argv]

    def _spawn(self, name: str, argv: list[str]) -> None:
        if "/" in argv[0] and not os.access(argv[0], os.X_OK):
            raise FileNotFoundError(f"{name}: no executable {argv[0]} (scripts/build-kubernetes)")
        with open(self.directory / "logs" / f"{name}.log", "ab") as out:
            popen = subprocess.Popen(self._in_netns(argv), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.processes.append(Process(name, argv, popen))
        log.info("start %s: pid %d in %s", name, popen.pid, self.netns)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.name in ("etcd", "kube-apiserver") and process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited with status "
                                       f"{process.popen.returncode}:\n"
                                       f"{self.log_tail(process.name)}")  # fmt: skip
            if self.kubectl("get", "--raw", "/readyz").returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT:.0f}s:\n"
                           f"{self.log_tail('kube-apiserver')}")  # fmt: skip


def _terminate(process: Process) -> None:
    """SIGTERM to a component still running its binary; SIGKILL after ``STOP_TIMEOUT``."""
    if process.popen.poll() is not None:
        return
    if _runs(process.popen.pid, process.binary):
        process.popen.send_signal(signal.SIGTERM)
    try:
        process.popen.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait()
    log.info("stop %s: pid %d", process.name, process.popen.pid)


def _kubeconfigs(path: Path) -> list[str]:
    return [f"--kubeconfig={path}", f"--authentication-kubeconfig={path}",
            f"--authorization-kubeconfig={path}"]  # fmt: skip


def _runs(pid: int, binary: str) -> bool:
    """Whether ``pid`` still runs ``binary`` (nsenter has exec'd into it by now)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return os.path.basename(argv0) in (binary, "nsenter")
