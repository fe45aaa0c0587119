"""Connections before their handshake completes: how many, from where, and how many bytes
they made us hold (sans-IO; the driver reports, this decides).

A connection costs memory before we know who is on the other end: its buffers, and whatever
partial message the handshake decoder keeps. A stranger can open many and feed each a
message that never ends. So:

Rules this module keeps:
- At most ``max_pending`` accepted connections are in their handshake at once, at most
  ``max_per_host`` of them from one host; one beyond either is refused before a byte is read.
- A handshake may read at most ``max_bytes`` before it completes (a HELLO is well under a
  kilobyte; the bound leaves room for what a legitimate peer sends right after it), so the
  bytes held by all pending connections stay below ``max_pending * max_bytes``.
- Dials of ours are not counted here: the mesh bounds them by its connection limit.
"""

from __future__ import annotations

MAX_PENDING = 32  # accepted connections in their handshake at once
MAX_PER_HOST = 4  # of those, from one host
MAX_HANDSHAKE_BYTES = 128 * 1024  # bytes a handshake may read before it completes


class Admission:
    """The accepted connections still in their handshake, by host, and the bytes they read."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING,
        max_per_host: int = MAX_PER_HOST,
        max_bytes: int = MAX_HANDSHAKE_BYTES,
    ) -> None:
        self.max_pending = max_pending
        self.max_per_host = max_per_host
        self.max_bytes = max_bytes
        self.pending = 0  # connections in their handshake
        self.buffered = 0  # bytes they have read so far
        self._by_host: dict[str, int] = {}

    def enter(self, host: str) -> str | None:
        """A connection from ``host`` was accepted: None when it may start its handshake,
        else why it must be closed now (and it is not counted)."""
        if self.pending >= self.max_pending:
            return f"{self.pending} connections already in their handshake"
        if self._by_host.get(host, 0) >= self.max_per_host:
            return f"{self.max_per_host} connections from {host} already in their handshake"
        self.pending += 1
        self._by_host[host] = self._by_host.get(host, 0) + 1
        return None

    def read(self, size: int) -> None:
        """An accepted connection in its handshake read ``size`` more bytes."""
        self.buffered += size

    def check(self, total: int) -> str | None:
        """None while a handshake (accepted or dialled) that read ``total`` bytes is within
        the bound, else why it must be closed."""
        if total > self.max_bytes:
            return f"{total} bytes without completing the handshake"
        return None

    def leave(self, host: str, total: int) -> None:
        """The handshake of a connection from ``host`` ended (``total`` bytes read), however."""
        self.buffered -= total
        self.pending -= 1
        left = self._by_host.get(host, 0) - 1
        if left > 0:
            self._by_host[host] = left
        else:
            self._by_host.pop(host, None)
