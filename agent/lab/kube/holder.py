"""The process that holds a node's mount and UTS namespaces: ``python -m agent.lab.kube.holder
ROOT HOSTNAME [--no-python]``, started inside the node's network namespace.

It leaves the caller's mount and UTS namespaces, makes its mounts slaves of the host's (host
mounts still show up; nothing made here leaks out), binds the node's private directories over
the host paths two kubelets on one machine would fight over, sets the host name, writes
``ROOT/holder.ready`` and sleeps until it is signalled. containerd, kubelet and kube-proxy enter
its namespaces (``nsenter -t PID -m -n -u``), so they and every hostPath volume see:

- ``/var/lib``, ``/var/log``, ``/etc/cni``, ``/opt``, ``/run``: ``ROOT/host/...`` (kubelet's
  device-plugin and pod-log cleanup, libcni's cache, containerd's root and state, the shims'
  sockets, the agent's sockets and state);
- ``/etc/machine-id``: a machine-id of its own;
- ``/proc/sys/vm/overcommit_memory``, ``/proc/sys/kernel/panic``,
  ``/proc/sys/kernel/panic_on_oops``: files that already hold what kubelet would write, so the
  host's values stay as they are;
- with ``--no-python``, an empty, non-executable file over every ``python3*`` in the usual bin
  directories (a node without Python, as Flatcar or Talos).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import signal
import socket
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
SHADOWED_DIRS = ("var/lib", "var/log", "etc/cni", "opt", "run")
KUBELET_SYSCTLS = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}
REFERENCE_PLUGIN_DIR = "/usr/lib/cni"
REFERENCE_PLUGINS = ("loopback", "portmap")
PYTHON_GLOBS = ("/usr/bin/python3*", "/usr/local/bin/python3*")
READY = "holder.ready"


def prepare(root: Path) -> None:
    """The node's private directories and files, made before the holder starts (idempotent)."""
    host = root / "host"
    for name in SHADOWED_DIRS:
        (host / name).mkdir(parents=True, exist_ok=True)
    (host / "etc/cni/net.d").mkdir(parents=True, exist_ok=True)
    plugins = host / "opt/cni/bin"
    plugins.mkdir(parents=True, exist_ok=True)
    for plugin in REFERENCE_PLUGINS:  # containerd runs loopback; the conflist chains portmap
        link = plugins / plugin
        if not link.is_symlink():
            link.symlink_to(f"{REFERENCE_PLUGIN_DIR}/{plugin}")
    machine_id = host / "machine-id"
    if not machine_id.exists():
        machine_id.write_text(os.urandom(16).hex() + "\n")
    (host / "sysctl").mkdir(exist_ok=True)
    for name, value in KUBELET_SYSCTLS.items():
        (host / "sysctl" / name.replace("/", ".")).write_text(value + "\n")
    (host / "no-python").touch(mode=0o644)


def binds(root: Path, python: bool) -> list[tuple[str, str]]:
    """(source, target) of every bind mount, in order."""
    host = root / "host"
    pairs = [(str(host / name), f"/{name}") for name in SHADOWED_DIRS]
    pairs.append((str(host / "machine-id"), "/etc/machine-id"))
    for name in KUBELET_SYSCTLS:
        pairs.append((str(host / "sysctl" / name.replace("/", ".")), f"/proc/sys/{name}"))
    if not python:
        pythons = sorted({os.path.realpath(p) for g in PYTHON_GLOBS for p in glob.glob(g)})
        pairs += [(str(host / "no-python"), p) for p in pythons if os.path.isfile(p)]
    return pairs


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {errno.errorcode.get(code, code)}")


def hold(root: Path, hostname: str, python: bool = True) -> None:
    """Become the node's namespaces' holder (see the module's docstring); returns only when
    setting them up failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare mount and uts namespaces")
    _check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / a slave")
    for source, target in binds(root, python):
        _check(libc.mount(source.encode(), target.encode(), None, MS_BIND, None),
               f"bind {source} over {target}")  # fmt: skip
    socket.sethostname(hostname)
    (root / READY).write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    """``ROOT HOSTNAME [--no-python]``."""
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--no-python"]):
        print("usage: python -m agent.lab.kube.holder ROOT HOSTNAME [--no-python]",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        hold(Path(argv[0]), argv[1], python=argv[2:] != ["--no-python"])
    except OSError as exc:
        print(f"holder: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
