"""A running ping between pods for the cluster tests: ICMP echo every ``interval`` seconds from
a thread inside the source pod's network namespace, and the outages it saw (runs of echoes that
got no reply), in seconds."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from overlay.icmp import checksum
from overlay.netns import enter_netns

LATE = 1.0  # seconds a reply may take to still count


class Pinger:
    """``with Pinger(netns, ip) as p: ...``; then ``p.outages()``."""

    def __init__(self, netns: str, destination: str, interval: float = 0.1) -> None:
        self.netns = netns
        self.destination = destination
        self.interval = interval
        self.sent = 0
        self.answered: set[int] = set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ping-{destination}")

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(LATE + 5)
        if self._error is not None:
            raise self._error

    def outages(self) -> list[float]:
        """Seconds of each run of unanswered echoes, in order."""
        runs, current = [], 0
        for seq in range(self.sent):
            if seq in self.answered:
                if current:
                    runs.append(current * self.interval)
                current = 0
            else:
                current += 1
        if current:
            runs.append(current * self.interval)
        return runs

    def _run(self) -> None:
        try:
            enter_netns(self.netns)
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
                self._loop(sock)
        except BaseException as exc:
            self._error = exc

    def _loop(self, sock: socket.socket) -> None:
        next_at = time.monotonic()
        stop_at = float("inf")
        while time.monotonic() < stop_at:
            if self._stop.is_set() and stop_at == float("inf"):
                stop_at = time.monotonic() + LATE
            now = time.monotonic()
            if now >= next_at and stop_at == float("inf"):
                sock.sendto(self._echo(self.sent), (self.destination, 0))
                self.sent += 1
                next_at += self.interval
            ready, _, _ = select.select([sock], [], [], max(0.0, min(next_at, stop_at) - now))
            if ready:
                self._receive(sock)

    def _echo(self, seq: int) -> bytes:
        body = bytearray(struct.pack("!BBHHH", 8, 0, 0, self._ident, seq & 0xFFFF) + b"wp" * 16)
        struct.pack_into("!H", body, 2, checksum(body))
        return bytes(body)

    def _receive(self, sock: socket.socket) -> None:
        data, (source, _) = sock.recvfrom(2048)
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, ident, seq = struct.unpack_from("!BBHHH", data, ihl)
        if kind == 0 and ident == self._ident and source == self.destination:
            self.answered.add(seq)


class AgentWatch:
    """When the weave-py agents of one node exit and start: every ``interval`` seconds, the pids
    of the processes running ``weave-py run`` in the node's network namespace. What Kubernetes
    adds to an agent's restart (the gap between the old agent's exit and the new one's start)
    is told apart from the agent's own share this way."""

    def __init__(self, node_ns: str, interval: float = 0.05) -> None:
        self.inode = os.stat(f"/run/netns/{node_ns}").st_ino
        self.interval = interval
        self.exits: list[float] = []  # monotonic times an agent was seen gone
        self.starts: list[float] = []  # monotonic times a new agent was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{node_ns}")

    def __enter__(self) -> AgentWatch:
        self._seen = self.agents()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def gaps(self) -> list[float]:
        """Seconds between each exit and the next start."""
        return [min((s for s in self.starts if s >= e), default=e) - e for e in self.exits]

    def agents(self) -> set[int]:
        """Pids of the node's agents now."""
        return {int(e) for e in os.listdir("/proc") if e.isdigit() and self._is_agent(e)}

    def _is_agent(self, pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            ours = os.stat(f"/proc/{pid}/ns/net").st_ino == self.inode
        except OSError:
            return False
        return ours and b"run" in argv and any(a.endswith(b"/weave-py") for a in argv[:2])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now, seen = time.monotonic(), self.agents()
            if self._seen - seen:
                self.exits.append(now)
            if seen - self._seen:
                self.starts.append(now)
            self._seen = seen
