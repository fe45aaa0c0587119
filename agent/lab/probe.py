"""Pod-to-pod reachability: ICMP echo and a TCP exchange that reports the source address the
receiver saw (so NAT shows up). Runs in-process: each probe is a thread inside the source
namespace, each TCP responder a thread inside its pod's namespace.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

from overlay.icmp import checksum
from overlay.netns import enter_netns, run_in_netns

TCP_PORT = 7777


@dataclass(frozen=True)
class Result:
    rtt_ms: float | None  # ICMP round trip, None when lost
    seen_source: str | None  # the address the TCP responder saw, None when TCP failed

    def ok(self, source: str) -> bool:
        return self.rtt_ms is not None and self.seen_source == source


def ping(netns: str, destination: str, timeout: float = 2.0) -> float | None:
    """One ICMP echo from inside ``netns``; the round trip in ms or None."""
    return run_in_netns(netns, _ping, destination, timeout)


def _ping(destination: str, timeout: float) -> float | None:
    ident = (os.getpid() ^ threading.get_ident()) & 0xFFFF
    payload = b"weave-py" * 7
    body = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload)
    struct.pack_into("!H", body, 2, checksum(body))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        start = time.perf_counter()
        s.sendto(body, (destination, 0))
        deadline = start + timeout
        while True:
            s.settimeout(max(0.001, deadline - time.perf_counter()))
            try:
                data, addr = s.recvfrom(2048)
            except TimeoutError:
                return None
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, got_id, _ = struct.unpack_from("!BBHHH", data, ihl)
            if kind == 0 and got_id == ident and addr[0] == destination:
                return (time.perf_counter() - start) * 1e3


class Responder:
    """A TCP server inside a pod that answers every connection with the peer's address."""

    def __init__(self, netns: str, port: int = TCP_PORT) -> None:
        self.netns = netns
        self.port = port
        self._ready = threading.Event()
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"resp-{netns}")

    def __enter__(self) -> Responder:
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)

    def _serve(self) -> None:
        try:
            enter_netns(self.netns)
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("0.0.0.0", self.port))
            srv.listen(64)
            srv.settimeout(0.1)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        with srv:
            while not self._stop:
                try:
                    conn, addr = srv.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(addr[0].encode() + b"\n")


def tcp_source(
    netns: str, destination: str, port: int = TCP_PORT, timeout: float = 2.0
) -> str | None:
    return run_in_netns(netns, _tcp_source, destination, port, timeout)


def _tcp_source(destination: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((destination, port), timeout) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip() or None
    except OSError:
        return None


def matrix(pods: dict[str, str], timeout: float = 2.0) -> dict[tuple[str, str], Result]:
    """Probe every ordered pair of distinct pods; ``pods`` maps netns name -> pod address."""
    results = {}
    responders = [Responder(ns) for ns in pods]
    for r in responders:
        r.__enter__()
    try:
        for src in pods:
            for dst, dst_ip in pods.items():
                if src != dst:
                    rtt = ping(src, dst_ip, timeout)
                    seen = tcp_source(src, dst_ip, TCP_PORT, timeout)
                    results[(src, dst)] = Result(rtt, seen)
    finally:
        for r in responders:
            r.__exit__()
    return results


def render(pods: dict[str, str], results: dict[tuple[str, str], Result]) -> str:
    """A matrix: rows send, columns receive; 'ok' = ICMP and TCP work and no NAT was seen."""
    names = list(pods)
    width = max(12, *(len(pods[n]) + 1 for n in names))
    lines = [" " * width + "".join(f"{pods[n]:>{width}}" for n in names)]
    for src in names:
        cells = []
        for dst in names:
            if src == dst:
                cells.append("-")
                continue
            r = results[(src, dst)]
            if r.ok(pods[src]):
                cells.append("ok")
            elif r.rtt_ms is None and r.seen_source is None:
                cells.append("FAIL")
            elif r.rtt_ms is None:
                cells.append("no-icmp")
            elif r.seen_source is None:
                cells.append("no-tcp")
            else:
                cells.append("NAT!")
        lines.append(f"{pods[src]:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines) + "\n"
