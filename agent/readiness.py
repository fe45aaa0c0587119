"""Whether the node can carry pod traffic, and the log lines when that changes.

The readiness probe (/status) passes exactly when ``missing()`` is empty: the node's state is in
the kernel, IPAM has addresses for pods (owned space, or the node's podCIDR), and the CNI socket
accepts requests (or none is configured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.peer_log import log_table
from agent.report import Report

log = logging.getLogger("weave-py")


def missing(*, applied: bool, space: bool, cni_serving: bool) -> tuple[str, ...]:
    """What keeps the node from carrying pod traffic, in words; empty when nothing does."""
    out = []
    if not applied:
        out.append("node state not in the kernel yet")
    if not space:
        out.append("no address space for pods yet")
    if not cni_serving:
        out.append("cni socket not serving yet")
    return tuple(out)


class ReadinessLog:
    """One line when the node becomes able to carry pod traffic (with the peer count and the
    peer table), and one when it stops or while it waits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._missing: tuple[str, ...] | None = None  # last logged

    def note(self, now_missing: tuple[str, ...], report: Callable[[], Report], space: str) -> None:
        """Log if what is missing changed since the last note; ``space``: the node's."""
        if now_missing == self._missing:
            return
        was_ready, self._missing = self._missing == (), now_missing
        if now_missing:
            say = log.warning if was_ready else log.info
            say("agent %s: %s", "not ready" if was_ready else "waiting", "; ".join(now_missing))
            return
        r = report()
        log.info("agent ready: %s, %d peer(s), space %s", self.name, len(r.peers), space)
        log_table(r)
