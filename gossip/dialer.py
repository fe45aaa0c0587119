"""The addresses the mesh dials, each with its redial backoff (sans-IO).

Rules this module keeps:
- An address is dialled by one attempt at a time, and not before its retry time.
- A failed dial backs off exponentially with jitter: ``initial * factor ** failures`` seconds,
  capped at ``cap``, times a uniform draw from 0.8 to 1.2 (Weave: 2 s x1.5 up to 6 minutes).
  A dial that ends in a connection is no longer dialling; its backoff starts over only when
  the caller says the connection proved itself (``succeeded``), so a peer that accepts and then
  drops every connection is redialled ever more slowly, not in a loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

Address = tuple[str, int]


@dataclass
class _Target:
    attempts: int = 0
    next_try_at: float = 0.0
    dialing: bool = False


class Dialer:
    """Which addresses are being dialled, and when each one that failed may be tried again."""

    def __init__(self, initial: float, factor: float, cap: float, rng: random.Random) -> None:
        self._initial = initial
        self._factor = factor
        self._cap = cap
        self._rng = rng
        self._targets: dict[Address, _Target] = {}

    def dialing(self) -> int:
        """How many dials are under way."""
        return sum(1 for t in self._targets.values() if t.dialing)

    def ready(self, addresses: set[Address], room: int, now: float) -> list[Address]:
        """Up to ``room`` of ``addresses`` that may be dialled at ``now``, in random order."""
        if room <= 0 or not addresses:
            return []
        ready = []
        for addr in sorted(addresses):
            target = self._targets.setdefault(addr, _Target())
            if not target.dialing and target.next_try_at <= now:
                ready.append(addr)
        self._rng.shuffle(ready)
        return ready[:room]

    def start(self, addresses: Iterable[Address]) -> None:
        """Mark ``addresses`` (returned by ``ready``) as being dialled."""
        for addr in addresses:
            self._targets[addr].dialing = True

    def failed(self, addr: Address, now: float) -> float:
        """Back off from ``addr``; returns when it may be tried again."""
        target = self._targets.setdefault(addr, _Target())
        target.dialing = False
        delay = min(self._cap, self._initial * self._factor**target.attempts)
        target.attempts += 1
        target.next_try_at = now + delay * self._rng.uniform(0.8, 1.2)
        return target.next_try_at

    def connected(self, addr: Address) -> None:
        """A dial of ``addr`` ended in a connection: no longer dialling, backoff kept (it
        starts over with ``succeeded`` once the connection proved stable)."""
        if addr in self._targets:
            self._targets[addr].dialing = False

    def succeeded(self, addr: Address) -> None:
        """A connection to ``addr`` is up: its backoff starts over."""
        if addr in self._targets:
            self._targets[addr] = _Target()

    def retries_after(self, when: float) -> list[float]:
        """When addresses that failed may be tried again, for those later than ``when``."""
        return [
            t.next_try_at for t in self._targets.values() if not t.dialing and t.next_try_at > when
        ]
