"""The driver of path choice (overlay/paths.py): ICMP echo probes through the VXLAN device.

Probes are ICMP echo requests from our VTEP address to each candidate's VTEP on one raw socket
(``AF_INET, SOCK_RAW, IPPROTO_ICMP``) bound to the fast-path device (``SO_BINDTODEVICE``) and
to our VTEP address: a request leaves through the device, and only replies that came back
through it, addressed to our VTEP, reach the socket. The peer's kernel answers, so a peer whose
agent restarts keeps answering. The echo's identifier is random per process; its sequence is
the core's, unique among the probes outstanding.

The socket opens when the source is set and is retried every ``PROBE_INTERVAL`` while it cannot
be (the device or the address is not there yet: ENODEV, EADDRNOTAVAIL), logged once each time
the reason changes. A probe that cannot be sent (no socket; EPERM from a filter, ENETUNREACH,
...) is counted ``unsent`` and left to expire as a miss; nothing a send or receive does ends
the task. Only this module reads the clock.

Echo request and reply, after the IPv4 header (replies are read with it)::

    0        8        16                32
    | type   | code   | checksum        |
    | identifier      | sequence        |
    | payload (PAYLOAD) ...             |
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from overlay.icmp import checksum
from overlay.paths import PROBE_INTERVAL, Candidate, Paths

log = logging.getLogger("weave-py.paths")

ECHO = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ECHO_REQUEST, ECHO_REPLY = 8, 0
PAYLOAD = b"weave-py"
IPV4_MIN_HEADER = 20
PROTO_ICMP = 1
RECEIVE_SIZE = 2048
RECEIVE_BATCH = 64  # datagrams read per wake-up before the loop runs others
GONE = (errno.ENODEV, errno.ENXIO)  # the device the socket is bound to went away
PROCESS_IDENTIFIER = int.from_bytes(os.urandom(2), "big")


class ProbeRejected(Exception):
    """A datagram on the probe socket that is not an answer of ours; ``reason`` is the label of
    the counter it is dropped under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def echo_request(identifier: int, sequence: int) -> bytes:
    """An ICMP echo request (without IP header) with a valid checksum."""
    body = bytearray(ECHO.pack(ECHO_REQUEST, 0, 0, identifier, sequence) + PAYLOAD)
    struct.pack_into("!H", body, 2, checksum(body))
    return bytes(body)


def parse_reply(packet: bytes, identifier: int) -> tuple[IPv4Address, int]:
    """The (source, sequence) of an IPv4 packet carrying an echo reply to ``identifier``; any
    other packet raises ProbeRejected."""
    if len(packet) < IPV4_MIN_HEADER or packet[0] >> 4 != 4:
        raise ProbeRejected("not_ipv4")
    header = (packet[0] & 0x0F) * 4
    if header < IPV4_MIN_HEADER or len(packet) < header + ECHO.size:
        raise ProbeRejected("malformed")
    if packet[9] != PROTO_ICMP:
        raise ProbeRejected("not_icmp")
    kind, code, _, ident, sequence = ECHO.unpack_from(packet, header)
    if kind != ECHO_REPLY or code != 0:
        raise ProbeRejected("not_reply")
    if ident != identifier:
        raise ProbeRejected("other_identifier")
    if checksum(packet[header:]) != 0:
        raise ProbeRejected("checksum")
    return IPv4Address(packet[12:16]), sequence


