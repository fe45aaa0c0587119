"""Traffic that runs while a lab changes under it: a fast ping (``Pinger``, every echo's send
time and whether it was answered, so loss is counted per window) and a paced TCP stream
(``Stream``, the bytes the receiver counted over time, and any error that broke it). Both run
on threads of this process, their sockets opened inside the pods' namespaces; times are unix
seconds, comparable with the ``path_since`` an agent reports.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from overlay.icmp import checksum
from overlay.netns import enter_netns, run_in_netns

ECHO_REQUEST, ECHO_REPLY = 8, 0
ECHO = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
PAYLOAD = b"weave-py-traffic"
STREAM_PORT = 7790
CHUNK = 64 * 1024


@dataclass
class Echoes:
    """What a Pinger saw: the send time of every echo by sequence, and those answered."""

    interval: float
    sent: dict[int, float] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)

    def lost(self, start: float, end: float) -> int:
        """Echoes sent in [start, end) that were never answered."""
        return sum(
            1 for seq, at in self.sent.items() if start <= at < end and seq not in self.answered
        )

    def loss_seconds(self, start: float, end: float) -> float:
        """Lost echoes in [start, end) times the interval: how long traffic stopped."""
        return self.lost(start, end) * self.interval

    def count(self, start: float, end: float) -> int:
        """Echoes sent in [start, end)."""
        return sum(1 for at in self.sent.values() if start <= at < end)


class Pinger:
    """ICMP echoes from ``netns`` to ``destination`` every ``interval`` seconds, until closed
    (an echo unanswered by then counts as lost)."""

    def __init__(self, netns: str, destination: str, interval: float = 0.01) -> None:
        self.destination = destination
        self.echoes = Echoes(interval)
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._sock: socket.socket = run_in_netns(
            netns, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP
        )
        self._sock.settimeout(0.1)
        self._stop = threading.Event()  # no more echoes
        self._done = threading.Event()  # no more answers awaited
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._recv)]

    def __enter__(self) -> Pinger:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, grace: float = 1.0) -> Echoes:
        """Stop sending, wait ``grace`` seconds for late answers, close; what was seen. Safe
        to repeat."""
        if self._done.is_set():
            return self.echoes
        self._stop.set()
        self._threads[0].join(5)
        time.sleep(grace)
        self._done.set()
        self._threads[1].join(5)
        self._sock.close()
        return self.echoes

    def seen(self) -> Echoes:
        """A copy of what was seen so far (the threads go on adding to ``echoes``)."""
        with self._lock:
            e = self.echoes
            return Echoes(e.interval, dict(e.sent), set(e.answered))

    def _send(self) -> None:
        started, seq = time.monotonic(), 0
        while not self._stop.is_set():
            body = bytearray(ECHO.pack(ECHO_REQUEST, 0, 0, self._ident, seq & 0xFFFF) + PAYLOAD)
            struct.pack_into("!H", body, 2, checksum(body))
            with self._lock:
                self.echoes.sent[seq] = time.time()
            with contextlib.suppress(OSError):  # e.g. no route for a moment: a lost echo
                self._sock.sendto(body, (self.destination, 0))
            seq += 1
            time.sleep(max(0.0, started + seq * self.echoes.interval - time.monotonic()))

    def _recv(self) -> None:
        while not self._done.is_set():
            try:
                data, addr = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, ident, seq = ECHO.unpack_from(data, ihl)
            if kind == ECHO_REPLY and ident == self._ident and addr[0] == self.destination:
                self._answered(seq)

    def _answered(self, seq: int) -> None:
        """The sequences wrap at 16 bits: an answer is the latest echo sent with its number."""
        with self._lock:
            latest = max(self.echoes.sent, default=0)
            full = (latest & ~0xFFFF) | seq
            self.echoes.answered.add(full if full <= latest else full - 0x10000)


class Stream:
    """One TCP connection from ``src_ns`` to ``dst_ip`` (a server in ``dst_ns``), sending at
    most ``rate`` bytes a second until closed. ``received`` counts what arrived; ``samples``
    holds (unix time, bytes so far) at every arrival at most every 50 ms; ``error`` is what
    broke the stream, None while it is whole."""

    def __init__(self, src_ns: str, dst_ns: str, dst_ip: str, rate: float = 20e6) -> None:
        self.src_ns, self.dst_ns, self.dst_ip, self.rate = src_ns, dst_ns, dst_ip, rate
        self.received = 0
        self.samples: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._client = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> Stream:
        self._server.start()
        if not self._listening.wait(5):
            raise RuntimeError(f"stream: no server in {self.dst_ns}: {self.error}")
        self._client.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop sending; the receiver ends at the sender's end of stream."""
        self._stop.set()
        self._client.join(10)
        self._server.join(10)

    def received_since(self, at: float) -> int:
        """Bytes that arrived after unix time ``at``."""
        before = max((n for t, n in self.samples if t <= at), default=0)
        return self.received - before

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time in [start, end] with no byte arriving, seconds."""
        times = [start, *(t for t, _ in self.samples if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def _serve(self) -> None:
        try:
            enter_netns(self.dst_ns)
            with socket.create_server(("0.0.0.0", STREAM_PORT)) as srv:
                srv.settimeout(10)
                self._listening.set()
                conn, _ = srv.accept()
                with conn:
                    self._count(conn)
        except OSError as exc:
            self.error = self.error or exc
            self._listening.set()

    def _count(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        buffer = bytearray(1 << 20)
        while n := conn.recv_into(buffer):
            self.received += n
            now = time.time()
            if not self.samples or now - self.samples[-1][0] >= 0.05:
                self.samples.append((now, self.received))
        self.samples.append((time.time(), self.received))

    def _send(self) -> None:
        try:
            enter_netns(self.src_ns)
            with socket.create_connection((self.dst_ip, STREAM_PORT), 5) as s:
                self._pace(s)
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.error = self.error or exc

    def _pace(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        chunk, sent, started = bytes(CHUNK), 0, time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                sent += s.send(chunk)
            time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))
