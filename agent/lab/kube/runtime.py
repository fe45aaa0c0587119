"""A node's container runtime: containerd serving kubelet's CRI, inside the node's namespaces.

containerd keeps its default root and state (``/var/lib/containerd``, ``/run/containerd``),
which the node's mount namespace makes private; only its socket is at a path the host sees
(``<node dir>/containerd.sock``), so the lab imports images and cleans up from outside. CNI is
the node's ``/etc/cni/net.d`` and ``/opt/cni/bin`` with no ``conf_template``: until the
DaemonSet installs its conflist the node stays NotReady, as on a real cluster. Snapshotter
``overlayfs`` (``native`` copies every layer and container: removing three nodes' took 44 s
against 12 s); the sandbox image is the lab's busybox.

A task's state is read from containerd's state directory on disk (``init.pid`` of each
bundle), so the lab finds a pod's processes, and cleans them up, without parsing output.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "k8s.io"  # runc's default parent of kubelet's containers (no QoS hierarchy)
TASKS = "run/containerd/io.containerd.runtime.v2.task/k8s.io"  # under the node's host dir
RUNC_ROOT = "run/containerd/runc/k8s.io"
READY_TIMEOUT = 20.0


def config(socket: Path, sandbox_image: str) -> str:
    """containerd's configuration (TOML, version 2)."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        "[grpc]", f'  address = "{socket}"',
        "[ttrpc]", f'  address = "{socket}.ttrpc"',
        f"{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        "  restrict_oom_score_adj = true",
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        f"{cri}.cni]",
        '  bin_dir = "/opt/cni/bin"',
        '  conf_dir = "/etc/cni/net.d"',
        f"{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        "",
    ])  # fmt: skip


class Runtime:
    """The ``ctr`` side of one node's containerd, and its tasks as the state directory holds
    them (``host`` is the node's private host directory as the host sees it)."""

    def __init__(self, socket: Path, host: Path) -> None:
        self.socket = socket
        self.host = host

    def ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``ctr`` in the ``k8s.io`` namespace (kubelet's)."""
        argv = ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until containerd answers (RuntimeError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.ctr("version", timeout=5).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd on {self.socket} not answering after {timeout}s")
            time.sleep(0.1)

    def import_image(self, archive: Path) -> None:
        """Import (and unpack) an image archive."""
        done = self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"ctr import {archive}: {done.stderr.strip()}")

    def tasks(self) -> dict[str, int]:
        """Container id -> pid of its first process, for every task containerd has."""
        found = {}
        directory = self.host / TASKS
        for bundle in sorted(directory.iterdir()) if directory.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                found[bundle.name] = int((bundle / "init.pid").read_text())
        return found

    def task_pid(self, container_id: str) -> int | None:
        """The first process of a container, None when it has no task."""
        return self.tasks().get(container_id)

    def stop_tasks(self, timeout: float) -> None:
        """SIGTERM every task, and wait up to ``timeout`` for them to exit (as a node shutting
        down gives its containers)."""
        tasks = self.tasks()
        for container_id in tasks:
            self.ctr("tasks", "kill", container_id, timeout=10)
        deadline = time.monotonic() + timeout
        while any(os.path.exists(f"/proc/{pid}") for pid in tasks.values()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def remove_tasks(self) -> int:
        """Kill and delete every task (runc removes their cgroups); how many there were."""
        ids = list(self.tasks())
        for container_id in ids:
            self.ctr("tasks", "delete", "--force", container_id, timeout=30)
        return len(ids)

    def leftover_containers(self) -> list[str]:
        """Containers runc still keeps state for (left when containerd died first)."""
        directory = self.host / RUNC_ROOT
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def force_delete(self, container_id: str) -> None:
        """``runc delete --force``: kill a container and remove its cgroups, without
        containerd."""
        root = str(self.host / RUNC_ROOT)
        subprocess.run(["runc", "--root", root, "delete", "--force", container_id],
                       capture_output=True, timeout=30, check=False)  # fmt: skip


def missing_cgroup_parents(root: Path = CGROUP_ROOT) -> list[str]:
    """The ``k8s.io`` cgroup directories runc would make, in every hierarchy that has none
    yet (a lab that made them removes them again)."""
    if not root.is_dir():
        return []
    hierarchies = [h for h in sorted(root.iterdir()) if h.is_dir() and not h.is_symlink()]
    return [str(h / CGROUP_PARENT) for h in hierarchies if not (h / CGROUP_PARENT).exists()]


def remove_cgroup_parents(paths: list[str]) -> list[str]:
    """rmdir each of ``paths`` that is empty (one still in use stays); those removed."""
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            os.rmdir(path)
            removed.append(path)
    return removed
