"""Which control connections have gone silent (sans-IO).

A peer whose process is frozen (stopped, or wedged) keeps its TCP connections open: the kernel
still acknowledges what we send, so TCP never reports the connection dead. Left alone it stays
in the control graph, and the data plane's own timeouts then make its routes come and go. So
connections whose peer says it keeps them alive (the HELLO feature "keepalive") must show life:

Rules this module keeps:
- Every ``interval`` each such connection is due a KEEPALIVE (the driver's mesh sends it; any
  message would do, this one costs a few bytes). A connection from which nothing at all has been
  heard for ``timeout`` is silent: the mesh closes it as if it had broken.
- Connections of peers without the feature (older versions) are never judged silent.
"""

from __future__ import annotations

from collections.abc import Hashable

FEATURE = "keepalive"  # the HELLO feature of a peer that sends KEEPALIVE and expects it


class Keepalive:
    """When each live connection was last heard from, and which are due a KEEPALIVE."""

    def __init__(self, interval: float, timeout: float) -> None:
        if not 0 < interval < timeout:
            raise ValueError(f"need 0 < interval ({interval}) < timeout ({timeout})")
        self.interval = interval
        self.timeout = timeout
        self.send_at = float("inf")  # when KEEPALIVEs are next due
        self._heard_at: dict[Hashable, float] = {}  # watched connections only

    def watch(self, conn: Hashable, now: float) -> None:
        """``conn`` is up and its peer keeps connections alive."""
        self._heard_at[conn] = now
        self.send_at = min(self.send_at, now + self.interval)

    def heard(self, conn: Hashable, now: float) -> None:
        """Something arrived on ``conn``."""
        if conn in self._heard_at:
            self._heard_at[conn] = now

    def forget(self, conn: Hashable) -> None:
        """``conn`` is closed or no longer ours."""
        self._heard_at.pop(conn, None)
        if not self._heard_at:
            self.send_at = float("inf")

    def due(self, now: float) -> tuple[list[Hashable], list[Hashable]]:
        """At ``now``: (connections to send a KEEPALIVE, silent connections to close). The
        silent ones are forgotten here."""
        if now < self.send_at:
            return [], []
        silent = [c for c, at in self._heard_at.items() if now - at >= self.timeout]
        for conn in silent:
            del self._heard_at[conn]
        self.send_at = now + self.interval if self._heard_at else float("inf")
        return list(self._heard_at), silent

    def silent_for(self, conn: Hashable, now: float) -> float:
        """Seconds since ``conn`` was last heard from (0 when not watched)."""
        at = self._heard_at.get(conn)
        return 0.0 if at is None else now - at
