"""The cluster lab's long-running processes, kept as (name, pid, marker) so that ``lab down``
stops exactly them, also from another process after a crash: a pid is signalled only while its
command line still holds the marker (a path inside the lab's directory), so a reused pid is
left alone.
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
from typing import Any

log = logging.getLogger("weave-py.lab")
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


@dataclass(frozen=True)
class Daemon:
    """A process the lab started, and the text its command line must hold to still be it."""

    name: str
    pid: int
    marker: str

    def to_json(self) -> dict[str, Any]:
        """The state file's entry."""
        return {"name": self.name, "pid": self.pid, "marker": self.marker}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Daemon:
        """An entry of the state file."""
        return cls(str(entry["name"]), int(entry["pid"]), str(entry["marker"]))


def spawn(
    name: str, argv: list[str], log: Path, marker: str, cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> Daemon:  # fmt: skip
    """Start ``argv`` in a session of its own, output appended to ``log``; ``env`` is added
    to this process's environment."""
    if marker not in " ".join(argv):
        raise ValueError(f"{name}: the marker {marker!r} is not in its command line")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
                                env={**os.environ, **env} if env else None)  # fmt: skip
    return Daemon(name, proc.pid, marker)


def command_line(pid: int) -> str:
    """The command line of ``pid`` with spaces between the arguments ('' when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not); reaps it when it is a child of ours."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def runs(daemon: Daemon) -> bool:
    """Whether the daemon's pid is alive and still the daemon."""
    return alive(daemon.pid) and daemon.marker in command_line(daemon.pid)


def stop(daemons: list[Daemon], timeout: float = STOP_TIMEOUT) -> list[Daemon]:
    """SIGTERM every daemon that still runs, SIGKILL those left after ``timeout``; the ones
    that were running."""
    running = [d for d in daemons if runs(d)]
    for daemon in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = running
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [d for d in left if alive(d.pid)]
    for daemon in left:
        if runs(daemon):
            log.info("kill %s: pid %d still ran %.0fs after SIGTERM", daemon.name, daemon.pid,
                     timeout)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGKILL)
    for daemon in left:
        _wait_gone(daemon.pid, 5.0)
    return running


def matching(marker: str) -> list[int]:
    """Pids of every process whose command line holds ``marker`` (containerd's shims, which
    containerd starts, are found by its socket's path)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and marker in command_line(int(entry)):
            pids.append(int(entry))
    return sorted(pids)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
