"""The replay window of one sealing key (overlay/seal.py): which frame counters were accepted.

Like WireGuard's and IPsec's: the highest counter accepted and a bitmap of the WINDOW below
it. A counter above the highest moves the window; one inside it is accepted once; one below it
is refused, since it can no longer be told from a replay. ``seal.Keyring.open`` asks ``fresh``
before it authenticates a frame and calls ``accept`` only after, so a forged frame never moves
the window.
"""

from __future__ import annotations

WINDOW = 4096  # counters below the highest accepted that the window remembers
MASK = (1 << WINDOW) - 1


class ReplayWindow:
    """The counters accepted under one key: the highest, and which of the WINDOW below it."""

    __slots__ = ("bits", "top")

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0  # bit i: counter ``top - i`` was accepted

    def fresh(self, counter: int) -> bool:
        """Whether ``counter`` was never accepted and is not too old to tell."""
        behind = self.top - counter
        return behind < 0 or (behind < WINDOW and not (self.bits >> behind) & 1)

    def accept(self, counter: int) -> None:
        """Remember ``counter`` (authenticated and fresh)."""
        ahead = counter - self.top
        if ahead > 0:
            self.bits = 1 if ahead >= WINDOW else ((self.bits << ahead) | 1) & MASK
            self.top = counter
        else:
            self.bits |= 1 << -ahead