def open_probe_socket(device: str, source: IPv4Address) -> socket.socket:
    """A non-blocking raw ICMP socket bound to ``device`` and to ``source``; OSError when the
    device (ENODEV) or the address (EADDRNOTAVAIL) is missing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.bind((str(source), 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _error_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error")


class Prober:
    """Runs ``paths``: sends its probes through ``device``, feeds it the replies, runs its
    timers, and calls ``on_change()`` when the set of peers on the fast path changed or switches
    wait in ``paths.events()`` (which the caller drains)."""

    def __init__(
        self,
        paths: Paths,
        device: str,
        on_change: Callable[[], None],
        identifier: int = PROCESS_IDENTIFIER,
    ) -> None:
        self.paths = paths
        self.device = device
        self._on_change = on_change
        self._identifier = identifier
        self._source: IPv4Address | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_at = 0.0
        self._socket_note = "no source"
        self._counts: Counter[str] = Counter({"sent": 0, "answered": 0, "unsent": 0})
        self._fast = paths.on_fast()
        self._wakeup = asyncio.Event()

    # -- inputs ------------------------------------------------------------------------------

    def set_source(self, vtep: IPv4Address | None) -> None:
        """Our VTEP address (None: none yet); the socket is (re)opened from it at once."""
        if vtep == self._source:
            return
        self._source = vtep
        self._close()
        self._retry_at = 0.0
        self.poke()

    def set_candidates(self, candidates: Iterable[Candidate]) -> None:
        """The peers to choose for (``Paths.set_candidates`` at this moment), probed at once."""
        self.paths.set_candidates(candidates, time.monotonic())
        self.poke()

    def poke(self) -> None:
        """The candidates changed: probe and re-arm the timer now."""
        self._wakeup.set()

    def counters(self) -> dict[str, int]:
        """Probes ``sent``, ``answered`` and ``unsent``, and the datagrams ignored on the probe
        socket as ``ignored_<reason>``."""
        return dict(self._counts)

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe until cancelled; the socket is closed on the way out."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()  # of this loop; the first step runs at once anyway
        try:
            while True:
                self._step(time.monotonic())
                await self._pause()
        finally:
            self._close()
            self._loop = None

    def _step(self, now: float) -> None:
        self._ensure_socket(now)
        self.paths.handle_timer(now)
        for vtep, sequence in self.paths.probes_due(now):
            self._send(vtep, sequence)
        self._notify()

    async def _pause(self) -> None:
        deadlines = [self.paths.get_timer()]
        if self._source is not None and self._sock is None:
            deadlines.append(self._retry_at)
        at = min((d for d in deadlines if d is not None), default=None)
        timeout = None if at is None else max(0.0, at - time.monotonic())
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the wait ends, and the task would never stop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        self._wakeup.clear()

    def _notify(self) -> None:
        fast = self.paths.on_fast()
        if fast != self._fast or self.paths.has_events():
            self._fast = fast
            self._on_change()

    # -- the socket --------------------------------------------------------------------------

    def _ensure_socket(self, now: float) -> None:
        if self._sock is not None or self._source is None or now < self._retry_at:
            return
        try:
            self._sock = open_probe_socket(self.device, self._source)
        except OSError as exc:
            self._retry_at = now + PROBE_INTERVAL
            self._note(f"{_error_name(exc)}, retrying every {PROBE_INTERVAL}s", logging.WARNING)
            return
        assert self._loop is not None
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._note(f"open from {self._source}", logging.INFO)

    def _note(self, note: str, level: int) -> None:
        if note != self._socket_note:
            self._socket_note = note
            log.log(level, "open probe socket: dev %s: %s", self.device, note)

    def _close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _send(self, vtep: IPv4Address, sequence: int) -> None:
        if self._sock is None:
            self._counts["unsent"] += 1
            return
        try:
            self._sock.sendto(echo_request(self._identifier, sequence), (str(vtep), 0))
        except OSError as exc:
            self._counts["unsent"] += 1
            log.debug("send probe: %s seq %d: %s", vtep, sequence, _error_name(exc))
            if exc.errno in GONE:
                self._close()
            return
        self._counts["sent"] += 1

    def _readable(self) -> None:
        now = time.monotonic()
        for _ in range(RECEIVE_BATCH):
            if self._sock is None:
                return
            try:
                packet = self._sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._counts["ignored_" + _error_name(exc)] += 1
                break
            self._take(packet, now)
        if self.paths.on_fast() != self._fast or self.paths.has_events():
            self._wakeup.set()

    def _take(self, packet: bytes, now: float) -> None:
        try:
            source, sequence = parse_reply(packet, self._identifier)
        except ProbeRejected as exc:
            self._counts["ignored_" + exc.reason] += 1
            return
        if self.paths.answered(source, sequence, now):
            self._counts["answered"] += 1
        else:
            self._counts["ignored_unexpected"] += 1
